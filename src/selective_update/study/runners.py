"""The study's notebook runners behind one contract: the embedded pool (pool.py) and a Dask
cluster (cluster.py). The batch (cli.py) only calls what NotebookRunner says."""
from __future__ import annotations

from typing import Iterator, Protocol


class NotebookRunner(Protocol):
    """Run the batch's notebook tasks somewhere and hand back each run's status."""

    def describe(self) -> str:
        """Say where the notebooks run (one phrase, for the study's first line)."""

    def run(self, tasks, staging, cell_timeout, reuse, published, inputs=None) -> Iterator[dict]:
        """Yield each run's status as it finishes, its files written into staging."""

    def stop(self) -> None:
        """Cancel what is queued and end the workers now (interrupted, or a run raised)."""

    def close(self) -> None:
        """End the workers once every run is done."""


def open_runner(cluster, jobs) -> NotebookRunner:
    """The embedded pool of `jobs` workers, or a Dask cluster at `cluster` (cluster.ClusterError,
    a ValueError, when its scheduler does not answer)."""
    if cluster is None:
        from .pool import PoolRunner

        return PoolRunner(jobs)
    from .cluster import ClusterRunner  # Dask is imported only for --cluster

    return ClusterRunner(cluster, jobs)
