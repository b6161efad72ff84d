"""The study's floor: its default grid computed in one plain process, without notebooks.

`make study` is compared with this: the same runs (grid.run_grid: every run, the lr/2 runs of
the first-order check and the lr sweep) without kernels, figures or HTML.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from .. import core
from ..datasets import DATASETS
from ..settings import DEFAULT_GRID
from .timing import load

FLOOR_TAG = "BENCH_FLOOR_JSON "


def study_floor_grid(strategies=None, threads=0) -> dict:
    """Compute the study's own grids (grid.run_grid, no notebooks) in this process; time them.

    The same work as the strategy notebooks' computation cells: every run, the lr/2 runs of the
    first-order check and the lr sweep; no kernels, figures or HTML.
    threads: 0 keeps each framework's default thread count; N >= 1 pins torch and tf1 to N.
    """
    import warnings

    t0 = time.perf_counter()
    import selective_update as su
    from selective_update.study import grid

    for fw in core.FRAMEWORKS:
        su.backend(fw).configure(threads or None)
    times = {"import_s": time.perf_counter() - t0}
    rows = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for dataset in DATASETS:
            t = time.perf_counter()
            for strategy in strategies or core.STRATEGIES:
                cfg = grid.check_params(strategy=strategy, dataset=dataset, **DEFAULT_GRID)
                rows += len(grid.run_grid(cfg).rows)
            times[f"{dataset}_s"] = time.perf_counter() - t
    times["runs"] = rows // (DEFAULT_GRID["steps"] + 1)  # main runs; each has steps+1 rows
    times["in_process_s"] = time.perf_counter() - t0
    return times


def floor_child(strategies, threads=0):
    """Entry point of the fresh process that measures the floor; prints one JSON line."""
    print(FLOOR_TAG + json.dumps(study_floor_grid(strategies, threads)), flush=True)


def bench_floor(args, env, log) -> tuple:
    """Run the study grid in a fresh process (--floor-threads; 1 like the study's workers)."""
    code = (f"from selective_update.bench.study_floor import floor_child; "
            f"floor_child({list(args.strategies)!r}, {args.floor_threads})")
    environ = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    load_1m = load()
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=environ)
    wall = time.perf_counter() - start
    lines = [line for line in proc.stdout.splitlines() if line.startswith(FLOOR_TAG)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError("study floor process failed:\n" + proc.stderr[-3000:])
    parts = json.loads(lines[-1][len(FLOOR_TAG):])
    g = DEFAULT_GRID
    grid = (f"{len(args.strategies)} strategies x {'/'.join(DATASETS)} x "
            f"{'/'.join(core.FRAMEWORKS)} x {len(g['optimizers'])} optimizers x wd "
            f"{'/'.join(map(str, g['weight_decays']))} x warm "
            f"{'/'.join(map(str, g['warm_start_steps']))} x {len(g['seeds'])} seeds, "
            f"{g['steps']} steps, lr {g['lr']}: {parts['runs']} runs plus the study's lr/2 and "
            "lr-sweep runs, by grid.run_grid")
    note = (f"{grid}; wall of one fresh process (interpreter start included); "
            + ", ".join(f"{k} {v:.2f}" for k, v in parts.items() if k.endswith("_s")))
    row = dict(part="study_floor", framework="+".join(core.FRAMEWORKS), strategy="all",
               sizes="toy 3-4-2/8 + digits 64-16-10/32", width="", batch="", n_ref="",
               n_params="",
               median_s=wall, q1_s=wall, q3_s=wall, ratio_to_plain=float("nan"), goal="",
               meets_goal="", repeats=1, threads=args.floor_threads or "default",
               device="cpu", dtype="float64",
               load_1m=load_1m, machine=env["machine"], python=env["python"], numpy=env["numpy"],
               torch=env["torch"], tensorflow=env["tensorflow"], note=note)
    log(f"study floor: {wall:.1f} s wall ({note})")
    return row, parts
