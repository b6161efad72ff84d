"""A scenario's pipeline, once: set-ups, a sweep on validation, the choice, the final runs on
held-out data and their summary, run as the batch runs them, timed stage by stage, and written.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from threadpoolctl import threadpool_limits

from ..files import atomic_write, csv_text


def run_as_the_batch(compute, cfg):
    """Run compute(cfg) with both frameworks deterministic and numpy's BLAS on one thread (SVD
    bases, scores), as in the batch's kernels: the same numbers by hand and in the study."""
    from ..study.grid import deterministic

    deterministic()
    with threadpool_limits(1):
        return compute(cfg)


@contextmanager
def timed(seconds, stage):
    """Record the wall seconds of the block under seconds[stage]."""
    start = time.perf_counter()
    yield
    seconds[stage] = time.perf_counter() - start


@dataclass
class Study:
    """What a scenario measured: the validation sweep (with the chosen points marked), the final
    rows, their summary, the stages' wall seconds and the settings too costly to run."""

    grid: dict
    sweep: "object"  # pandas DataFrame: one row per sweep run and point (no timings: byte-stable)
    rows: "object"  # pandas DataFrame: the final runs on held-out data, per seed
    summary: "object"  # pandas DataFrame: intervals over seeds per chosen point
    seconds: dict = field(default_factory=dict)  # stage -> wall seconds
    skipped: "object" = None  # pandas DataFrame: settings too costly to run, with their work
    sweep_seconds: "object" = None  # pandas DataFrame: sweep seconds per setting (if measured)


@dataclass(frozen=True)
class Pipeline:
    """A scenario's stages: prepare(hidden, seed) builds (and caches) a set-up; sweep(grid)
    returns (rows, skipped, sweep seconds or None); select marks the chosen points;
    final(sweep, grid) runs them on every seed; summarize(rows) gives the summary."""

    prepare: Callable
    sweep: Callable
    select: Callable
    final: Callable
    summarize: Callable


def run_study(pipeline: Pipeline, cfg) -> Study:
    """Run a scenario's whole computation (a notebook's one call), as the batch runs it."""
    def compute(cfg):
        grid, seconds = cfg["grid"], {}
        with timed(seconds, "pretraining"):
            for hidden in grid["hidden"]:
                for seed in sorted(set(grid["seeds"]) | set(grid["sweep_seeds"])):
                    pipeline.prepare(hidden, seed)
        with timed(seconds, "sweep (torch, validation)"):
            sweep, skipped, sweep_seconds = pipeline.sweep(grid)
        sweep = pipeline.select(sweep)
        with timed(seconds, "final runs (tf1 + torch, held out)"):
            rows = pipeline.final(sweep, grid)
        return Study(grid, sweep, rows, pipeline.summarize(rows), seconds, skipped,
                     sweep_seconds)

    return run_as_the_batch(compute, cfg)


def write_tables(study, reports_dir, names):
    """Write the study's rows, summary and sweep as the CSV files `names` into reports_dir, each
    atomically; return their paths ([] when reports_dir is None)."""
    if reports_dir is None:
        return []
    paths = [Path(reports_dir) / name for name in names]
    for path, frame in zip(paths, (study.rows, study.summary, study.sweep)):
        atomic_write(path, csv_text(frame))
    return paths
