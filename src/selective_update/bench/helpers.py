"""Time the helpers for your own model: part `helpers` of the bench.

On the ~55k-parameter CNN of torch/bench_cases.py (two 3x3 convs, 512 -> 96 -> 10, 16x16
images, float32, CPU, AdamW at lr 1e-4), one training step on 128 images with each helper
against a plain AdamW step: split_head, and split_head with its per-step checks off (what the
checks cost); NullSpaceProjector on 64 and 512 protected images (9 kept outputs: 576 and 4,608
constraints); the corrected projector on 64; LayerSubspaceProjector on 512 at energy 0.97. Light
steps are timed among themselves, interleaved; the 512 projector on its own (a multi-second step
leaves the next one cache-cold). Its peak RSS is measured in a fresh process.
Half precision: the 64-image projector, corrected and not, in bfloat16 and float16 (lr 1e-3,
float16 with Adam's eps 1e-4), interleaved with a plain step of the same dtype.
The Transformer case (~69k parameters, 10 of 11 logits kept on 256 protected sequences: 2,560
constraints, AdamW at lr 1e-3) in a fresh process: attach(), a step, its estimate, peak RSS.
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from .timing import WARMUP, measurement_row, time_interleaved

PROTECTED = (64, 512)
QUICK_PROTECTED = (8, 16)  # --quick: the same cases, small enough for a smoke test
TRANSFORMER_PROTECTED, QUICK_TRANSFORMER_PROTECTED = 256, 8
ENERGY = 0.97
HEAVY_REPEATS = 3
# Targets: ratio to the plain step (the corrected step: to its uncorrected twin).
RATIO_GOALS = {"null_space_64": 10.0, "null_space_512": 250.0, "layer_subspace_512": 1.5}
CORRECTED_GOAL = 2.0
HALF_CORRECTED_GOAL = 3.0
CHECKS_GOAL = 1.05  # split_head's per-step checks: at most 5% of its step
RSS_GOAL_MB = 2048
TRANSFORMER_RSS_GOAL_MB, ATTACH_GOAL_STEPS, ESTIMATE_GOAL = 1228.8, 1.5, 2.0


def _fresh_process(case, n, threads):
    """Run `python -m selective_update.torch.bench_cases case n threads`; return its stdout."""
    out = subprocess.run([sys.executable, "-m", "selective_update.torch.bench_cases", case,
                          str(n), str(threads)], capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"bench helpers: the {case} process failed: {out.stderr[-500:]}")
    return out.stdout.strip().splitlines()[-1]


def peak_rss_mb(n, threads) -> float:
    """Run the n-input projector in a fresh process; return its peak RSS in MB."""
    return float(_fresh_process("cnn", n, threads).split()[-1])


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
        note = f"lr {bench_cases.LR:g}"
        steps = cases[name].gauss_newton_steps
        if steps:
            counts = ", ".join(f"{k} in {steps.count(k)}" for k in sorted(set(steps)))
            note += f"; Gauss-Newton steps per step: {counts} of {len(steps)} steps"
        if name == f"layer_subspace_{big}":
            note += f"; energy {ENERGY}"
        if name == "split_head_unchecked":
            note += "; split_head with its per-step checks off"
        row = _row(name, t, plain, facts, env, args, note)
        if name == f"null_space_{big}":
            row["peak_rss_mb"] = rss
        rows.append(row)
    rows += _half_rows(bench_cases, small, facts, env, args)
    rows += _transformer_rows(bench_cases, env, args)
    _goals(rows, small, big, args.quick)
    log("helpers: " + ", ".join(f"{r['strategy']} {r['median_s'] * 1e3:.3g} ms "
                                f"({r['ratio_to_plain']:.3g}x)" for r in rows)
        + f"; peak RSS of null_space_{big}: {rss:.0f} MB")
    return rows


def _row(name, seconds, plain, facts, env, args, note, dtype="float32"):
    n_ref = next((part for part in name.split("_") if part.isdigit()), "")
    row = measurement_row("helpers", "torch", name, (0, 0), 128, seconds, env, args, note=note)
    row.update(sizes=facts["sizes"], width="", n_params=facts["n_params"], n_ref=n_ref,
               device="cpu", dtype=dtype, ratio_to_plain=float(np.median(seconds)) / plain)
    return row


def _half_rows(bench_cases, n, facts, env, args) -> list:
    """The n-image projector in bfloat16 and float16, against a plain step of the same dtype."""
    cases = bench_cases.half_cases(n)
    seconds = time_interleaved(cases, args.repeats, warmup=WARMUP)
    rows = []
    for dtype in bench_cases.HALF_DTYPES:
        plain = float(np.median(seconds[f"plain_{dtype}"]))
        for name in (f"plain_{dtype}", f"null_space_{n}_{dtype}",
                     f"null_space_corrected_{n}_{dtype}"):
            note = f"lr {bench_cases.HALF_LR:g}" + (", Adam eps 1e-4" if dtype == "float16"
                                                    else "") + f"; ratio to plain_{dtype}"
            steps = cases[name].gauss_newton_steps
            if "corrected" in name:
                counts = ", ".join(f"{k} in {steps.count(k)}" for k in sorted(set(steps)))
                note += f"; Gauss-Newton steps per step: {counts or 'none'}"
            rows.append(_row(name, seconds[name], plain, facts, env, args, note, dtype))
    return rows


def _transformer_rows(bench_cases, env, args) -> list:
    """The Transformer case, measured in a fresh process (its own peak RSS)."""
    n = QUICK_TRANSFORMER_PROTECTED if args.quick else TRANSFORMER_PROTECTED
    got = json.loads(_fresh_process("transformer", n, args.threads))
    facts = bench_cases.transformer_facts()
    lr = f"lr {bench_cases.TRANSFORMER_LR:g}"
    estimate = (f"estimate {got['estimate_s']:.3g} s, {got['estimate_mb']:.0f} MB "
                f"({got['estimate_s'] / got['step_s']:.2f}x the measured step)")
    rows = []
    for name, seconds, note in [
            ("transformer_plain", got["plain_s"], lr),
            (f"transformer_attach_{n}", got["attach_s"],
             f"{lr}; NullSpaceProjector(...) and attach(): {got['attach_s'] / got['step_s']:.2f}"
             " steps"),
            (f"transformer_null_space_{n}", got["step_s"],
             f"{lr}; {got['constraints']:,} constraints; {estimate}")]:
        row = _row(name, [seconds], got["plain_s"], facts, env, args, note)
        rows.append(row)
    if not args.quick:
        plain, attach, step = rows
        attach["goal"] = f"<= {ATTACH_GOAL_STEPS:g} steps"
        attach["meets_goal"] = bool(got["attach_s"] <= ATTACH_GOAL_STEPS * got["step_s"])
        ratio = got["estimate_s"] / got["step_s"]
        step["goal"] = (f"peak RSS <= {TRANSFORMER_RSS_GOAL_MB / 1024:g} GB, estimate within "
                        f"{ESTIMATE_GOAL:g}x")
        step["meets_goal"] = bool(got["peak_rss_mb"] <= TRANSFORMER_RSS_GOAL_MB
                                  and 1 / ESTIMATE_GOAL <= ratio <= ESTIMATE_GOAL)
    rows[-1]["peak_rss_mb"] = got["peak_rss_mb"]
    return rows


def _goals(rows, small, big, quick):
    """Set goal and meets_goal on the CNN's and the half-precision rows (not in --quick)."""
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
    _twin_goal(by_name, f"null_space_corrected_{small}", f"null_space_{small}", CORRECTED_GOAL)
    _twin_goal(by_name, "split_head", "split_head_unchecked", CHECKS_GOAL)
    for name in list(by_name):
        if name.startswith("null_space_corrected_") and not name.rsplit("_", 1)[-1].isdigit():
            _twin_goal(by_name, name, name.replace("null_space_corrected_", "null_space_"),
                       HALF_CORRECTED_GOAL)


def _twin_goal(by_name, name, twin, goal):
    row, other = by_name.get(name), by_name.get(twin)
    if row is None or other is None:
        return
    row["goal"] = f"<= {goal:g}x {twin}"
    row["meets_goal"] = bool(row["median_s"] <= goal * other["median_s"])
