"""The study's batch on a Dask distributed cluster: `python -m selective_update study --cluster`.

    --cluster local            a LocalCluster here: --jobs worker processes, one thread each
    --cluster tcp://host:8786  a running scheduler (`dask scheduler`), its workers anywhere

Each notebook run is one Dask task (run_on_worker). The worker runs it with the pool's
notebook_runner.execute in a temporary folder of its own, on the kernel it keeps between tasks
(KernelPerWorker: reset before each notebook, replaced after a failure), and returns what it wrote
(executed notebook, HTML page, CSV files, log) as bytes. The client writes those into its staging
folder, so the publish step is the pool's. A worker needs this package importable from the same
checkout (its notebooks/ and data/) and pins as the client: each task compares a fingerprint of
both and fails the run, naming the difference, where they differ.

At most one run per worker is in flight, so a worker that dies takes no queued run with it. A run
whose worker died (Dask's KilledWorker) is tried WORKER_RETRIES more times, then failed with a
page saying so; --cluster local's scheduler leaves that retry to the study (allowed-failures 0).
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import signal
import tempfile
import threading
import time
import uuid
from functools import lru_cache
from pathlib import Path

import dask
from distributed import Client, KilledWorker, LocalCluster, wait
from distributed.diagnostics.plugin import WorkerPlugin

from ..files import atomic_write
from ..settings import CLUSTER_CONNECT_TIMEOUT, DATA_DIR, NOTEBOOKS_DIR, WORKER_RETRIES
from . import notebook_runner
from .render import render_html

DIE_AFTER = 2.0  # seconds into a run with the test hook notebook_runner.WORKER_DIES
POLL = 5.0  # seconds between looks for workers that joined while every worker is busy
# --cluster local: the study retries a run whose worker died itself (it counts the tries), a worker
# is sent one task at a time (one notebook each, as in the pool), and the cluster's own upkeep
# stays off the CPUs the notebooks use: no statistical profiler sampling the worker's threads
# every 10 ms, the event-loop check each second (not 20 ms), system metrics every 5 s (not 0.5 s):
# an idle 2-worker LocalCluster then used 0.23 CPU-seconds in 20 s instead of 1.18.
LOCAL_CONFIG = {"distributed.scheduler.allowed-failures": 0,
                "distributed.scheduler.worker-saturation": 1.0,
                "distributed.worker.profile.enabled": False,
                "distributed.admin.tick.interval": "1s",
                "distributed.admin.system-monitor.interval": "5s"}


class ClusterError(ValueError):
    """The cluster cannot run the study (its scheduler is unreachable): one line, before any run."""


class KernelPerWorker(WorkerPlugin):
    """Each Dask worker keeps one kernel for its notebooks, as the pool's workers do.

    leave_interrupt_to_client: the workers of --cluster local share the study's terminal; Ctrl-C
    is the client's to handle (it shuts them down), not a traceback from each worker.
    """

    name = "selective-update-kernel"

    def __init__(self, leave_interrupt_to_client=False):
        self.leave_interrupt_to_client = leave_interrupt_to_client

    def setup(self, worker):
        notebook_runner.set_worker_env()
        if self.leave_interrupt_to_client and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)

    def teardown(self, worker):
        notebook_runner.shutdown_kernel()


# --- on a worker -------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def fingerprint() -> str:
    """What a worker must share with the client: package source, notebooks, data, pins."""
    import selective_update

    package = Path(selective_update.__file__).resolve().parent
    files = [p for p in package.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    files += sorted(NOTEBOOKS_DIR.glob("*.ipynb")) + sorted(DATA_DIR.glob("*.csv"))
    digest = hashlib.sha256()
    for path in sorted(files):
        data = path.read_bytes()
        digest.update(f"{path.parent.name}/{path.name}\0{len(data)}\0".encode() + data)
    for requirement in importlib.metadata.requires("selective-update") or ():
        if "extra ==" not in requirement:  # the run-time pins, not the test tools
            name = requirement.split("==")[0].strip()
            digest.update(f"{name}=={importlib.metadata.version(name)}\0".encode())
    return digest.hexdigest()[:12]


def failed_status(task, error, attempts, seconds=0.0) -> dict:
    """A failed run's status row, as notebook_runner.execute returns one."""
    return dict(name=task.name, notebook=task.notebook, dataset=task.dataset,
                strategy=task.strategy, status="failed", error=error,
                html=Path(task.output).with_suffix(".html").as_posix(), attempts=attempts,
                seconds=seconds)


_ONE_NOTEBOOK = threading.Lock()  # a worker with several threads still runs one kernel


def run_on_worker(task, inputs, cell_timeout, reuse, published, expected_fingerprint):
    """Run one notebook in a temporary folder of this worker; return (status, {path: bytes}).

    inputs (path -> bytes) are laid into the folder first (the summary reads the study's CSV
    files); what the run wrote or changed comes back, nothing else.
    """
    with _ONE_NOTEBOOK:
        mine = fingerprint()
        if mine != expected_fingerprint:
            return failed_status(task, f"this worker's checkout differs from the client's "
                                       f"(fingerprint {mine}, client {expected_fingerprint}): "
                                       "install the client's commit and pins on it", 1), {}
        dies = task.fault == notebook_runner.WORKER_DIES  # test hook: this worker dies mid-run
        if dies:
            threading.Timer(DIE_AFTER, os.kill, (os.getpid(), signal.SIGKILL)).start()
        with tempfile.TemporaryDirectory(prefix="su-dask-run-") as tmp:
            staging = Path(tmp).resolve()  # resolved: the published path replaces it whole
            for name, data in inputs.items():
                (staging / name).parent.mkdir(parents=True, exist_ok=True)
                (staging / name).write_bytes(data)
            status = notebook_runner.execute(task, str(staging), cell_timeout, reuse, published)
            if dies:  # a run quicker than DIE_AFTER: the worker still dies before it returns
                os.kill(os.getpid(), signal.SIGKILL)
            files = {p.relative_to(staging).as_posix(): p.read_bytes()
                     for p in sorted(staging.rglob("*")) if p.is_file()}
    return status, {name: data for name, data in files.items() if inputs.get(name) != data}


# --- on the client -----------------------------------------------------------------------------

def connect(address, jobs):
    """Return (client, LocalCluster or None); ClusterError (one line) if nothing answers."""
    if address == "local":
        with dask.config.set(LOCAL_CONFIG):
            cluster = LocalCluster(n_workers=jobs, threads_per_worker=1, processes=True,
                                   dashboard_address=":0", silence_logs=logging.ERROR,
                                   memory_limit=0)  # no limit, as the pool's workers
        try:
            return Client(cluster), cluster
        except BaseException:
            cluster.close()
            raise
    try:
        return Client(address, timeout=CLUSTER_CONNECT_TIMEOUT), None
    except (OSError, TimeoutError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ClusterError(f"--cluster: no Dask scheduler answered at {address} within "
                           f"{CLUSTER_CONNECT_TIMEOUT} s ({reason}); allowed: the address of a "
                           "running scheduler (`dask scheduler` prints it) or local") from None


class ClusterRunner:
    """Runs the study's tasks on a Dask cluster and writes what they return into staging."""

    def __init__(self, address, jobs):
        self.client, self.cluster = connect(address, jobs)
        self.running = {}  # future -> (task, workers that died running it before, first start)
        try:
            self.client.register_plugin(KernelPerWorker(self.cluster is not None))
            self.fingerprint = fingerprint()
        except BaseException:
            self.close()
            raise
        # The scheduler itself tries a task allowed-failures + 1 times before KilledWorker.
        try:
            allowed = self.client.run_on_scheduler(
                lambda dask_scheduler: dask_scheduler.allowed_failures)
        except Exception:  # noqa: BLE001 - a scheduler that runs no client code: Dask's default
            allowed = dask.config.get("distributed.scheduler.allowed-failures")
        self.tries = 1 + int(allowed)
        self.submissions = max(1, -(-(1 + WORKER_RETRIES) // self.tries))

    def describe(self) -> str:
        """Where the runs go: the scheduler, its workers and the dashboard when there is one."""
        workers = len(self.client.nthreads())
        text = (f"Dask scheduler {self.client.scheduler.address}, {workers} worker"
                f"{'s' * (workers != 1)}, one notebook each at a time")
        if "dashboard" in self.client.scheduler_info(n_workers=0).get("services", {}):
            text += f"; dashboard {self.client.dashboard_link}"
        return text

    def run(self, tasks, staging, cell_timeout, reuse, published, inputs=None):
        """Yield each run's status (in the order they finish) once its files are in staging."""
        pending, staging = list(tasks), Path(staging)
        args = (inputs or {}, cell_timeout, reuse, str(published), self.fingerprint)
        while pending or self.running:
            capacity = max(1, len(self.client.nthreads()))  # workers may come and go
            while pending and len(self.running) < capacity:
                self._submit(pending.pop(0), (), time.perf_counter(), args)
            try:
                done, _ = wait(list(self.running), timeout=POLL, return_when="FIRST_COMPLETED")
            except TimeoutError:
                continue
            for future in done:
                status = self._finish(future, *self.running.pop(future), staging, args)
                if status is not None:
                    yield status

    def _submit(self, task, died, start, args):
        key = f"notebook-{task.name}-{len(died) + 1}-{uuid.uuid4().hex[:8]}"
        future = self.client.submit(run_on_worker, task, *args, key=key, pure=False)
        self.running[future] = (task, died, start)

    def _finish(self, future, task, died, start, staging, args):
        """Write a finished run's files into staging; resubmit one whose worker died."""
        if future.status == "finished":
            status, files = future.result()
            for name, data in files.items():
                atomic_write(staging / name, data)
            if died:
                status["attempts"] += len(died) * self.tries
                status["note"] = f"its worker died ({', '.join(died)}); retried on another"
        else:
            try:
                error = future.exception()
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as e:  # noqa: BLE001 - cancelled (a lost scheduler): a failed run
                error = e
            if isinstance(error, KilledWorker):
                died += (error.last_worker.address,)
                if len(died) < self.submissions:
                    self._submit(task, died, start, args)
                    return None
                message = (f"its worker died while running it, {len(died) * self.tries} "
                           f"time(s) (Dask KilledWorker; on {', then '.join(died)})")
            else:
                message = f"{type(error).__name__}: {error}".splitlines()[0][:300]
            status = failed_status(task, message, max(1, len(died) * self.tries),
                                   round(time.perf_counter() - start, 1))
            if died:
                status["note"] = f"its worker died on {len(died) * self.tries} tries"
        future.release()
        if not (staging / status["html"]).is_file():
            self._failure_page(task, staging, status)
        return status

    @staticmethod
    def _failure_page(task, staging, status):
        """A page for a run that brought none back: its notebook, unrun, under the error."""
        notebook = staging / task.output
        atomic_write(notebook, (NOTEBOOKS_DIR / task.notebook).read_text(encoding="utf-8"))
        notebook_runner.mark_failure(notebook, status["error"], "RunFailed")
        render_html(notebook, staging / status["html"], title=task.name)

    def stop(self):
        """On an interrupt: cancel the runs in flight and let go of the cluster."""
        self.close()

    def close(self):
        """Cancel the runs in flight and let go of the cluster (a local one is shut down)."""
        try:
            if self.running:
                self.client.cancel(list(self.running))
            self.client.close()
        finally:
            if self.cluster is not None:
                self.cluster.close()
