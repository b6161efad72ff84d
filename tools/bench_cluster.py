"""The quick study on the embedded pool against `--cluster local`, same workers, interleaved.

    .venv/bin/python tools/bench_cluster.py [--rounds 3] [--jobs 2] [--out reports]

Each round runs `python -m selective_update study --quick --jobs J` twice, once per executor, in
fresh processes (the order alternates round by round, so a load that drifts hits both alike), and
checks that both results.csv are byte-identical. Writes OUT/cluster_bench.csv (one row per study)
and prints the table docs/cluster.md shows (bench.report.cluster_bench_markdown; `make docs`
writes it there): the overhead per task is (cluster - pool) wall time divided by the number of
notebooks, and the same for the notebooks' own seconds (what each run took on its worker, kernel
reset and HTML included), which leaves out the cluster's start and stop.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from selective_update.bench.report import cluster_bench_markdown

EXECUTORS = {"pool": [], "cluster local": ["--cluster", "local"]}
RUN_LINE = re.compile(r"^(?:ok    |FAILED) (\S+)\s+([\d.]+) s ", re.MULTILINE)


def study(executor, jobs, out):
    """Run one quick study; return its row (wall seconds, notebooks, their seconds, load)."""
    load = os.getloadavg()[0]
    cmd = [sys.executable, "-m", "selective_update", "study", "--quick", "--jobs", str(jobs),
           "--out", str(out), *EXECUTORS[executor]]
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stderr[-2000:]}")
    runs = RUN_LINE.findall(done.stdout + done.stderr)
    return dict(executor=executor, jobs=jobs, wall_s=round(wall, 1), notebooks=len(runs),
                notebook_s=round(sum(float(s) for _, s in runs), 1), load_1min=round(load, 2))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default="reports")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        for r in range(args.rounds):
            order = list(EXECUTORS) if r % 2 == 0 else list(EXECUTORS)[::-1]
            outs = {}
            for executor in order:
                outs[executor] = Path(tmp) / f"{r}-{executor.replace(' ', '-')}"
                rows.append(dict(round=r, **study(executor, args.jobs, outs[executor])))
                print(rows[-1], flush=True)
            same = len({(o / "results.csv").read_bytes() for o in outs.values()}) == 1
            if not same:
                raise SystemExit(f"round {r}: results.csv differs between the executors")
            for row in rows[-2:]:
                row["results_identical"] = same
    frame = pd.DataFrame(rows)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    frame.to_csv(Path(args.out) / "cluster_bench.csv", index=False, lineterminator="\n")
    print("\n" + cluster_bench_markdown(frame))


if __name__ == "__main__":
    main()
