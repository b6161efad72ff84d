"""How a scenario's computation runs: as the batch runs it, and timed stage by stage."""
from __future__ import annotations

import time
from contextlib import contextmanager

from threadpoolctl import threadpool_limits


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
