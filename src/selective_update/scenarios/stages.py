"""How a scenario's computation runs: as the batch runs it, timed stage by stage, and written."""
from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path

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


def write_tables(study, reports_dir, names):
    """Write the study's rows, summary and sweep as the CSV files `names` into reports_dir, each
    atomically; return their paths ([] when reports_dir is None)."""
    if reports_dir is None:
        return []
    paths = [Path(reports_dir) / name for name in names]
    for path, frame in zip(paths, (study.rows, study.summary, study.sweep)):
        atomic_write(path, csv_text(frame))
    return paths
