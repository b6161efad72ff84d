"""Run one notebook of the batch on a kernel: reuse, execute, render, mark failures.

Each worker keeps one kernel and reuses it for its notebooks: before each notebook the kernel is
reset to an empty namespace (IPython's reset, In [1] again), and a kernel that saw a failure is
replaced. That saves every notebook the ~7 s of importing TensorFlow and PyTorch; results.csv is
byte-identical to a run with --fresh-kernels (a new kernel per notebook).
"""
from __future__ import annotations

import multiprocessing
import multiprocessing.util
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from papermill.clientwrap import PapermillNotebookClient
from papermill.engines import NBClientEngine, papermill_engines
from papermill.log import logger

from ..files import atomic_write
from ..settings import KERNEL, NOTEBOOKS_DIR, PROGRESS_ENV, START_TIMEOUT
from .render import render_html

MISSING_KERNEL = "selective-update-test-hook-missing-kernel"
WORKER_DIES = "worker_dies"  # Task.fault test hook (--cluster): the Dask worker dies mid-run
THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# Set in every worker (pool or Dask) and so inherited by the kernels it starts.
WORKER_ENV = {**THREAD_ENV, "TF_CPP_MIN_LOG_LEVEL": "3", PROGRESS_ENV: "0",
              "PYDEVD_DISABLE_FILE_VALIDATION": "1"}


@dataclass(frozen=True)
class Task:
    """One notebook run of the batch."""

    name: str  # e.g. toy-split_head; the output files are named after it
    notebook: str  # notebook file under notebooks/
    output: str  # executed notebook, relative to the staging folder
    parameters: dict
    dataset: str = ""
    strategy: str = ""
    fault: str | None = None  # test hook: "kernel_start" fakes a kernel that fails to start;
    # WORKER_DIES kills the Dask worker running it (cluster.run_on_worker)
    folder_param: str | None = None  # the parameter told the executed notebook's folder


def _running_cell(nb):
    """Index of the last code cell papermill started (the one running when a run broke)."""
    started = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"
               and c.get("metadata", {}).get("papermill", {}).get("start_time")]
    return started[-1] if started else None


def _cells_started(nb) -> bool:
    return _running_cell(nb) is not None


def _cell_name(nb, index) -> str:
    cell = nb.cells[index]
    first = next((line for line in cell.source.splitlines() if line.strip()), "")
    return f"In [{cell.get('execution_count')}] (cell {index}: {first.strip()[:60]!r})"


def mark_failure(path, message, ename):
    """Add papermill-style error banners to an executed notebook the engine left without one."""
    import nbformat
    from papermill.execute import ERROR_ANCHOR_MSG, ERROR_MARKER_TAG, ERROR_MESSAGE_TEMPLATE

    nb = nbformat.read(path, as_version=4) if Path(path).is_file() else None
    if nb is None:
        return
    index = _running_cell(nb)
    if index is not None:
        nb.cells[index].outputs.append(nbformat.v4.new_output(
            "error", ename=ename, evalue=message, traceback=[f"{ename}: {message}"]))
        anchor = nbformat.v4.new_markdown_cell(ERROR_ANCHOR_MSG)
        anchor.metadata["tags"] = [ERROR_MARKER_TAG]
        nb.cells.insert(index, anchor)
        banner = ERROR_MESSAGE_TEMPLATE % nb.cells[index + 1].get("execution_count")
    else:
        banner = ('<span style="color:red; font-size:2em;">'
                  "The run failed before any cell ran.</span>")
    cell = nbformat.v4.new_markdown_cell(f"{banner}\n\n**{ename}**: {message}")
    cell.metadata["tags"] = [ERROR_MARKER_TAG]
    nb.cells.insert(0, cell)
    atomic_write(path, nbformat.writes(nb))


# --- one kernel per worker, reused across its notebooks (unless --fresh-kernels) ------------------

_KERNEL = {"km": None}  # this worker's kernel manager, when kernels are reused
RESET = ("get_ipython().reset(new_session=True)\n"  # empty namespace, In [1] again
         "import matplotlib.pyplot as _plt\n_plt.close('all')\ndel _plt\n")


class ReuseEngine(NBClientEngine):
    """A papermill engine that runs on a given kernel manager and leaves its kernel running."""

    @classmethod
    def execute_managed_notebook(cls, nb_man, kernel_name, log_output=False, stdout_file=None,
                                 stderr_file=None, start_timeout=60, execution_timeout=None,
                                 km=None, **kwargs):
        """Execute the notebook on km's kernel; stop only this client's channels afterwards."""
        client = PapermillNotebookClient(
            nb_man, km=km, timeout=execution_timeout, startup_timeout=start_timeout,
            kernel_name=kernel_name, log=logger, log_output=log_output,
            stdout_file=stdout_file, stderr_file=stderr_file)
        try:
            return client.execute()
        finally:
            if client.kc is not None:
                client.kc.stop_channels()


ENGINE = "selective_update_reuse"
papermill_engines.register(ENGINE, ReuseEngine)  # once, at import, as papermill's engines.py


def shutdown_kernel():
    """Shut this process's kernel down (if any)."""
    from jupyter_core.utils import run_sync

    km, _KERNEL["km"] = _KERNEL["km"], None
    if km is not None:
        try:
            run_sync(km.shutdown_kernel)(now=True)
        except Exception:  # it is going away either way
            pass


def _control_client(km):
    """A blocking client on the kernel, for our own start-up and reset requests."""
    from jupyter_client import BlockingKernelClient

    # As km.client() builds its clients: the kernel's session and (CurveZMQ) keys.
    kw = dict(km.get_connection_info(session=True), connection_file=km.connection_file,
              parent=km)
    for key in ("curve_publickey", "curve_secretkey"):
        if isinstance(kw.get(key), str):
            kw[key] = kw[key].encode("ascii")
    kc = BlockingKernelClient(**kw)
    kc.start_channels()
    return kc


def _reused_kernel(kernel_name):
    """Return this process's running kernel (reset to a fresh namespace), starting one if needed.

    An AsyncKernelManager, as papermill's own: nbclient then polls the kernel asynchronously,
    so that its per-cell timeout fires while a cell hangs.
    """
    from jupyter_client import AsyncKernelManager
    from jupyter_core.utils import run_sync

    km = _KERNEL["km"]
    if km is not None and run_sync(km.is_alive)():
        kc = _control_client(km)
        try:
            kc.wait_for_ready(timeout=START_TIMEOUT)
            reply = kc.execute_interactive(RESET, silent=True, store_history=False, timeout=60)
            if reply["content"]["status"] == "ok":
                return km
        except Exception:  # a kernel that cannot be reset is replaced
            pass
        finally:
            kc.stop_channels()
    shutdown_kernel()
    km = AsyncKernelManager(kernel_name=kernel_name)
    run_sync(km.start_kernel)()  # NoSuchKernel, port races...: the caller retries once
    _KERNEL["km"] = km
    kc = _control_client(km)
    try:
        kc.wait_for_ready(timeout=START_TIMEOUT)
    except BaseException:
        shutdown_kernel()
        raise
    finally:
        kc.stop_channels()
    if multiprocessing.parent_process() is not None:
        multiprocessing.util.Finalize(None, shutdown_kernel, exitpriority=10)
    return km


def _worker_exit(signum, frame):
    """End a worker at once on SIGTERM/SIGINT, shutting its kernel down first."""
    shutdown_kernel()
    os._exit(128 + signum)


def set_worker_env():
    """One thread per kernel, quiet frameworks: set in this process, inherited by its kernels."""
    for key, value in WORKER_ENV.items():
        os.environ.setdefault(key, value)


def worker_init():
    """Set up a pool worker process: an interrupt ends it with its kernel; one thread per kernel."""
    signal.signal(signal.SIGTERM, _worker_exit)
    signal.signal(signal.SIGINT, _worker_exit)
    set_worker_env()


def execute(task, staging, cell_timeout, reuse=False, published=None) -> dict:
    """Run one notebook (retry once if its kernel fails to start), render its HTML; never raise.

    published: the folder the staging folder's files will be moved to; the page then names the
    paths a reader will find (its parameters and outputs say published, not staging).
    In a worker process, an interrupt (SIGINT/SIGTERM) shuts the kernel down and ends the worker.
    """
    try:
        return _execute_logged(task, Path(staging), cell_timeout, reuse, published)
    except KeyboardInterrupt:
        shutdown_kernel()
        if multiprocessing.parent_process() is None:
            raise
        os._exit(130)


def _execute_logged(task, staging, cell_timeout, reuse, published):
    output = staging / task.output
    output.parent.mkdir(parents=True, exist_ok=True)
    params = dict(task.parameters)
    if task.folder_param:  # its files go beside its notebook
        params[task.folder_param] = str(output.parent)
    start = time.perf_counter()
    # The kernel inherits this worker's stdout/stderr: keep its start-up chatter and any crash
    # report in a log beside the notebook instead of on the terminal.
    log = os.open(output.with_suffix(".log"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    saved = os.dup(1), os.dup(2)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(log, 1)
    os.dup2(log, 2)
    try:
        return _execute(task, staging, output, params, cell_timeout, start, reuse, published)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, log):
            os.close(fd)


def _execute(task, staging, output, params, cell_timeout, start, reuse, published):
    """Run one task's notebook with papermill on this worker's kernel into `output`, retrying a
    kernel that failed to start once; render its HTML page and return the run's status row.

    A failed cell, a cell past cell_timeout or a dead kernel fails the run with one line naming
    the cell; the notebook is marked at that cell (mark_failure), and its kernel is not reused.
    """
    import nbformat
    import papermill as pm
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    status, error, attempts = "ok", "", 0
    for attempts in (1, 2):
        kernel = MISSING_KERNEL if task.fault == "kernel_start" and attempts == 1 else KERNEL
        output.unlink(missing_ok=True)
        try:
            # The kernel is started here, not by papermill, so that this process can always
            # shut it down (an interrupt, a failure, or the end of a --fresh-kernels run).
            if not reuse or kernel != KERNEL:
                shutdown_kernel()  # (the test hook starts a kernel that cannot start)
            km = _reused_kernel(kernel)
            pm.execute_notebook(str(NOTEBOOKS_DIR / task.notebook), str(output), parameters=params,
                                kernel_name=kernel, progress_bar=False,
                                start_timeout=START_TIMEOUT, execution_timeout=cell_timeout,
                                engine_name=ENGINE, km=km)
            status, error = "ok", ""
            break
        except pm.PapermillExecutionError as e:
            status = "failed"
            first = next((x.strip() for x in e.source.splitlines() if x.strip()), "")
            error = (f"{e.ename}: {e.evalue} (cell In [{e.exec_count}]: {first[:60]!r})"
                     .replace("\n", " "))
            break
        except (CellTimeoutError, DeadKernelError) as e:
            what = (f"exceeded the per-cell timeout of {cell_timeout:g} s"
                    if isinstance(e, CellTimeoutError) else "lost its kernel (it died)")
            nb = nbformat.read(output, as_version=4) if output.is_file() else None
            index = _running_cell(nb) if nb is not None else None
            cell = _cell_name(nb, index) if index is not None else "(unknown)"
            status, error = "failed", f"cell {cell} {what}"
            mark_failure(output, error, type(e).__name__)
            break
        except KeyboardInterrupt:
            raise
        except Exception as e:  # a kernel that failed to start, or worse
            started = output.is_file() and _cells_started(nbformat.read(output, as_version=4))
            status = "failed"
            error = f"{type(e).__name__}: {e}".splitlines()[0][:300]
            if not started:
                error = f"kernel failed to start: {error}"
                if attempts == 1:
                    continue  # parallel kernel starts can race on ports: retry once
            mark_failure(output, error, type(e).__name__)
            break
    if status != "ok" or not reuse:
        shutdown_kernel()  # a kernel that saw a failure is not reused
    html = output.with_suffix(".html")
    if output.is_file():
        if published is not None:
            _publish_paths(output, staging, published)
        try:
            render_html(output, html, title=task.name)
        except Exception as e:
            status, error = "failed", error or f"rendering HTML failed: {type(e).__name__}: {e}"
    return dict(name=task.name, notebook=task.notebook, dataset=task.dataset,
                strategy=task.strategy, status=status, error=error,
                html=str(html.relative_to(staging)), attempts=attempts,
                seconds=round(time.perf_counter() - start, 1))


def _publish_paths(notebook, staging, published):
    """Replace the staging folder's path by the published one throughout an executed notebook.

    The path as given first (a Dask worker's staging folder is absolute and resolved, and the
    client's published folder is written as the client gave it), then any resolved form left.
    """
    text = Path(notebook).read_text(encoding="utf-8")
    for old, new in ((str(staging), str(published)),
                     (str(Path(staging).resolve()), str(Path(published).resolve()))):
        text = text.replace(old, new)
    atomic_write(notebook, text)
