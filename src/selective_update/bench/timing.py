"""Time one optimizer step of each strategy against a plain step, in both frameworks.

The bench command (bench/cli.py) calls these; each framework is reached only through its public
surface (su.backend(name)): configure(threads), make_steps(strategies, ...). The Jacobian baseline
(project_step_jacobian, JacobianNullSpaceStep, projection_cases) and the device queries come from
torch/bench_jacobian.py and torch/device.py, imported when needed.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import time
from pathlib import Path

import numpy as np

from .. import core

FRAMEWORK_ORDER = ("torch", "tf1")
PARTS = ("table", "jacobian", "sweep", "beyond_batch", "memories", "helpers", "floor")
# Earlier names of parts, still accepted by --parts.
PART_ALIASES = {"reference": "beyond_batch"}
PLAIN = "all_params"
TABLE_SIZES = (((3, 4, 2), 8), ((64, 128, 10), 64), ((784, 512, 10), 32), ((784, 512, 10), 128))
SWEEP_IN, SWEEP_OUT = 784, 10
SWEEP_WIDTHS = (64, 128, 256, 512, 1024, 2048)  # 784-W-10 at batch SWEEP_WIDTH_BATCH
SWEEP_WIDTH_BATCH = 64
SWEEP_BATCHES = (8, 16, 32, 64, 128, 256, 512)  # 784-SWEEP_BATCH_WIDTH-10
SWEEP_BATCH_WIDTH = 512
SWEEP_STRATEGIES = (PLAIN, "null_space", "compensated_gradient")
KEEP, TRAIN = (0,), (1,)
LR = 1e-3  # small: null_space_corrected's Gauss-Newton loop takes its typical 1-3 iterations
WARMUP = 3
# The materialized Jacobian has batch * kept * params entries; beyond this many (160 MB in
# float64) one jacrev + pinv takes many seconds (784-512-10 at batch 128: ~27 s on one core).
JACOBIAN_MAX_ENTRIES = 20_000_000
JACOBIAN_REPEATS = 5  # table; the sweep's Jacobian points take min(--sweep-repeats, 3)
JACOBIAN_SWEEP_REPEATS = 3
GOALS = {"null_space": 2.5, "null_space_corrected": 5.0, "split_head": 1.05,
         "masked_last_layer": 1.05}
# compensated_gradient at 784-512-10, batch 128 only, x the plain step by threads.
COMPENSATED_SIZE = ("784-512-10", 128)
COMPENSATED_GOALS = {1: 1.4, 2: 1.3}
EXPECTED_SLOPES = {
    ("width", PLAIN): "1: O(B*P), P ~ (784 + 11) * W",
    ("width", "null_space"): "1: Gram O(B^2 (d_in + d_out)) per layer + O(B*P) for J v, J^T a",
    ("width", "projection_gram"): "1: as null_space, without the gradient",
    ("width", "projection_jacobian"): "1: O(B^2 * P) (jacrev: one full-batch backward per row; "
                                      "pinv of a B x P matrix)",
    ("width", "compensated_gradient"): "1: Gram O(B^2 (d_in + d_out)) per layer + one backward "
                                       "pass of G' (no J v, no J^T a)",
    ("batch", PLAIN): "1: O(B*P)",
    ("batch", "null_space"): "1, rising towards 2 once B^2 (d_in + d_out) ~ B*P (B ~ 220 here); "
                             "eigh of the B x B Gram adds O(B^3)",
    ("batch", "projection_gram"): "1 rising towards 2 (and 3 for eigh) as for null_space",
    ("batch", "compensated_gradient"): "1, rising towards 2 once B^2 (d_in + d_out) ~ B*P; the "
                                       "Cholesky of the B x B Gram adds O(B^3 / 3)",
    ("batch", "projection_jacobian"): "2: the issue's O(B*P) is the size of J; forming it by "
                                      "jacrev costs a full-batch backward per row, pinv O(B^2 P)",
}
CSV_COLUMNS = ("part", "framework", "strategy", "sizes", "width", "batch", "n_ref", "n_params",
               "median_s", "q1_s", "q3_s", "ratio_to_plain", "goal", "meets_goal", "repeats",
               "threads", "device", "dtype", "load_1m", "machine", "python", "numpy", "torch",
               "tensorflow", "peak_rss_mb", "note")


def machine() -> str:
    """Describe the CPU (and GPU when torch sees one) in one line."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {os.cpu_count()} logical CPUs"


def load() -> float:
    """Return the 1-minute load average (nan where the OS has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return float("nan")


def cuda_available() -> bool:
    """Say whether torch sees a CUDA device."""
    from ..torch import runner

    return runner.cuda_available()


def configure(threads, frameworks, device):
    """Pin the frameworks to `threads` (their configure()) and return the version columns."""
    import selective_update as su

    for framework in frameworks:
        su.backend(framework).configure(threads)
    env = dict(python=platform.python_version(), numpy=np.__version__,
               torch=importlib.metadata.version("torch"), tensorflow="", machine=machine(),
               threads=threads)
    if device == "cuda":
        from ..torch.runner import device_name

        env["machine"] += ", " + device_name()
    if "tf1" in frameworks:
        env["tensorflow"] = importlib.metadata.version("tensorflow")
    return env


def synthetic(sizes, batch, seed=0):
    """Return (params, Data) with random inputs and targets for an MLP of these widths."""
    rng = np.random.default_rng(seed)
    x, y = rng.random((batch, sizes[0])), rng.random((batch, sizes[-1]))
    data = core.Data(x, y, x[:min(batch, 4)], y[:min(batch, 4)])
    return core.init_params(sizes, seed=seed), data


def make_steps(framework, strategies, params, data, args, **options):
    """Return ({strategy: callable taking one step}, sync) from the framework's make_steps.

    options: keep, train (default KEEP, TRAIN) and run()'s strategy options (reference, ...).
    """
    import selective_update as su

    device = args.device if framework == "torch" else "cpu"
    options = {"keep": KEEP, "train": TRAIN, **options}
    return su.backend(framework).make_steps(
        strategies, params=params, data=data, optimizer="sgd", lr=LR, steps=1, dtype=args.dtype,
        device=device, **options)


def time_interleaved(steps, repeats, warmup=WARMUP, sync=None) -> dict:
    """Time each callable `repeats` times, interleaved (rotating order); return per-call seconds."""
    sync = sync or (lambda: None)
    names = list(steps)
    for name in names:
        for _ in range(warmup):
            steps[name]()
    sync()
    seconds = {name: [] for name in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            start = time.perf_counter()
            steps[name]()
            sync()
            seconds[name].append(time.perf_counter() - start)
    return seconds


def jacobian_entries(params, batch) -> int:
    """Entries of the kept outputs' Jacobian: batch * kept outputs * parameters."""
    return batch * len(KEEP) * core.n_params(params)


def measurement_row(part, framework, strategy, sizes, batch, seconds, env, args, note=""):
    """Return one bench.csv row: quartiles of the seconds and the set-up they were taken in."""
    seconds = np.asarray(seconds, dtype=float)
    q1, med, q3 = np.percentile(seconds, [25, 50, 75])
    return dict(part=part, framework=framework, strategy=strategy,
                sizes="-".join(map(str, sizes)), width=sizes[1], batch=batch, n_ref="",
                n_params=int(sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))),
                median_s=float(med), q1_s=float(q1), q3_s=float(q3), ratio_to_plain=float("nan"),
                goal="", meets_goal="", repeats=len(seconds), threads=env["threads"],
                device=args.device if framework == "torch" else "cpu", dtype=args.dtype,
                load_1m=load(), machine=env["machine"], python=env["python"],
                numpy=env["numpy"], torch=env["torch"], tensorflow=env["tensorflow"],
                peak_rss_mb="", note=note)


def bench_table(args, env, log) -> list:
    """Time every strategy and the plain step at each table size, in each framework."""
    rows = []
    for sizes, batch in args.sizes:
        params, data = synthetic(sizes, batch)
        for fw in (f for f in FRAMEWORK_ORDER if f in args.frameworks):
            steps, sync = make_steps(fw, args.strategies, params, data, args)
            seconds = time_interleaved(steps, args.repeats, sync=sync)
            for s in args.strategies:
                rows.append(measurement_row("table", fw, s, sizes, batch, seconds[s], env, args))
            if fw == "torch" and "jacobian" in args.parts:
                rows += _jacobian_step(params, data, sizes, batch, args, env, log)
            log(f"{fw:5s} {'-'.join(map(str, sizes))}/{batch}: "
                + ", ".join(f"{r['strategy']} {r['median_s'] * 1e3:.3g} ms" for r in rows
                            if r["framework"] == fw and r["sizes"] == "-".join(map(str, sizes))
                            and r["batch"] == batch))
    return rows


def _jacobian_step(params, data, sizes, batch, args, env, log) -> list:
    entries = jacobian_entries(params, batch)
    if entries > JACOBIAN_MAX_ENTRIES:
        log(f"jacobian {'-'.join(map(str, sizes))}/{batch}: skipped ({entries:,} Jacobian entries "
            f"> {JACOBIAN_MAX_ENTRIES:,})")
        return []
    from ..torch import bench_jacobian

    _, sync = make_steps("torch", (PLAIN,), params, data, args)
    step = bench_jacobian.JacobianNullSpaceStep(params, data, keep=KEEP, train=TRAIN, lr=LR,
                                                dtype=args.dtype, device=args.device,
                                                project=bench_jacobian.project_step_jacobian)
    seconds = time_interleaved({"jacobian": step}, min(args.repeats, JACOBIAN_REPEATS), warmup=1,
                               sync=sync)
    return [measurement_row("table", "torch", "null_space_jacobian", sizes, batch,
                            seconds["jacobian"], env, args,
                            note="null_space step, projection by torch.func.jacrev + pinv")]


def bench_sweep(args, env, log) -> list:
    """Sweep width and batch: null_space vs plain steps, and the projection alone."""
    from ..torch import bench_jacobian

    points = [("sweep_width", (SWEEP_IN, w, SWEEP_OUT), SWEEP_WIDTH_BATCH) for w in args.widths]
    points += [("sweep_batch", (SWEEP_IN, SWEEP_BATCH_WIDTH, SWEEP_OUT), b) for b in args.batches]
    rows = []
    for part, sizes, batch in points:
        params, data = synthetic(sizes, batch)
        for fw in (f for f in FRAMEWORK_ORDER if f in args.frameworks):
            steps, sync = make_steps(fw, SWEEP_STRATEGIES, params, data, args)
            seconds = time_interleaved(steps, args.sweep_repeats, warmup=1, sync=sync)
            rows += [measurement_row(part, fw, s, sizes, batch, seconds[s], env, args)
                     for s in SWEEP_STRATEGIES]
            if fw != "torch":
                continue
            jac = jacobian_entries(params, batch) <= JACOBIAN_MAX_ENTRIES
            cases = bench_jacobian.projection_cases(params, data, keep=KEEP, dtype=args.dtype,
                                                    device=args.device, jacobian=False)
            seconds = time_interleaved(cases, args.sweep_repeats, warmup=1, sync=sync)
            if jac:
                cases = bench_jacobian.projection_cases(
                    params, data, keep=KEEP, dtype=args.dtype, device=args.device, jacobian=True)
                del cases["projection_gram"]
                seconds.update(time_interleaved(cases, min(args.sweep_repeats,
                                                           JACOBIAN_SWEEP_REPEATS),
                                                warmup=1, sync=sync))
            rows += [measurement_row(part, fw, name, sizes, batch, t, env, args,
                                     note="projection only") for name, t in seconds.items()]
        log(f"{part} {'-'.join(map(str, sizes))}/{batch}: "
            + ", ".join(f"{r['framework']} {r['strategy']} {r['median_s'] * 1e3:.3g} ms"
                        for r in rows if r["part"] == part and r["batch"] == batch
                        and r["sizes"] == "-".join(map(str, sizes))))
    return rows


def add_ratios(rows):
    """Fill ratio_to_plain (same part, framework, size and batch; projections: torch's plain)."""
    plain = {(r["part"], r["framework"], r["sizes"], r["batch"]): r["median_s"]
             for r in rows if r["strategy"] == PLAIN}
    for r in rows:
        base = plain.get((r["part"], r["framework"], r["sizes"], r["batch"]))
        if base and np.isnan(r["ratio_to_plain"]):  # a part may have set its own (beyond_batch)
            r["ratio_to_plain"] = r["median_s"] / base
        goal = goal_for(r)
        if goal and r["part"] == "table" and base:
            r["goal"] = f"<= {goal:g}x"
            r["meets_goal"] = bool(r["ratio_to_plain"] <= goal)
    return rows


def goal_for(row):
    """Return a table row's goal (x the plain step), or None where none is set."""
    if row["strategy"] == "compensated_gradient":
        if (row["sizes"], int(row["batch"])) != COMPENSATED_SIZE:
            return None
        return COMPENSATED_GOALS.get(int(row["threads"]))
    return GOALS.get(row["strategy"])


def _fit(xs, ts):
    return float(np.polyfit(xs, ts, 1)[0]) if len(xs) >= 2 else float("nan")


def slopes(rows) -> list:
    """Fit log(time) = slope * log(width or batch) per sweep series: all points and the last 3."""
    out = []
    for part, axis in (("sweep_width", "width"), ("sweep_batch", "batch")):
        series = {}
        for r in rows:
            if r["part"] == part:
                series.setdefault((r["framework"], r["strategy"]), []).append(
                    (r[axis], r["median_s"]))
        for (fw, s), pts in series.items():
            pts = sorted(pts)
            xs, ts = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
            out.append(dict(axis=axis, framework=fw, series=s, points=len(pts),
                            range=f"{pts[0][0]}..{pts[-1][0]}",
                            slope_all=round(_fit(xs, ts), 2),
                            slope_last3=round(_fit(xs[-3:], ts[-3:]), 2),
                            expected=EXPECTED_SLOPES.get((axis, s), "")))
    return out
