"""The `bench` command: median time of one optimizer step of every strategy, both frameworks.

    python -m selective_update bench [--out reports] [--quick] [--threads T] [--repeats N] ...

Parts (`--parts`, default all of them):
  table     one step of each strategy and of the plain step (all_params, sgd) at the issue's sizes,
            torch (`_Trainer.step`) and tf1 (one `session.run` of the step op, data fed through
            placeholders), strategies interleaved repeat by repeat, medians of time.perf_counter;
  jacobian  the null_space step with the materialized-Jacobian projection (torch.func.jacrev +
            pinv) in place of the layer-wise Gram form, where the Jacobian stays small;
  sweep     width (784-W-10, batch 64) and batch (784-512-10) sweeps of null_space vs plain, and
            of the projection alone (Gram vs Jacobian), log-log figures and measured slopes;
  floor     the study's default grid computed in one fresh plain Python process by calling
            selective_update.run directly (no notebooks): the floor `make study` is compared with.

Writes reports/bench.csv, reports/bench.html (self-contained) and reports/figures/bench_*.png.
torch, tensorflow, pandas and matplotlib are imported inside functions only: the CLI imports every
command module to build its parser.
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import html
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from . import core, report

FRAMEWORK_ORDER = ("torch", "tf1")
PARTS = ("table", "jacobian", "sweep", "floor")
PLAIN = "all_params"
TABLE_SIZES = (((3, 4, 2), 8), ((64, 128, 10), 64), ((784, 512, 10), 32), ((784, 512, 10), 128))
SWEEP_IN, SWEEP_OUT = 784, 10
SWEEP_WIDTHS = (64, 128, 256, 512, 1024, 2048)  # 784-W-10 at batch SWEEP_WIDTH_BATCH
SWEEP_WIDTH_BATCH = 64
SWEEP_BATCHES = (8, 16, 32, 64, 128, 256, 512)  # 784-SWEEP_BATCH_WIDTH-10
SWEEP_BATCH_WIDTH = 512
SWEEP_STRATEGIES = (PLAIN, "null_space")
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
# The study's default grid (issue 3), measured as one plain process: the floor for `make study`.
FLOOR_GRID = dict(datasets=("toy", "digits"), frameworks=("tf1", "torch"),
                  optimizers=core.OPTIMIZERS, weight_decays=(0.0, 0.01), warm_start_steps=(0, 2),
                  seeds=(0, 1), steps=5, lr=0.1)
FLOOR_TAG = "BENCH_FLOOR_JSON "
EXPECTED_SLOPES = {
    ("width", PLAIN): "1: O(B*P), P ~ (784 + 11) * W",
    ("width", "null_space"): "1: Gram O(B^2 (d_in + d_out)) per layer + O(B*P) for J v, J^T a",
    ("width", "projection_gram"): "1: as null_space, without the gradient",
    ("width", "projection_jacobian"): "1: O(B^2 * P) (jacrev: one full-batch backward per row; "
                                      "pinv of a B x P matrix)",
    ("batch", PLAIN): "1: O(B*P)",
    ("batch", "null_space"): "1, rising towards 2 once B^2 (d_in + d_out) ~ B*P (B ~ 220 here); "
                             "eigh of the B x B Gram adds O(B^3)",
    ("batch", "projection_gram"): "1 rising towards 2 (and 3 for eigh) as for null_space",
    ("batch", "projection_jacobian"): "2: the issue's O(B*P) is the size of J; forming it by "
                                      "jacrev costs a full-batch backward per row, pinv O(B^2 P)",
}
CSV_COLUMNS = ("part", "framework", "strategy", "sizes", "width", "batch", "n_params",
               "median_s", "q1_s", "q3_s", "ratio_to_plain", "goal", "meets_goal", "repeats",
               "threads", "device", "dtype", "load_1m", "machine", "python", "numpy", "torch",
               "tensorflow", "note")


# --- options ----------------------------------------------------------------------------------

def _int_list(text):
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"got {text!r}; allowed: comma-separated integers >= 1, "
                                         "e.g. 64,128,256")
    return values


def _size_list(text):
    """Parse '3-4-2/8,784-512-10/128' into (((3, 4, 2), 8), ((784, 512, 10), 128))."""
    allowed = ("comma-separated WIDTHS/BATCH with at least 3 widths >= 1, 2+ outputs and a batch "
               ">= 1, e.g. 3-4-2/8,784-512-10/128")
    cases = []
    for item in text.split(","):
        try:
            widths, batch = item.split("/")
            sizes, batch = tuple(int(w) for w in widths.split("-")), int(batch)
        except ValueError:
            raise argparse.ArgumentTypeError(f"got {item!r}; allowed: {allowed}") from None
        if len(sizes) < 3 or min(sizes) < 1 or sizes[-1] < 2 or batch < 1:
            raise argparse.ArgumentTypeError(f"got {item!r}; allowed: {allowed}")
        cases.append((sizes, batch))
    return tuple(cases)


def _choice_list(allowed):
    def parse(text):
        values = tuple(dict.fromkeys(v.strip() for v in text.split(",")))
        bad = [v for v in values if v not in allowed]
        if bad or not values:
            raise argparse.ArgumentTypeError(f"got {text!r}; allowed: a comma-separated subset of "
                                             + ", ".join(allowed))
        return values
    return parse


def add_arguments(parser):
    """Declare the command's options (usage errors exit 2 before any work)."""
    parser.add_argument("--out", default="reports",
                        help="folder for bench.csv, bench.html and figures/ (default reports)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny smoke (CI): smallest size, 1 repeat, parts table,jacobian")
    parser.add_argument("--sizes", type=_size_list, default=None,
                        help="table sizes as WIDTHS/BATCH list (default "
                             + ",".join("-".join(map(str, s)) + f"/{b}" for s, b in TABLE_SIZES)
                             + ")")
    parser.add_argument("--repeats", type=core.positive_int_option, default=None,
                        help="timed steps per case; medians are reported (default 21, quick 1)")
    parser.add_argument("--sweep-repeats", type=core.positive_int_option, default=7,
                        help="timed steps per sweep point (default 7)")
    parser.add_argument("--threads", type=core.positive_int_option, default=1,
                        help="torch.set_num_threads and tf1 session intra-op threads (default 1)")
    parser.add_argument("--frameworks", type=_choice_list(FRAMEWORK_ORDER),
                        default=FRAMEWORK_ORDER, help="comma-separated subset of torch,tf1")
    parser.add_argument("--strategies", type=_choice_list(tuple(core.STRATEGIES)),
                        default=tuple(core.STRATEGIES),
                        help="comma-separated strategies (all_params is always timed: the plain "
                             "step every ratio divides by)")
    parser.add_argument("--parts", type=_choice_list(PARTS), default=None,
                        help="comma-separated subset of " + ",".join(PARTS)
                             + " (default all; quick: table,jacobian)")
    parser.add_argument("--study-floor", action="store_true",
                        help="only measure the study floor (same as --parts floor)")
    parser.add_argument("--floor-threads", type=int, default=1, metavar="N",
                        help="threads of the study-floor process: N >= 1 pins torch and tf1 to N "
                             "(default 1, as the study's workers); 0 keeps framework defaults")
    parser.add_argument("--widths", type=_int_list, default=SWEEP_WIDTHS,
                        help=f"sweep widths W of {SWEEP_IN}-W-{SWEEP_OUT} at batch "
                             f"{SWEEP_WIDTH_BATCH}")
    parser.add_argument("--batches", type=_int_list, default=SWEEP_BATCHES,
                        help=f"sweep batches of {SWEEP_IN}-{SWEEP_BATCH_WIDTH}-{SWEEP_OUT}")
    parser.add_argument("--device", choices=core.DEVICES, default="cpu",
                        help="cpu | cuda (cuda: torch only, so with --frameworks torch)")
    parser.add_argument("--dtype", choices=core.DTYPES, default="float64",
                        help="float64 (default, the study's) | float32")
    parser.set_defaults(bench_parser=parser)


def _resolve(args):
    """Apply --quick/--study-floor defaults and check option combinations (exit 2 on error)."""
    error = args.bench_parser.error if hasattr(args, "bench_parser") else _exit_usage
    if args.study_floor and args.parts is not None and args.parts != ("floor",):
        error("--study-floor: measures only the floor; allowed: without --parts, or --parts floor")
    if args.floor_threads < 0:
        error(f"--floor-threads: got {args.floor_threads}; allowed: 0 (framework defaults) or an "
              "integer >= 1")
    if args.study_floor:
        args.parts = ("floor",)
    if args.parts is None:
        args.parts = ("table", "jacobian") if args.quick else PARTS
    if args.sizes is None:
        args.sizes = TABLE_SIZES[:1] if args.quick else TABLE_SIZES
    if args.repeats is None:
        args.repeats = 1 if args.quick else 21
    if args.quick:
        args.sweep_repeats = 1
    args.strategies = tuple(dict.fromkeys((PLAIN,) + tuple(args.strategies)))
    if args.device == "cuda":
        if tuple(args.frameworks) != ("torch",):
            error(f"--device: cuda with --frameworks {','.join(args.frameworks)}; allowed: cpu, "
                  "or cuda with --frameworks torch (tf1 runs on cpu)")
        if "floor" in args.parts:
            error("--device: cuda with part floor; allowed: cpu for the study floor")
        import torch
        if not torch.cuda.is_available():
            error("--device: cuda, but torch sees no CUDA device here; allowed: cpu")
    if "jacobian" in args.parts and "torch" not in args.frameworks:
        args.parts = tuple(p for p in args.parts if p != "jacobian")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        error(f"--out: {out} is a file; allowed: a folder")
    parent = out
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK):
        error(f"--out: {out} cannot be written; allowed: a writable folder")
    return args


def _exit_usage(message):
    print(f"python -m selective_update bench: error: {message}", file=sys.stderr)
    raise SystemExit(2)


# --- environment --------------------------------------------------------------------------------

def machine() -> str:
    """Describe the CPU (and GPU when torch sees one) in one line."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {os.cpu_count()} logical CPUs"


def _load() -> float:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return float("nan")


def _configure(threads, frameworks, device):
    """Pin both frameworks to `threads` and return the version/device columns."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import torch

    from . import torch as su_torch

    torch.set_num_threads(threads)
    su_torch._setup()  # what run() does: deterministic algorithms
    env = dict(python=platform.python_version(), numpy=np.__version__,
               torch=torch.__version__, tensorflow="", machine=machine(), threads=threads)
    if device == "cuda":
        env["machine"] += ", " + torch.cuda.get_device_name(0)
    if "tf1" in frameworks:
        import tensorflow as tf

        from . import tf1
        tf1.THREADS = threads
        env["tensorflow"] = tf.__version__
    return env


# --- timing -----------------------------------------------------------------------------------

def synthetic(sizes, batch, seed=0):
    """Return (params, Data) with random inputs and targets for an MLP of these widths."""
    rng = np.random.default_rng(seed)
    x, y = rng.random((batch, sizes[0])), rng.random((batch, sizes[-1]))
    data = core.Data(x, y, x[:min(batch, 4)], y[:min(batch, 4)])
    return core.init_params(sizes, seed=seed), data


def _cfg(strategy, framework, params, data, args):
    return core.check_run(strategy, framework, params=params, data=data, keep=KEEP, train=TRAIN,
                          optimizer="sgd", lr=LR, steps=1, dtype=args.dtype,
                          device=args.device if framework == "torch" else "cpu", warn=False)


def torch_steps(strategies, params, data, args) -> dict:
    """Return {strategy: zero-argument callable taking one torch step}, one trainer each."""
    from . import torch as su_torch

    steps, sync = {}, None
    for s in strategies:
        trainer = su_torch._Trainer(_cfg(s, "torch", params, data, args),
                                    split=core.STRATEGIES[s].trains == "train_heads")
        steps[s] = (lambda t=trainer, s=s: t.step(s))
        sync = trainer.sync
    return steps, sync


def tf1_steps(strategies, params, data, args) -> dict:
    """Return {strategy: callable running the step op once}; split_head gets its own graph."""
    from . import tf1

    steps = {}
    cfg = _cfg(PLAIN, "tf1", params, data, args)
    groups = [tuple(s for s in strategies if core.STRATEGIES[s].trains != "train_heads"),
              tuple(s for s in strategies if core.STRATEGIES[s].trains == "train_heads")]
    for group in groups:
        if not group:
            continue
        g = tf1.graph_for(group, cfg)
        g.reset(params)
        feed = {g.x: data.x, g.y: data.y, g.lr: LR, g.weight_decay: 0.0}
        for s in group:
            steps[s] = (lambda g=g, op=g.ops[s], feed=feed: g.sess.run(op, feed))
    return steps, None


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


class ReferenceNullSpaceStep:
    """One torch null_space step (masked loss, sgd, project, apply) with a given projection.

    Built from public pieces only (nullspace.forward, make_optimizer, project_step[_jacobian]),
    so the Jacobian reference does not depend on how _Trainer.step is written.
    """

    def __init__(self, params, data, args, project):
        import torch

        from . import nullspace, torch as su_torch
        dt = getattr(torch, args.dtype)

        def leaf(a):
            return torch.tensor(np.asarray(a), dtype=dt, device=args.device, requires_grad=True)

        L = core.n_layers(params)
        self.Ws = [leaf(params[f"W{l}"]) for l in range(1, L + 1)]
        self.bs = [leaf(params[f"b{l}"]) for l in range(1, L + 1)]
        self.x = torch.as_tensor(data.x, dtype=dt, device=args.device)
        self.y = torch.as_tensor(data.y, dtype=dt, device=args.device)
        self.mask = torch.as_tensor(core.train_mask(data.y.shape[1], TRAIN), dtype=dt,
                                    device=args.device)
        self.opt = su_torch.make_optimizer("sgd", self.Ws + self.bs, LR, 0.0)
        self.forward = lambda: nullspace.forward(su_torch, self.Ws, self.bs, self.x)
        self.project, self.torch = project, torch

    def __call__(self):
        torch = self.torch
        _, out = self.forward()
        params = self.Ws + self.bs
        grads = torch.autograd.grad(((self.mask * (out - self.y)) ** 2).mean(), params)
        for p, g in zip(params, grads):
            p.grad = g
        with torch.no_grad():
            old = [p.clone() for p in params]
            self.opt.step()
            L = len(self.Ws)
            steps = [p - o for p, o in zip(params, old)]
            dWs, dbs = self.project(old[:L], old[L:], self.x, KEEP, steps[:L], steps[L:])
            for p, o, d in zip(params, old, dWs + dbs):
                p.copy_(o + d)


def jacobian_entries(params, batch) -> int:
    """Entries of the kept outputs' Jacobian: batch * kept outputs * parameters."""
    return batch * len(KEEP) * core.n_params(params)


def _row(part, framework, strategy, sizes, batch, seconds, env, args, note=""):
    seconds = np.asarray(seconds, dtype=float)
    q1, med, q3 = np.percentile(seconds, [25, 50, 75])
    return dict(part=part, framework=framework, strategy=strategy,
                sizes="-".join(map(str, sizes)), width=sizes[1], batch=batch,
                n_params=int(sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))),
                median_s=float(med), q1_s=float(q1), q3_s=float(q3), ratio_to_plain=float("nan"),
                goal="", meets_goal="", repeats=len(seconds), threads=env["threads"],
                device=args.device if framework == "torch" else "cpu", dtype=args.dtype,
                load_1m=_load(), machine=env["machine"], python=env["python"],
                numpy=env["numpy"], torch=env["torch"], tensorflow=env["tensorflow"], note=note)


def bench_table(args, env, log) -> list:
    """Time every strategy and the plain step at each table size, in each framework."""
    rows = []
    for sizes, batch in args.sizes:
        params, data = synthetic(sizes, batch)
        for fw in (f for f in FRAMEWORK_ORDER if f in args.frameworks):
            make = torch_steps if fw == "torch" else tf1_steps
            steps, sync = make(args.strategies, params, data, args)
            seconds = time_interleaved(steps, args.repeats, sync=sync)
            for s in args.strategies:
                rows.append(_row("table", fw, s, sizes, batch, seconds[s], env, args))
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
    from . import torch as su_torch

    _, sync = torch_steps((PLAIN,), params, data, args)
    step = ReferenceNullSpaceStep(params, data, args, su_torch.project_step_jacobian)
    seconds = time_interleaved({"jacobian": step}, min(args.repeats, JACOBIAN_REPEATS), warmup=1,
                               sync=sync)
    return [_row("table", "torch", "null_space_jacobian", sizes, batch, seconds["jacobian"], env,
                 args, note="null_space step, projection by torch.func.jacrev + pinv")]


def projection_cases(params, data, args, jacobian):
    """Return {name: callable} projecting a random step with the Gram form (and the Jacobian)."""
    import torch

    from . import core as _core, torch as su_torch
    dt = getattr(torch, args.dtype)
    L = _core.n_layers(params)
    Ws = [torch.as_tensor(params[f"W{l}"], dtype=dt, device=args.device) for l in range(1, L + 1)]
    bs = [torch.as_tensor(params[f"b{l}"], dtype=dt, device=args.device) for l in range(1, L + 1)]
    x = torch.as_tensor(data.x, dtype=dt, device=args.device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    dWs = [1e-3 * torch.randn(W.shape, generator=gen, dtype=dt).to(args.device) for W in Ws]
    dbs = [1e-3 * torch.randn(b.shape, generator=gen, dtype=dt).to(args.device) for b in bs]
    cases = {"projection_gram": lambda: su_torch.project_step(Ws, bs, x, KEEP, dWs, dbs)}
    if jacobian:
        cases["projection_jacobian"] = \
            lambda: su_torch.project_step_jacobian(Ws, bs, x, KEEP, dWs, dbs)
    return cases


def bench_sweep(args, env, log) -> list:
    """Sweep width and batch: null_space vs plain steps, and the projection alone."""
    points = [("sweep_width", (SWEEP_IN, w, SWEEP_OUT), SWEEP_WIDTH_BATCH) for w in args.widths]
    points += [("sweep_batch", (SWEEP_IN, SWEEP_BATCH_WIDTH, SWEEP_OUT), b) for b in args.batches]
    rows = []
    for part, sizes, batch in points:
        params, data = synthetic(sizes, batch)
        for fw in (f for f in FRAMEWORK_ORDER if f in args.frameworks):
            make = torch_steps if fw == "torch" else tf1_steps
            steps, sync = make(SWEEP_STRATEGIES, params, data, args)
            seconds = time_interleaved(steps, args.sweep_repeats, warmup=1, sync=sync)
            rows += [_row(part, fw, s, sizes, batch, seconds[s], env, args)
                     for s in SWEEP_STRATEGIES]
            if fw != "torch":
                continue
            jac = jacobian_entries(params, batch) <= JACOBIAN_MAX_ENTRIES
            cases = projection_cases(params, data, args, jacobian=False)
            seconds = time_interleaved(cases, args.sweep_repeats, warmup=1, sync=sync)
            if jac:
                cases = projection_cases(params, data, args, jacobian=True)
                del cases["projection_gram"]
                seconds.update(time_interleaved(cases, min(args.sweep_repeats,
                                                           JACOBIAN_SWEEP_REPEATS),
                                                warmup=1, sync=sync))
            rows += [_row(part, fw, name, sizes, batch, t, env, args, note="projection only")
                     for name, t in seconds.items()]
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
        if base:
            r["ratio_to_plain"] = r["median_s"] / base
        goal = GOALS.get(r["strategy"])
        if goal and r["part"] == "table" and base:
            r["goal"] = f"<= {goal:g}x"
            r["meets_goal"] = bool(r["ratio_to_plain"] <= goal)
    return rows


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
            fit = (lambda a, b: float(np.polyfit(a, b, 1)[0]) if len(a) >= 2 else float("nan"))
            out.append(dict(axis=axis, framework=fw, series=s, points=len(pts),
                            range=f"{pts[0][0]}..{pts[-1][0]}",
                            slope_all=round(fit(xs, ts), 2),
                            slope_last3=round(fit(xs[-3:], ts[-3:]), 2),
                            expected=EXPECTED_SLOPES.get((axis, s), "")))
    return out


# --- the study's floor --------------------------------------------------------------------------

def study_floor_grid(grid=None, threads=0) -> dict:
    """Compute the study's own grids (study.run_grid, no notebooks) in this process; time them.

    The same work as the strategy notebooks' computation cells: every run, the lr/2 runs of the
    first-order check and the lr sweep; no kernels, figures or HTML.
    threads: 0 keeps each framework's default thread count; N >= 1 pins torch and tf1 to N.
    """
    import warnings

    t0 = time.perf_counter()
    import selective_update as su
    from selective_update import study
    grid = grid or FLOOR_GRID
    for fw in grid["frameworks"]:
        module = su.backend(fw)
        if threads and fw == "tf1":
            module.THREADS = threads
        if threads and fw == "torch":
            import torch
            torch.set_num_threads(threads)
    times = {"import_s": time.perf_counter() - t0}
    rows = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for dataset in grid["datasets"]:
            t = time.perf_counter()
            for strategy in core.STRATEGIES:
                cfg = study.check_params(strategy=strategy, dataset=dataset, **study.DEFAULT_GRID)
                rows += len(study.run_grid(cfg).rows)
            times[f"{dataset}_s"] = time.perf_counter() - t
    times["runs"] = rows // (study.DEFAULT_GRID["steps"] + 1)  # main runs; each has steps+1 rows
    times["in_process_s"] = time.perf_counter() - t0
    return times


def _floor_child(threads=0):
    """Entry point of the fresh process that measures the floor; prints one JSON line."""
    print(FLOOR_TAG + json.dumps(study_floor_grid(threads=threads)), flush=True)


def bench_floor(args, env, log) -> tuple:
    """Run the study grid in a fresh Python process (--floor-threads; 1 like the study's workers)."""
    code = f"from selective_update.bench import _floor_child; _floor_child({args.floor_threads})"
    environ = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    load = _load()
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=environ)
    wall = time.perf_counter() - start
    lines = [line for line in proc.stdout.splitlines() if line.startswith(FLOOR_TAG)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError("study floor process failed:\n" + proc.stderr[-3000:])
    parts = json.loads(lines[-1][len(FLOOR_TAG):])
    g = FLOOR_GRID
    grid = (f"{len(core.STRATEGIES)} strategies x {'/'.join(g['datasets'])} x "
            f"{'/'.join(g['frameworks'])} x {len(g['optimizers'])} optimizers x wd "
            f"{'/'.join(map(str, g['weight_decays']))} x warm "
            f"{'/'.join(map(str, g['warm_start_steps']))} x {len(g['seeds'])} seeds, "
            f"{g['steps']} steps, lr {g['lr']}: {parts['runs']} runs plus the study's lr/2 and "
            "lr-sweep runs, by study.run_grid")
    note = (f"{grid}; wall of one fresh process (interpreter start included); "
            + ", ".join(f"{k} {v:.2f}" for k, v in parts.items() if k.endswith("_s")))
    row = dict(part="study_floor", framework="+".join(g["frameworks"]), strategy="all",
               sizes="toy 3-4-2/8 + digits 64-16-10/32", width="", batch="", n_params="",
               median_s=wall, q1_s=wall, q3_s=wall, ratio_to_plain=float("nan"), goal="",
               meets_goal="", repeats=1, threads=args.floor_threads or "default",
               device="cpu", dtype="float64",
               load_1m=load, machine=env["machine"], python=env["python"], numpy=env["numpy"],
               torch=env["torch"], tensorflow=env["tensorflow"], note=note)
    log(f"study floor: {wall:.1f} s wall ({note})")
    return row, parts


# --- writing ------------------------------------------------------------------------------------

def _png(fig) -> bytes:
    import io
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def figures(frame) -> dict:
    """Draw the ratio bars and the log-log sweeps; return {file name: PNG bytes}."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker as ticker
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook")
    pngs = {}
    table = frame[(frame.part == "table") & (frame.strategy != PLAIN)].copy()
    if len(table):
        table["case"] = table.sizes + "/" + table.batch.astype(str)
        g = sns.catplot(data=table, kind="strip", x="ratio_to_plain", y="strategy",
                        hue="framework", col="case", col_wrap=min(4, table.case.nunique()),
                        height=3.6, aspect=1.0, sharex=True, jitter=False, dodge=True, size=8,
                        order=[s for s in list(core.STRATEGIES) + ["null_space_jacobian"]
                               if s in set(table.strategy)])
        for ax in g.axes.flat:
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 3.0)))
            ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(ticker.NullFormatter())
            ax.tick_params(axis="x", labelrotation=45)
            ax.axvline(1.0, color="black", lw=0.8)
            for goal, style in ((1.05, ":"), (2.5, "--"), (5.0, "-.")):
                ax.axvline(goal, color="grey", lw=0.8, ls=style)
        g.set_axis_labels("ratio to the plain step (log)", "")
        g.figure.suptitle("Step cost relative to the plain step (all_params, sgd); black: 1, "
                          "grey: goals 1.05, 2.5, 5", y=1.03)
        pngs["bench_ratios.png"] = _png(g.figure)
        plt.close(g.figure)
    for part, axis, title in (("sweep_width", "width",
                               f"{SWEEP_IN}-W-{SWEEP_OUT}, batch {SWEEP_WIDTH_BATCH}"),
                              ("sweep_batch", "batch",
                               f"{SWEEP_IN}-{SWEEP_BATCH_WIDTH}-{SWEEP_OUT}")):
        sweep = frame[frame.part == part].copy()
        if not len(sweep):
            continue
        sweep["series"] = sweep.framework + " " + sweep.strategy
        fig, ax = plt.subplots(figsize=(7.5, 4.8))
        sns.lineplot(data=sweep, x=axis, y="median_s", hue="strategy", style="framework",
                     markers=True, dashes=True, ax=ax)
        plain = sweep[sweep.strategy == PLAIN].sort_values(axis)
        if len(plain) >= 2:  # guides through the plain step's first point
            x0, t0 = float(plain[axis].iloc[0]), float(plain.median_s.iloc[0])
            xs = np.array([x0, float(sweep[axis].max())])
            for slope, style in ((1, ":"), (2, "--")):
                ax.plot(xs, t0 * (xs / x0) ** slope, color="grey", lw=0.9, ls=style,
                        label=f"slope {slope}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(f"{axis} (log)")
        ax.set_ylabel("median seconds per call (log)")
        ax.set_title(f"Scaling in {axis}: {title}")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
        pngs[f"bench_{part}.png"] = _png(fig)
        plt.close(fig)
    return pngs


def goal_table(frame):
    """Pivot the table part: one row per size/batch, one column per framework x strategy ratio."""
    import pandas as pd

    table = frame[(frame.part == "table") & (frame.strategy != PLAIN)]
    if not len(table):
        return pd.DataFrame()
    rows = []
    for (sizes, batch), group in table.groupby(["sizes", "batch"], sort=False):
        row = {"network": sizes, "batch": batch}
        for fw in FRAMEWORK_ORDER:
            plain = frame[(frame.part == "table") & (frame.framework == fw)
                          & (frame.sizes == sizes) & (frame.batch == batch)
                          & (frame.strategy == PLAIN)]
            if len(plain):
                row[f"{fw} plain ms"] = f"{plain.median_s.iloc[0] * 1e3:.3g}"
            for _, r in group[group.framework == fw].iterrows():
                mark = ""
                if r.goal:
                    mark = " ok" if r.meets_goal else " MISSED"
                row[f"{fw} {r.strategy}"] = f"{r.ratio_to_plain:.2f}x{mark}"
        rows.append(row)
    return pd.DataFrame(rows).fillna("-")


def write_reports(out, rows, slope_rows, args, env, notes, floor):
    """Write bench.csv, figures/bench_*.png and a self-contained bench.html, atomically."""
    import pandas as pd

    out = Path(out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(rows, columns=list(CSV_COLUMNS))
    report.atomic_write(out / "bench.csv", frame.to_csv(index=False, lineterminator="\n").encode())
    pngs = figures(frame)
    for name, data in pngs.items():
        report.atomic_write(out / "figures" / name, data)

    def section(title, body):
        return f"<h2>{html.escape(title)}</h2>\n{body}\n"

    def img(name):
        return (f'<p><img alt="{name}" src="data:image/png;base64,'
                f'{base64.b64encode(pngs[name]).decode()}"></p>') if name in pngs else ""

    meta = [("machine", env["machine"]), ("threads", f"{env['threads']} (torch.set_num_threads "
             "and tf1 session intra-op threads; inter-op 1)"), ("device", args.device),
            ("GPU", "torch device " + args.device if args.device == "cuda" else
             "none: no GPU on this machine; the bench ran on CPU only"),
            ("dtype", args.dtype), ("optimizer", f"sgd, lr {LR:g}, keep {KEEP}, train {TRAIN}"),
            ("repeats", f"{args.repeats} per case (median; Jacobian {JACOBIAN_REPEATS}, sweep "
                        f"{args.sweep_repeats}, sweep Jacobian {JACOBIAN_SWEEP_REPEATS}), "
                        f"warm-up {WARMUP}"),
            ("versions", f"python {env['python']}, numpy {env['numpy']}, torch {env['torch']}, "
                         f"tensorflow {env['tensorflow'] or '-'}"),
            ("finished", datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")),
            ("load average (1 min)",
             f"{min(r['load_1m'] for r in rows)} to {max(r['load_1m'] for r in rows)} while "
             "measuring (column load_1m): the CPU may be shared, so absolute times are noisy; "
             "ratios are of steps interleaved under the same load")]
    body = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
            "<title>selective-update: bench</title>",
            "<style>body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
            "table{border-collapse:collapse;font-size:0.85em}td,th{border:1px solid #ccc;"
            "padding:2px 6px;text-align:right}img{max-width:100%}</style></head><body>",
            "<h1>Per-step cost of each strategy</h1>",
            "<table>" + "".join(f"<tr><th>{html.escape(k)}</th><td style='text-align:left'>"
                                f"{html.escape(str(v))}</td></tr>" for k, v in meta) + "</table>",
            "<p>Goals: null_space &le; 2.5&times; the plain step (all_params, sgd), "
            "null_space_corrected &le; 5&times;, split_head and masked_last_layer &le; 1.05&times;."
            " Medians of one step each, strategies interleaved repeat by repeat. torch: "
            "<code>_Trainer.step</code>; tf1: one <code>session.run</code> of the step op with x, y "
            "fed through placeholders. null_space_jacobian: the torch null_space step with the "
            "projection done by torch.func.jacrev + pinv (the slow reference).</p>"]
    goals = goal_table(frame)
    if len(goals):
        body.append(section("Ratios to the plain step", goals.to_html(index=False)))
    body.append(img("bench_ratios.png"))
    if notes:
        body.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    if slope_rows:
        body.append(section("Scaling (log-log slopes of median time)",
                            pd.DataFrame(slope_rows).to_html(index=False)))
        body.append("<p>Expected growth: the Gram form costs O(B&sup2;(d_in + d_out)) per layer "
                    "for J J&#7488; plus O(B&middot;d_in&middot;d_out) for J v and J&#7488;a, "
                    "the same order as the plain step until B&sup2;&sum;(d_in + d_out) reaches "
                    "B&middot;P; the materialized Jacobian has B&middot;P entries and costs "
                    "O(B&sup2;&middot;P) to form by jacrev and to pseudo-invert.</p>")
        body.append(img("bench_sweep_width.png"))
        body.append(img("bench_sweep_batch.png"))
    if floor is not None:
        frow, parts = floor
        body.append(section("The study's floor", f"<p>{html.escape(frow['note'])}</p>"
                            f"<p><b>{frow['median_s']:.1f} s</b> wall for the default grid in one "
                            "plain Python process (no notebooks), threads "
                            f"{args.floor_threads or 'framework defaults'}; compare with "
                            "<code>make study</code>.</p>"))
    show = frame.copy()
    for col in ("median_s", "q1_s", "q3_s"):
        show[col] = show[col].map(lambda v: f"{v:.4g}")
    show["ratio_to_plain"] = show["ratio_to_plain"].map(
        lambda v: "" if isinstance(v, float) and math.isnan(v) else f"{v:.2f}")
    body.append(section("All measurements (bench.csv)", show.drop(
        columns=["machine", "python", "numpy", "torch", "tensorflow"]).to_html(index=False)))
    body.append("</body></html>\n")
    page = "\n".join(body)
    report.atomic_write(out / "bench.html", page.encode())
    return frame


# --- command ------------------------------------------------------------------------------------

def main(args) -> int:
    """Measure the parts asked for and write the reports."""
    args = _resolve(args)

    def log(line):
        print(f"bench: {line}", flush=True)

    env = _configure(args.threads, args.frameworks, args.device)
    log(f"{env['machine']}; threads {args.threads}; device {args.device}; dtype {args.dtype}; "
        f"load {_load()}; parts {','.join(args.parts)}")
    rows, slope_rows, notes, floor = [], [], [], None
    if "table" in args.parts:
        rows += bench_table(args, env, log)
        skipped = [f"{'-'.join(map(str, s))}/{b}" for s, b in args.sizes
                   if jacobian_entries(core.init_params(s), b) > JACOBIAN_MAX_ENTRIES]
        if "jacobian" in args.parts and skipped:
            notes.append(f"Jacobian reference skipped at {', '.join(skipped)}: more than "
                         f"{JACOBIAN_MAX_ENTRIES:,} Jacobian entries (784-512-10 at batch 128 takes "
                         "about 27 s per step on one core).")
    if "sweep" in args.parts:
        rows += bench_sweep(args, env, log)
        slope_rows = slopes(rows)
        notes.append(f"Sweeps: {args.sweep_repeats} repeats per point; the Jacobian projection "
                     f"only where it has at most {JACOBIAN_MAX_ENTRIES:,} entries.")
    if "floor" in args.parts:
        frow, parts = bench_floor(args, env, log)
        rows.append(frow)
        floor = (frow, parts)
    add_ratios(rows)
    frame = write_reports(args.out, rows, slope_rows, args, env, notes, floor)
    goals = goal_table(frame)
    if len(goals):
        with __import__("pandas").option_context("display.width", 250,
                                                 "display.max_columns", 50):
            print(goals.to_string(index=False))
    for s in slope_rows:
        log(f"slope {s['axis']} {s['framework']} {s['series']}: {s['slope_all']} "
            f"(last 3: {s['slope_last3']}); expected {s['expected']}")
    log(f"wrote {Path(args.out) / 'bench.csv'}, {Path(args.out) / 'bench.html'}")
    return 0
