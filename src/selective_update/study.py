"""The study: one strategy notebook's grid (run_grid), and the batch that runs every notebook.

    python -m selective_update study [--strategies ...] [--datasets ...] [--jobs N] [--quick]
                                     [--out reports] [--cell-timeout S]

The batch runs notebooks/strategy.ipynb once per dataset x strategy (the grid is looped inside),
plus notebooks/00_seed_answer.ipynb, in parallel worker processes through papermill's Python API;
renders each executed notebook to offline HTML in the worker; concatenates the runs' tidy rows
into results.csv; runs notebooks/summary.ipynb into index.html. Everything is built in a staging
folder inside --out (.staging-<pid>) and moved in at the end (runs/ swapped whole, each other
file with os.replace), so an interrupted or refused study leaves the previous reports complete.
Each worker keeps one kernel and reuses it for its notebooks: before each notebook the kernel is
reset to an empty namespace (IPython's reset, In [1] again), and a kernel that saw a failure is
replaced. That saves every notebook the ~7 s of importing TensorFlow and PyTorch; results.csv is
byte-identical to a run with --fresh-kernels (a new kernel per notebook). The kernels run
single-threaded (see deterministic()).
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing
import multiprocessing.util
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import core, datasets, report

ROOT = Path(__file__).resolve().parents[2]  # the repo (editable install), like datasets.DATA_DIR
NOTEBOOKS = ROOT / "notebooks"
KERNEL = "python3"

# The default grid: what `make study` and a bare `papermill notebooks/strategy.ipynb` run.
# notebooks/strategy.ipynb's parameters cell holds the same values (a test checks it).
DEFAULT_GRID = dict(optimizers=list(core.OPTIMIZERS), weight_decays=[0.0, 0.01],
                    warm_start_steps=[0, 2], lr=0.1, steps=5, seeds=[0, 1])
# --quick: a much smaller grid that still touches both frameworks and both datasets.
QUICK_GRID = dict(optimizers=["sgd", "adam"], weight_decays=[0.0, 0.01], warm_start_steps=[0],
                  lr=0.1, steps=3, seeds=[0])
# One-step runs at lr * factor (first optimizer set-up, first seed): drift vs lr in the summary.
LR_FACTORS = (1.0, 0.5, 0.25, 0.125)
FAULTS = ("raise", "hang", "die")  # test hook: make one run fail on purpose
RUN_FAULTS = FAULTS + ("kernel_start",)  # --inject-fault also fakes a kernel that fails to start
MISSING_KERNEL = "selective-update-test-hook-missing-kernel"
CELL_TIMEOUT = 600.0  # seconds per cell, default
START_TIMEOUT = 60  # seconds for a kernel to start

RESULT_COLUMNS = ["dataset", "strategy", "framework", "optimizer", "weight_decay",
                  "warm_start_steps", "lr", "seed", "step", "dtype", "n_sample", "hidden", "loss",
                  "train_loss", "drift_train", "drift_eval", "acc_keep", "acc_train", "promise",
                  "holds", "drift_ratio"]
RESULT_ORDER = ["dataset", "strategy", "framework", "optimizer", "weight_decay",
                "warm_start_steps", "seed", "step"]
SWEEP_COLUMNS = ["dataset", "strategy", "framework", "optimizer", "weight_decay",
                 "warm_start_steps", "seed", "lr", "drift_train", "drift_eval", "promise"]
SWEEP_ORDER = ["dataset", "strategy", "framework", "optimizer", "weight_decay",
               "warm_start_steps", "seed", "lr"]


# --- parameters of notebooks/strategy.ipynb -------------------------------------------------------

def _check_list(name, value, check):
    if isinstance(value, tuple):
        value = list(value)
    if not isinstance(value, list) or not value:
        core._fail(name, value, "a non-empty list")
    for item in value:
        try:
            check(item)
        except ValueError:
            raise ValueError(f"{name}: got {value!r}; allowed: a non-empty list of "
                             f"{_describe[check]}") from None
    if len(set(value)) != len(value):
        core._fail(name, value, "a list without repeated values")
    return value


def _optimizer(v):
    core._check_choice("optimizer", v, core.OPTIMIZERS)


def _decay(v):
    core._check_real("weight_decay", v, 0.0)


def _count(v):
    core._check_int("count", v, 0)


_describe = {_optimizer: ", ".join(core.OPTIMIZERS), _decay: "finite numbers >= 0",
             _count: "integers >= 0"}


def check_params(*, strategy, dataset, optimizers, weight_decays, warm_start_steps, lr, steps,
                 seeds, n_sample=None, hidden=None, keep=None, train=None, dtype="float64",
                 results_dir=None, inject_fault=None) -> dict:
    """Validate every parameter of notebooks/strategy.ipynb; raise ValueError naming the first bad.

    Returns the parameters normalized (keep/train resolved to the dataset's defaults).
    """
    core._check_choice("strategy", strategy, core.STRATEGIES)
    core._check_choice("dataset", dataset, datasets.DATASETS)
    optimizers = _check_list("optimizers", optimizers, _optimizer)
    weight_decays = [float(v) for v in _check_list("weight_decays", weight_decays, _decay)]
    warm_start_steps = [int(v) for v in _check_list("warm_start_steps", warm_start_steps, _count)]
    core._check_real("lr", lr, 0.0, strict=True)
    core._check_int("steps", steps, 1)
    seeds = [int(v) for v in _check_list("seeds", seeds, _count)]
    hidden = datasets.DEFAULT_HIDDEN[dataset] if hidden is None else hidden
    core._check_int("hidden", hidden, 1)
    core._check_choice("dtype", dtype, core.DTYPES)
    if results_dir is not None:
        if not isinstance(results_dir, (str, os.PathLike)) or not str(results_dir):
            core._fail("results_dir", results_dir, "None or a folder path")
        if Path(results_dir).exists() and not Path(results_dir).is_dir():
            core._fail("results_dir", str(results_dir), "None or a folder (this path is a file)")
    if inject_fault is not None and inject_fault not in FAULTS:
        core._fail("inject_fault", inject_fault, "None, " + ", ".join(FAULTS))
    setup = _prepare(dataset, n_sample, hidden, seeds[0], keep, train)  # n_sample, keep, train
    return dict(strategy=strategy, dataset=dataset, optimizers=optimizers,
                weight_decays=weight_decays, warm_start_steps=warm_start_steps, lr=float(lr),
                steps=int(steps), seeds=seeds, n_sample=len(setup.data.x), hidden=int(hidden),
                keep=list(setup.keep), train=list(setup.train), dtype=dtype,
                results_dir=None if results_dir is None else str(results_dir),
                inject_fault=inject_fault)


def seed_setup(*, lr=0.1, steps=1, seed=0, hidden=4):
    """Validate notebooks/00_seed_answer.ipynb's parameters; return its toy Setup."""
    core._check_real("lr", lr, 0.0, strict=True)
    core._check_int("steps", steps, 1)
    core._check_int("seed", seed, 0)
    core._check_int("hidden", hidden, 1)
    return datasets.prepare("toy", hidden=hidden, seed=seed)


_SETUPS: dict = {}


def _prepare(dataset, n_sample, hidden, seed, keep, train):
    # key on the resolved values, so check_params (defaults) and run_grid (filled in) share it;
    # repr keeps True apart from 1, so a bad value never hits a cached good one
    default_keep, default_train = datasets.default_outputs(dataset)
    key = repr((dataset, datasets.DEFAULT_N_SAMPLE[dataset] if n_sample is None else n_sample,
                datasets.DEFAULT_HIDDEN[dataset] if hidden is None else hidden, seed,
                tuple(default_keep if keep is None else keep),
                tuple(default_train if train is None else train)))
    if key not in _SETUPS:
        _SETUPS[key] = datasets.prepare(dataset, n_sample=n_sample, hidden=hidden, seed=seed,
                                        keep=keep, train=train)
    return _SETUPS[key]


# --- one notebook's grid --------------------------------------------------------------------------

@dataclass
class Grid:
    """What one strategy notebook measured."""

    cfg: dict
    rows: "object"  # pandas DataFrame, one row per framework x set-up x seed x step
    sweep: "object"  # pandas DataFrame, one-step drift at several lr
    results: dict = field(default_factory=dict)  # (fw, optimizer, wd, warm, seed) -> RunResult


def deterministic():
    """Quiet TF's C++ logs; make both frameworks deterministic and single-threaded.

    One thread each: these nets are tiny, the batch runs one kernel per core, and torch's and
    TF's thread pools in one process fight over the cores (measured: torch null-space steps
    10-30x slower with the default threads next to TF). It also keeps the numbers independent
    of the machine's core count.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_DETERMINISTIC_OPS", "1")
    # `import tensorflow` eagerly imports Keras 3 (~2 s of every kernel's start); with this set
    # and tf_keras not installed, TF skips that import. Nothing here uses Keras (no tf.keras).
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    if "tensorflow" not in sys.modules:  # absl logs "no cuda drivers" to fd 2 before any setting
        saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
        try:
            sys.stderr.flush()
            os.dup2(devnull, 2)
            import tensorflow  # noqa: F401
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)
    import tensorflow as tf
    import torch

    from . import tf1

    tf.config.experimental.enable_op_determinism()
    tf1.THREADS = 1  # intra-op threads of the sessions tf1 creates
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)


def _inject(fault):
    """The test hook: fail this run on purpose (clearly named in the error)."""
    if fault == "raise":
        raise RuntimeError("inject_fault='raise': this run fails on purpose (test hook)")
    if fault == "hang":
        time.sleep(10 ** 6)
    if fault == "die":  # the kernel is killed mid-run (as by the OOM killer)
        os.kill(os.getpid(), signal.SIGKILL)


def _accuracy(outputs, y, classes):
    return [datasets.accuracy(o, y, classes) for o in outputs]


def run_grid(cfg) -> Grid:
    """Run the strategy over the grid in both frameworks; return tidy rows and the lr sweep."""
    import pandas as pd

    import selective_update as su

    _inject(cfg.get("inject_fault"))
    deterministic()
    strategy, dataset = cfg["strategy"], cfg["dataset"]
    rows, sweep, results = [], [], {}
    for seed in cfg["seeds"]:
        setup = _prepare(dataset, cfg["n_sample"], cfg["hidden"], seed, cfg["keep"], cfg["train"])
        common = dict(params=setup.params, data=setup.data, keep=setup.keep, train=setup.train,
                      dtype=cfg["dtype"])
        for fw in core.FRAMEWORKS:
            for opt in cfg["optimizers"]:
                for wd in cfg["weight_decays"]:
                    for warm in cfg["warm_start_steps"]:
                        set_up = dict(optimizer=opt, weight_decay=wd, warm_start_steps=warm)
                        r = su.run(strategy, fw, lr=cfg["lr"], steps=cfg["steps"], **set_up,
                                   **common)
                        results[(fw, opt, wd, warm, seed)] = r
                        promised = r.promise
                        half, ratio = None, np.nan
                        if promised == "first_order":
                            # halve the strategy's own step only: same warm start, same state
                            half = su.run(strategy, fw, lr=cfg["lr"] / 2, steps=1, **set_up,
                                          warm_start_lr=cfg["lr"], **common).drift_train[1]
                            ratio = report.drift_ratio(r.drift_train[1], half)
                        verdict = report.promise_holds(promised, r.drift_train, r.drift_eval,
                                                       dtype=cfg["dtype"],
                                                       drift_train_half_lr=half)
                        if dataset == "digits":
                            y = setup.data.y_eval
                            acc_keep = _accuracy(r.eval_outputs, y, setup.keep)
                            acc_train = _accuracy(r.eval_outputs, y, setup.train)
                        else:
                            acc_keep = acc_train = [np.nan] * (cfg["steps"] + 1)
                        for step in range(cfg["steps"] + 1):
                            rows.append(dict(
                                dataset=dataset, strategy=strategy, framework=fw, optimizer=opt,
                                weight_decay=wd, warm_start_steps=warm, lr=cfg["lr"], seed=seed,
                                step=step, dtype=cfg["dtype"], n_sample=cfg["n_sample"],
                                hidden=cfg["hidden"], loss=float(r.loss[step]),
                                train_loss=float(r.train_loss[step]),
                                drift_train=float(r.drift_train[step]),
                                drift_eval=float(r.drift_eval[step]), acc_keep=acc_keep[step],
                                acc_train=acc_train[step], promise=promised,
                                holds=verdict.holds, drift_ratio=ratio))
            if seed == cfg["seeds"][0]:
                wd, warm = cfg["weight_decays"][0], cfg["warm_start_steps"][0]
                for opt in cfg["optimizers"]:
                    for factor in LR_FACTORS:
                        r = su.run(strategy, fw, lr=cfg["lr"] * factor, steps=1, optimizer=opt,
                                   weight_decay=wd, warm_start_steps=warm,
                                   warm_start_lr=cfg["lr"], **common)
                        sweep.append(dict(dataset=dataset, strategy=strategy, framework=fw,
                                          optimizer=opt, weight_decay=wd, warm_start_steps=warm,
                                          seed=seed, lr=cfg["lr"] * factor,
                                          drift_train=float(r.drift_train[1]),
                                          drift_eval=float(r.drift_eval[1]), promise=r.promise))
    rows = tidy(pd.DataFrame(rows, columns=RESULT_COLUMNS), RESULT_ORDER)
    sweep = tidy(pd.DataFrame(sweep, columns=SWEEP_COLUMNS), SWEEP_ORDER)
    return Grid(cfg, rows, sweep, results)


def tidy(frame, order):
    """Sort rows deterministically (stable) and renumber the index."""
    return frame.sort_values(order, kind="mergesort").reset_index(drop=True)


def csv_text(frame) -> str:
    """CSV with floats as their shortest round-trip repr: byte-identical for identical numbers."""
    return frame.to_csv(index=False, lineterminator="\n", float_format=lambda v: repr(float(v)))


def write_results(grid, results_dir):
    """Write <dataset>-<strategy>.csv and <dataset>-<strategy>-lr.csv into results_dir (atomic)."""
    if results_dir is None:
        return []
    name = f"{grid.cfg['dataset']}-{grid.cfg['strategy']}"
    paths = [Path(results_dir) / f"{name}.csv", Path(results_dir) / f"{name}-lr.csv"]
    report.atomic_write(paths[0], csv_text(grid.rows))
    report.atomic_write(paths[1], csv_text(grid.sweep))
    return paths


def load_reports(reports_dir=None):
    """Read a study's results.csv, lr_sweep.csv and status.csv (for notebooks/summary.ipynb)."""
    import pandas as pd

    reports_dir = Path(ROOT / "reports" if reports_dir is None else reports_dir)
    if not reports_dir.is_dir():
        core._fail("reports_dir", str(reports_dir), "a folder written by `python -m "
                   "selective_update study` (results.csv, lr_sweep.csv, status.csv)")

    def read(name, columns):
        path = reports_dir / name
        return pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=columns)

    return (read("results.csv", RESULT_COLUMNS), read("lr_sweep.csv", SWEEP_COLUMNS),
            read("status.csv", STATUS_COLUMNS))


# --- the batch --------------------------------------------------------------------------------------

STATUS_COLUMNS = ["name", "notebook", "dataset", "strategy", "status", "error", "html",
                  "attempts", "seconds"]


@dataclass(frozen=True)
class Task:
    """One notebook run of the batch."""

    name: str  # e.g. toy-split_head; the output files are named after it
    notebook: str  # notebook file under notebooks/
    output: str  # executed notebook, relative to the staging folder
    parameters: dict
    dataset: str = ""
    strategy: str = ""
    fault: str | None = None  # test hook: "kernel_start" fakes a kernel that fails to start


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"got {text!r}; allowed: a number of seconds > 0") \
            from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"got {text}; allowed: a number of seconds > 0")
    return value


def _out_dir(text):
    path = Path(text)
    if not text:
        raise argparse.ArgumentTypeError("got ''; allowed: a folder path")
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"got {text!r}; allowed: a folder (this path is a file)")
    if path.resolve().parent.exists() and not path.resolve().parent.is_dir():
        raise argparse.ArgumentTypeError(f"got {text!r}; allowed: a folder path")
    return path


def _fault(text):
    run, _, fault = text.rpartition(":")
    if not run or fault not in RUN_FAULTS:
        raise argparse.ArgumentTypeError(
            f"got {text!r}; allowed: RUN:FAULT with FAULT one of {', '.join(RUN_FAULTS)}")
    return run, fault


def add_arguments(parser):
    """Declare the command's options."""
    parser.add_argument("--strategies", nargs="+", choices=list(core.STRATEGIES),
                        default=list(core.STRATEGIES), metavar="STRATEGY",
                        help="strategies to run (default: all): " + ", ".join(core.STRATEGIES))
    parser.add_argument("--datasets", nargs="+", choices=list(datasets.DATASETS),
                        default=list(datasets.DATASETS), metavar="DATASET",
                        help="datasets (default: both): " + ", ".join(datasets.DATASETS))
    parser.add_argument("--jobs", type=core.positive_int_option, default=2,
                        help="notebooks run in parallel (default: 2)")
    parser.add_argument("--quick", action="store_true",
                        help="a small grid (1 seed, sgd and adam, 3 steps) for tests")
    parser.add_argument("--out", type=_out_dir, default=Path("reports"),
                        help="folder for the reports (default: reports)")
    parser.add_argument("--cell-timeout", type=_positive_float, default=CELL_TIMEOUT,
                        metavar="SECONDS",
                        help=f"fail a run whose cell runs longer (default: {CELL_TIMEOUT:g})")
    parser.add_argument("--fresh-kernels", action="store_true",
                        help="start a new kernel for every notebook (default: each worker reuses "
                             "one kernel, reset to an empty namespace between notebooks and "
                             "replaced after any failure)")
    # Test hook: RUN:FAULT (e.g. toy-split_head:raise) makes that run fail on purpose.
    parser.add_argument("--inject-fault", type=_fault, action="append", default=[],
                        help=argparse.SUPPRESS)


def plan(args) -> list:
    """Build the batch's tasks; validate every run's parameters before any kernel starts."""
    grid = QUICK_GRID if args.quick else DEFAULT_GRID
    strategies = list(dict.fromkeys(args.strategies))
    names = {f"{d}-{s}" for d in args.datasets for s in strategies}
    faults = {}
    for run, fault in args.inject_fault:
        if run not in names:
            raise ValueError(f"--inject-fault: got {run!r}; allowed: one of this study's runs "
                             f"({', '.join(sorted(names))})")
        faults[run] = fault
    tasks = [Task("00_seed_answer", "00_seed_answer.ipynb", "00_seed_answer.ipynb", {})]
    for dataset in dict.fromkeys(args.datasets):
        for strategy in strategies:
            name = f"{dataset}-{strategy}"
            fault = faults.get(name)
            params = dict(strategy=strategy, dataset=dataset, **grid,
                          inject_fault=fault if fault in FAULTS else None)
            check_params(**params)  # one line, exit 2, before any kernel
            tasks.append(Task(name, "strategy.ipynb", f"runs/{name}.ipynb", params, dataset,
                              strategy, fault if fault == "kernel_start" else None))
    # Heaviest first (digits, the null-space strategies), so the pool ends together.
    weight = {"null_space_corrected": 3, "null_space": 2}
    return sorted(tasks, key=lambda t: (-(t.dataset == "digits") - weight.get(t.strategy, 0),
                                        t.name))


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


def _mark_failure(path, message, ename):
    """Add papermill-style error banners to an executed notebook the engine left without one."""
    import nbformat
    from papermill.execute import (ERROR_ANCHOR_MSG, ERROR_MARKER_TAG, ERROR_MESSAGE_TEMPLATE)

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
        banner = "<span style=\"color:red; font-size:2em;\">The run failed before any cell ran.</span>"
    cell = nbformat.v4.new_markdown_cell(f"{banner}\n\n**{ename}**: {message}")
    cell.metadata["tags"] = [ERROR_MARKER_TAG]
    nb.cells.insert(0, cell)
    report.atomic_write(path, nbformat.writes(nb))


# --- one kernel per worker, reused across its notebooks (--reuse-kernels) ----------------------------

_KERNEL = {"km": None}  # this worker's kernel manager, when kernels are reused
RESET = ("get_ipython().reset(new_session=True)\n"  # empty namespace, In [1] again
         "import matplotlib.pyplot as _plt\n_plt.close('all')\ndel _plt\n")


def _reuse_engine():
    """A papermill engine that runs on a given kernel manager and leaves its kernel running."""
    from papermill.clientwrap import PapermillNotebookClient
    from papermill.engines import NBClientEngine, papermill_engines
    from papermill.log import logger

    class ReuseEngine(NBClientEngine):
        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, log_output=False, stdout_file=None,
                                     stderr_file=None, start_timeout=60, execution_timeout=None,
                                     km=None, **kwargs):
            client = PapermillNotebookClient(
                nb_man, km=km, timeout=execution_timeout, startup_timeout=start_timeout,
                kernel_name=kernel_name, log=logger, log_output=log_output,
                stdout_file=stdout_file, stderr_file=stderr_file)
            try:
                return client.execute()
            finally:
                if client.kc is not None:
                    client.kc.stop_channels()

    papermill_engines.register("selective_update_reuse", ReuseEngine)
    return "selective_update_reuse"


def _shutdown_kernel():
    """Shut this process's kernel down (if any)."""
    from jupyter_core.utils import run_sync

    km, _KERNEL["km"] = _KERNEL["km"], None
    if km is not None:
        try:
            run_sync(km.shutdown_kernel)(now=True)
        except Exception:  # noqa: BLE001 - it is going away either way
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
        except Exception:  # noqa: BLE001 - a kernel that cannot be reset is replaced
            pass
        finally:
            kc.stop_channels()
    _shutdown_kernel()
    km = AsyncKernelManager(kernel_name=kernel_name)
    run_sync(km.start_kernel)()  # NoSuchKernel, port races...: the caller retries once
    _KERNEL["km"] = km
    kc = _control_client(km)
    try:
        kc.wait_for_ready(timeout=START_TIMEOUT)
    except BaseException:
        _shutdown_kernel()
        raise
    finally:
        kc.stop_channels()
    if multiprocessing.parent_process() is not None:
        multiprocessing.util.Finalize(None, _shutdown_kernel, exitpriority=10)
    return km


def _sigterm(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _worker_exit(signum, frame):
    """End a worker at once on SIGTERM/SIGINT, shutting its kernel down first."""
    _shutdown_kernel()
    os._exit(128 + signum)


def _worker_init():
    """Set up a worker process: an interrupt ends it with its kernel; one thread per kernel."""
    signal.signal(signal.SIGTERM, _worker_exit)
    signal.signal(signal.SIGINT, _worker_exit)
    for key, value in {**THREAD_ENV, "TF_CPP_MIN_LOG_LEVEL": "3",
                       "PYDEVD_DISABLE_FILE_VALIDATION": "1"}.items():
        os.environ.setdefault(key, value)  # inherited by the kernels this worker starts


def execute(task, staging, cell_timeout, reuse=False) -> dict:
    """Run one notebook (retry once if its kernel fails to start), render its HTML; never raise.

    In a worker process, an interrupt (SIGINT/SIGTERM) shuts the kernel down and ends the worker.
    """
    try:
        return _execute_logged(task, Path(staging), cell_timeout, reuse)
    except KeyboardInterrupt:
        _shutdown_kernel()
        if multiprocessing.parent_process() is None:
            raise
        os._exit(130)


def _execute_logged(task, staging, cell_timeout, reuse):
    output = staging / task.output
    output.parent.mkdir(parents=True, exist_ok=True)
    params = dict(task.parameters)
    if task.notebook == "strategy.ipynb":  # its rows go beside its notebook
        params["results_dir"] = str(output.parent)
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
        return _execute(task, staging, output, params, cell_timeout, start, reuse)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, log):
            os.close(fd)


def _execute(task, staging, output, params, cell_timeout, start, reuse):
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
                _shutdown_kernel()  # (the test hook starts a kernel that cannot start)
            km = _reused_kernel(kernel)
            pm.execute_notebook(str(NOTEBOOKS / task.notebook), str(output), parameters=params,
                                kernel_name=kernel, progress_bar=False,
                                start_timeout=START_TIMEOUT, execution_timeout=cell_timeout,
                                engine_name=_reuse_engine(), km=km)
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
            _mark_failure(output, error, type(e).__name__)
            break
        except KeyboardInterrupt:
            raise
        except Exception as e:  # noqa: BLE001 - a kernel that failed to start, or worse
            started = output.is_file() and _cells_started(nbformat.read(output, as_version=4))
            status = "failed"
            error = f"{type(e).__name__}: {e}".splitlines()[0][:300]
            if not started:
                error = f"kernel failed to start: {error}"
                if attempts == 1:
                    continue  # parallel kernel starts can race on ports: retry once
            _mark_failure(output, error, type(e).__name__)
            break
    if status != "ok" or not reuse:
        _shutdown_kernel()  # a kernel that saw a failure is not reused
    html = output.with_suffix(".html")
    if output.is_file():
        try:
            report.render_html(output, html, title=task.name)
        except Exception as e:  # noqa: BLE001
            status, error = "failed", error or f"rendering HTML failed: {type(e).__name__}: {e}"
    return dict(name=task.name, notebook=task.notebook, dataset=task.dataset,
                strategy=task.strategy, status=status, error=error,
                html=str(html.relative_to(staging)), attempts=attempts,
                seconds=round(time.perf_counter() - start, 1))


def concat_results(staging):
    """Concatenate the runs' rows into results.csv and lr_sweep.csv (sorted, deterministic)."""
    import pandas as pd

    runs = Path(staging) / "runs"
    out = {}
    for name, sweep, columns, order in (("results.csv", False, RESULT_COLUMNS, RESULT_ORDER),
                                        ("lr_sweep.csv", True, SWEEP_COLUMNS, SWEEP_ORDER)):
        files = sorted(p for p in runs.glob("*.csv") if p.name.endswith("-lr.csv") == sweep)
        frames = [pd.read_csv(p) for p in files]
        frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
        frame = tidy(frame[columns], order)
        report.atomic_write(Path(staging) / name, csv_text(frame))
        out[name] = frame
    return out


PUBLISHED_LAST = "index.html"


def _publish(staging, out):
    """Move the staged reports into out: runs/ swapped whole, files replaced one by one.

    Other files in out (bench results, screenshots) are left alone; index.html goes last.
    """
    out.mkdir(parents=True, exist_ok=True)
    old = staging / ".runs.old"
    if (out / "runs").is_dir():
        os.replace(out / "runs", old)
    os.replace(staging / "runs", out / "runs")
    names = sorted(p.name for p in staging.iterdir() if p.is_file())
    for name in sorted(names, key=lambda n: n == PUBLISHED_LAST):
        os.replace(staging / name, out / name)


def _line(s):
    """One line per finished run: status, name, seconds, where its report is (and its error)."""
    retried = " (kernel start retried)" if s["attempts"] > 1 else ""
    line = (f"{'ok    ' if s['status'] == 'ok' else 'FAILED'} {s['name']:<34} "
            f"{s['seconds']:6.1f} s  {s['html']}{retried}")
    return line + (f"\n       {s['error']}" if s["error"] else "")


def _stop(pool):
    """Cancel queued runs and end the workers (each shuts its kernel down first)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for p in processes:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + 15
    for p in processes:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()


def _remove_stale_staging(out):
    """Remove staging folders left by a study that was killed (its process is gone)."""
    for path in out.glob(".staging-*") if out.is_dir() else ():
        try:
            os.kill(int(path.name.rsplit("-", 1)[1]), 0)
        except (ValueError, ProcessLookupError):
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:
            pass


def main(args) -> int:
    """Run the batch; exit 0 when every run succeeded, 1 naming the failed ones, 2 on bad usage."""
    import pandas as pd
    from tqdm import tqdm

    try:
        tasks = plan(args)
    except ValueError as e:
        print(f"python -m selective_update study: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    staging = out / f".staging-{os.getpid()}"  # inside out: same file system, git-ignored
    _remove_stale_staging(out)
    previous = signal.signal(signal.SIGTERM, _sigterm)
    started = time.perf_counter()
    statuses = []
    try:
        shutil.rmtree(staging, ignore_errors=True)
        (staging / "runs").mkdir(parents=True)
        print(f"study: {len(tasks) - 1} strategy notebooks + seed answer + summary, "
              f"{args.jobs} at a time -> {out}", flush=True)
        context = multiprocessing.get_context("spawn")
        pool = cf.ProcessPoolExecutor(args.jobs, mp_context=context, initializer=_worker_init)
        with tqdm(total=len(tasks) + 1, unit="nb", desc="study", file=sys.stderr) as bar:
            try:
                reuse = not args.fresh_kernels
                futures = [pool.submit(execute, t, str(staging), args.cell_timeout, reuse)
                           for t in tasks]
                for future in cf.as_completed(futures):
                    s = future.result()
                    statuses.append(s)
                    bar.update(1)
                    bar.write(_line(s))
                concat_results(staging)
                status = tidy(pd.DataFrame(statuses, columns=STATUS_COLUMNS), ["name"])
                report.atomic_write(staging / "status.csv", csv_text(status))
                # The summary last, on a worker (whose kernel is warm when kernels are reused).
                summary = pool.submit(execute, Task("index", "summary.ipynb", "index.ipynb",
                                                    {"reports_dir": str(staging)}),
                                      str(staging), args.cell_timeout, reuse).result()
                bar.update(1)
                bar.write(_line(summary))
            except BaseException:
                _stop(pool)
                raise
            pool.shutdown(wait=True)
        _publish(staging, out)
    except KeyboardInterrupt:
        print(f"\nstudy: interrupted; {out} keeps its previous reports", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        shutil.rmtree(staging, ignore_errors=True)
    failed = [s for s in statuses + [summary] if s["status"] != "ok"]
    wall = time.perf_counter() - started
    print(f"study: {len(statuses) + 1 - len(failed)} of {len(statuses) + 1} notebooks ok in "
          f"{wall:.0f} s; reports in {out}/ (index.html, results.csv, runs/)")
    if failed:
        print("study: failed: " + "; ".join(f"{s['name']} ({s['error']}) -> {out}/{s['html']}"
                                           for s in failed), file=sys.stderr)
        return 1
    return 0
