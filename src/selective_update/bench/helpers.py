"""Time the helpers for your own model (issue 15): part `helpers` of the bench.

On the ~55k-parameter CNN of torch/bench_cases.py (two 3x3 convs, 512 -> 96 -> 10, 16x16
images, float32, CPU), one training step on 128 images with each helper against a plain AdamW
step: split_head; NullSpaceProjector on 64 and 512 protected images (9 kept outputs: 576 and
4,608 constraints); the corrected projector on 64; LayerSubspaceProjector on 512 at energy
0.97. Light steps are timed among themselves, interleaved; the 512 projector on its own (a
multi-second step leaves the next one cache-cold). Its peak RSS is measured in a fresh process.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np

from .timing import WARMUP, measurement_row, time_interleaved

PROTECTED = (64, 512)
QUICK_PROTECTED = (8, 16)  # --quick: the same cases, small enough for a smoke test
ENERGY = 0.97
HEAVY_REPEATS = 3
# Issue 15's targets: ratio to the plain step (the corrected step: to its uncorrected twin).
RATIO_GOALS = {"null_space_64": 10.0, "null_space_512": 250.0, "layer_subspace_512": 1.5}
CORRECTED_GOAL = 2.0
RSS_GOAL_MB = 2048


def peak_rss_mb(n, threads) -> float:
    """Run the n-input projector in a fresh process; return its peak RSS in MB."""
    out = subprocess.run([sys.executable, "-m", "selective_update.torch.bench_cases", str(n),
                          str(threads)], capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"bench helpers: the peak-RSS process failed: {out.stderr[-500:]}")
    return float(out.stdout.split()[-1])


def bench_helpers(args, env, log) -> list:
    """Time each helper's step against the plain step; return bench.csv rows (part helpers)."""
    from ..torch import bench_cases  # the framework's own folder holds the cases

    protected = QUICK_PROTECTED if args.quick else PROTECTED
    small, big = min(protected), max(protected)
    log(f"helpers: building the cases (CNN, protected {small} and {big} images)")
    cases = bench_cases.helper_cases(protected=protected, energy=ENERGY)
    heavy = {f"null_space_{big}": cases.pop(f"null_space_{big}")}
    seconds = time_interleaved(cases, args.repeats, warmup=WARMUP)
    seconds.update(time_interleaved(heavy, min(args.repeats, HEAVY_REPEATS), warmup=1))
    cases.update(heavy)
    rss = peak_rss_mb(big, args.threads)
    facts = bench_cases.model_facts()
    plain = float(np.median(seconds["plain"]))
    rows = []
    for name, t in seconds.items():
        n_ref = name.rsplit("_", 1)[-1] if name[-1].isdigit() else ""
        steps = cases[name].gauss_newton_steps
        note = ""
        if steps:
            counts = ", ".join(f"{k} in {steps.count(k)}" for k in sorted(set(steps)))
            note = f"Gauss-Newton steps per step: {counts} of {len(steps)} steps"
        if name == f"layer_subspace_{big}":
            note = f"energy {ENERGY}"
        row = measurement_row("helpers", "torch", name, (0, 0), 128, t, env, args, note=note)
        row.update(sizes=facts["sizes"], width="", n_params=facts["n_params"], n_ref=n_ref,
                   device="cpu", dtype="float32", ratio_to_plain=float(np.median(t)) / plain)
        if name == f"null_space_{big}":
            row["peak_rss_mb"] = rss
        rows.append(row)
    _goals(rows, small, big, args.quick)
    log("helpers: " + ", ".join(f"{r['strategy']} {r['median_s'] * 1e3:.3g} ms "
                                f"({r['ratio_to_plain']:.3g}x)" for r in rows)
        + f"; peak RSS of null_space_{big}: {rss:.0f} MB")
    return rows


def _goals(rows, small, big, quick):
    """Set goal and meets_goal on the rows issue 15 gives targets for (not in --quick)."""
    if quick:
        return
    by_name = {r["strategy"]: r for r in rows}
    for name, goal in RATIO_GOALS.items():
        row = by_name.get(name)
        if row is None:
            continue
        row["goal"] = f"<= {goal:g}x"
        row["meets_goal"] = bool(row["ratio_to_plain"] <= goal)
        if name == f"null_space_{big}":
            row["goal"] += f", peak RSS <= {RSS_GOAL_MB / 1024:g} GB"
            row["meets_goal"] = row["meets_goal"] and row["peak_rss_mb"] <= RSS_GOAL_MB
    corrected, twin = by_name[f"null_space_corrected_{small}"], by_name[f"null_space_{small}"]
    corrected["goal"] = f"<= {CORRECTED_GOAL:g}x null_space_{small}"
    corrected["meets_goal"] = bool(corrected["median_s"] <= CORRECTED_GOAL * twin["median_s"])
