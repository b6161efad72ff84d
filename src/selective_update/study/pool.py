"""The study's embedded pool: spawned worker processes on this machine, each keeping its kernel
(notebook_runner.execute); the default runner of `python -m selective_update study`."""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import time

from . import notebook_runner


class PoolRunner:
    """The embedded pool: spawned worker processes on this machine, each keeping its kernel."""

    def __init__(self, jobs):
        self.jobs = jobs
        self.pool = cf.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                                           initializer=notebook_runner.worker_init)

    def describe(self) -> str:
        return f"{self.jobs} at a time"

    def run(self, tasks, staging, cell_timeout, reuse, published, inputs=None):
        """Yield each run's status as it finishes (the workers write into staging themselves)."""
        futures = [self.pool.submit(notebook_runner.execute, t, str(staging), cell_timeout, reuse,
                                    str(published)) for t in tasks]
        for future in cf.as_completed(futures):
            yield future.result()

    def stop(self):
        """Cancel queued runs and end the workers (each shuts its kernel down first)."""
        processes = list((getattr(self.pool, "_processes", None) or {}).values())
        self.pool.shutdown(wait=False, cancel_futures=True)
        for p in processes:
            if p.is_alive():
                p.terminate()
        deadline = time.monotonic() + 15
        for p in processes:
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()

    def close(self):
        self.pool.shutdown(wait=True)
