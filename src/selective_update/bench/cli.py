"""The `bench` command: median time of one optimizer step of every strategy, both frameworks.

    python -m selective_update bench [--out reports] [--quick] [--threads T] [--repeats N] ...

Parts (`--parts`, default all of them):
  table     one step of each strategy and of the plain step (all_params, sgd) at the issue's sizes,
            torch and tf1 (each framework's make_steps: a trainer step; one `session.run` of the
            step op with data fed through placeholders), strategies interleaved repeat by repeat,
            medians of time.perf_counter;
  jacobian  the null_space step with the materialized-Jacobian projection (torch.func.jacrev +
            pinv) in place of the layer-wise Gram form, where the Jacobian stays small;
  sweep     width (784-W-10, batch 64) and batch (784-512-10) sweeps of null_space vs plain, and
            of the projection alone (Gram vs Jacobian), log-log figures and measured slopes;
  beyond_batch  protecting inputs beyond the batch, on the digits net (beyond_batch.py):
            null_space and null_space_corrected against 0..1,080 kept digits, layer_subspace,
            grow, and compensated_gradient on the batch (`reference`, the part's
            earlier name, is still accepted);
  memories  the rotations benchmark's steps at its last task (memories.py): gem against 19 x 256
            and 19 x 32 memories, ewc, and the study's rows on their memories, against the
            plain step of GEM's network;
  helpers   the helpers for your own model (helpers.py) on a ~55k-parameter CNN, float32:
            split_head, NullSpaceProjector on 64 and 512 protected images (and corrected on 64),
            LayerSubspaceProjector on 512, each against a plain AdamW step; peak RSS of the
            512-image projector in a fresh process (torch only; --quick: 8 and 16 images);
  floor     the study's default grid computed in one fresh plain Python process
            (study_floor.py).

Writes reports/bench.csv, bench_meta.json, figures/bench_*.png, and bench.html: notebooks/
bench.ipynb executed on them and rendered through the study's offline template (built in a
staging folder, moved in at the end).
torch, tensorflow, pandas and matplotlib are imported inside functions only: the CLI imports every
command module to build its parser.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
from pathlib import Path

from .. import core, validation
from ..files import atomic_write
from ..settings import CELL_TIMEOUT, REPORTS_DIR
from . import report
from .beyond_batch import bench_beyond_batch
from .memories import bench_memories
from .helpers import bench_helpers
from .study_floor import bench_floor
from .timing import (
    CSV_COLUMNS,
    FRAMEWORK_ORDER,
    JACOBIAN_MAX_ENTRIES,
    JACOBIAN_REPEATS,
    JACOBIAN_SWEEP_REPEATS,
    KEEP,
    LR,
    PART_ALIASES,
    PARTS,
    PLAIN,
    SWEEP_BATCH_WIDTH,
    SWEEP_BATCHES,
    SWEEP_IN,
    SWEEP_OUT,
    SWEEP_WIDTH_BATCH,
    SWEEP_WIDTHS,
    TABLE_SIZES,
    TRAIN,
    WARMUP,
    add_ratios,
    bench_sweep,
    bench_table,
    configure,
    cuda_available,
    jacobian_entries,
    load,
    slopes,
)


def _size(text):
    """Parse '784-512-10/128' into ((784, 512, 10), 128)."""
    allowed = ("WIDTHS/BATCH with at least 3 widths >= 1, 2+ outputs and a batch >= 1, "
               "e.g. 3-4-2/8")
    try:
        widths, batch = text.split("/")
        sizes, batch = tuple(int(w) for w in widths.split("-")), int(batch)
    except ValueError:
        raise argparse.ArgumentTypeError(f"got {text!r}; allowed: {allowed}") from None
    if len(sizes) < 3 or min(sizes) < 1 or sizes[-1] < 2 or batch < 1:
        raise argparse.ArgumentTypeError(f"got {text!r}; allowed: {allowed}")
    return sizes, batch


def add_arguments(parser):
    """Declare the command's options (usage errors exit 2 before any work)."""
    parser.add_argument("--out", type=validation.out_dir_option, default=REPORTS_DIR,
                        help="folder for bench.csv, bench.html and figures/ "
                             f"(default {REPORTS_DIR})")
    parser.add_argument("--quick", action="store_true",
                        help="tiny smoke (CI): smallest size, 1 repeat, parts table,jacobian")
    parser.add_argument("--sizes", type=_size, nargs="+", default=None, metavar="WIDTHS/BATCH",
                        help="table sizes (default "
                             + " ".join("-".join(map(str, s)) + f"/{b}" for s, b in TABLE_SIZES)
                             + ")")
    parser.add_argument("--repeats", type=validation.positive_int_option, default=None,
                        help="timed steps per case; medians are reported (default 21, quick 1)")
    parser.add_argument("--sweep-repeats", type=validation.positive_int_option, default=7,
                        help="timed steps per sweep point (default 7)")
    parser.add_argument("--threads", type=validation.positive_int_option, default=1,
                        help="torch.set_num_threads and tf1 session intra-op threads (default 1)")
    parser.add_argument("--frameworks", nargs="+", choices=FRAMEWORK_ORDER,
                        default=FRAMEWORK_ORDER, metavar="FRAMEWORK",
                        help="frameworks (default: torch tf1)")
    parser.add_argument("--strategies", nargs="+", choices=list(core.STRATEGIES),
                        default=tuple(core.STRATEGIES), metavar="STRATEGY",
                        help="strategies (default: all; all_params is always timed: the plain "
                             "step every ratio divides by): " + ", ".join(core.STRATEGIES))
    parser.add_argument("--parts", nargs="+", choices=PARTS + tuple(PART_ALIASES), default=None,
                        metavar="PART", help="parts to run: " + ", ".join(PARTS)
                             + " (default all; quick: table jacobian)")
    parser.add_argument("--study-floor", action="store_true",
                        help="only measure the study floor (same as --parts floor)")
    parser.add_argument("--floor-threads", type=validation.non_negative_int_option, default=1,
                        metavar="N",
                        help="threads of the study-floor process: N >= 1 pins torch and tf1 to N "
                             "(default 1, as the study's workers); 0 keeps framework defaults")
    parser.add_argument("--widths", type=validation.positive_int_option, nargs="+",
                        default=SWEEP_WIDTHS,
                        help=f"sweep widths W of {SWEEP_IN}-W-{SWEEP_OUT} at batch "
                             f"{SWEEP_WIDTH_BATCH}")
    parser.add_argument("--batches", type=validation.positive_int_option, nargs="+",
                        default=SWEEP_BATCHES,
                        help=f"sweep batches of {SWEEP_IN}-{SWEEP_BATCH_WIDTH}-{SWEEP_OUT}")
    parser.add_argument("--device", choices=core.DEVICES, default="cpu",
                        help="cpu | cuda (cuda: torch only, so with --frameworks torch)")
    parser.add_argument("--dtype", choices=core.DTYPES, default="float64",
                        help="float64 (default, the study's) | float32")
    parser.set_defaults(bench_parser=parser)


def _resolve(args):
    """Apply --quick/--study-floor defaults and check option combinations (exit 2 on error)."""
    error = args.bench_parser.error if hasattr(args, "bench_parser") else _exit_usage
    if args.parts is not None:
        args.parts = tuple(dict.fromkeys(PART_ALIASES.get(p, p) for p in args.parts))
    if args.study_floor and args.parts is not None and args.parts != ("floor",):
        error("--study-floor: measures only the floor; allowed: without --parts, or --parts floor")
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
            error(f"--device: cuda with --frameworks {' '.join(args.frameworks)}; allowed: cpu, "
                  "or cuda with --frameworks torch (tf1 runs on cpu)")
        if "floor" in args.parts:
            error("--device: cuda with part floor; allowed: cpu for the study floor")
        if not cuda_available():
            error("--device: cuda, but torch sees no CUDA device here; allowed: cpu")
    if "torch" not in args.frameworks:  # both parts time torch code only
        args.parts = tuple(p for p in args.parts if p not in ("jacobian", "helpers"))
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


def _save(fig, path):
    import matplotlib.pyplot as plt

    fig.savefig(path, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def write_reports(out, rows, args, env, notes):
    """Write bench.csv, bench_meta.json, figures/bench_*.png and bench.html, all or nothing.

    Everything is built in a staging folder inside out and moved in at the end (bench.html
    last), so a failed or interrupted render leaves the previous bench files as they were.
    """
    out = Path(out)
    staging = out / f".bench-staging-{os.getpid()}"
    try:
        frame = _write(staging, rows, args, env, notes)
        render_page(staging, published=out)
        for path in sorted(staging.rglob("*"), key=lambda p: p.name == "bench.html"):
            if path.is_file():
                target = out / path.relative_to(staging)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return frame


def _write(out, rows, args, env, notes):
    import matplotlib
    import pandas as pd

    from . import figures

    matplotlib.use("Agg")
    (out / "figures").mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(rows, columns=list(CSV_COLUMNS))
    atomic_write(out / "bench.csv", frame.to_csv(index=False, lineterminator="\n"))
    for name, fig in (("bench_ratios.png", figures.plot_bench_ratios(frame)),
                      ("bench_sweep_width.png", figures.plot_bench_sweep(frame, "sweep_width")),
                      ("bench_sweep_batch.png", figures.plot_bench_sweep(frame, "sweep_batch")),
                      ("bench_beyond_batch.png", figures.plot_bench_beyond_batch(frame)),
                      ("bench_helpers.png", figures.plot_bench_helpers(frame))):
        if fig is not None:
            _save(fig, out / "figures" / name)
    meta = {
        "machine": env["machine"],
        "threads": f"{env['threads']} (each framework's configure(threads); inter-op 1)",
        "device": args.device,
        "GPU": ("torch device " + args.device if args.device == "cuda" else
                "none: no GPU on this machine; the bench ran on CPU only"),
        "dtype": args.dtype, "optimizer": f"sgd, lr {LR:g}, keep {KEEP}, train {TRAIN}",
        "repeats": (f"{args.repeats} per case (median; Jacobian {JACOBIAN_REPEATS}, sweep "
                    f"{args.sweep_repeats}, sweep Jacobian {JACOBIAN_SWEEP_REPEATS}), "
                    f"warm-up {WARMUP}"),
        "versions": (f"python {env['python']}, numpy {env['numpy']}, torch {env['torch']}, "
                     f"tensorflow {env['tensorflow'] or '-'}"),
        "finished": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load average (1 min)": (
            f"{min(r['load_1m'] for r in rows)} to {max(r['load_1m'] for r in rows)} while "
            "measuring (column load_1m): the CPU may be shared, so absolute times are noisy; "
            "ratios are of steps interleaved under the same load"),
        "notes": notes,
    }
    atomic_write(out / "bench_meta.json", json.dumps(meta, indent=1) + "\n")
    return frame


def render_page(out, published=None):
    """Execute notebooks/bench.ipynb on out's bench files into out/bench.html (offline page).

    published: the folder the files will be moved to (the page names it, not out).
    """
    from ..study.notebook_runner import Task, execute

    task = Task("bench", "bench.ipynb", "bench.ipynb", {}, folder_param="bench_dir")
    status = execute(task, str(out), CELL_TIMEOUT, published=published)
    if status["status"] != "ok":
        raise RuntimeError(f"bench.html: the bench notebook failed: {status['error']} "
                           f"(see {Path(out) / 'bench.ipynb'})")


def main(args) -> int:
    """Measure the parts asked for and write the reports."""
    args = _resolve(args)

    def log(line):
        print(f"bench: {line}", flush=True)

    env = configure(args.threads, args.frameworks, args.device)
    log(f"{env['machine']}; threads {args.threads}; device {args.device}; dtype {args.dtype}; "
        f"load {load()}; parts {' '.join(args.parts)}")
    rows, notes = [], []
    if "table" in args.parts:
        rows += bench_table(args, env, log)
        skipped = [f"{'-'.join(map(str, s))}/{b}" for s, b in args.sizes
                   if jacobian_entries(core.init_params(s), b) > JACOBIAN_MAX_ENTRIES]
        if "jacobian" in args.parts and skipped:
            notes.append(f"Jacobian baseline skipped at {', '.join(skipped)}: more than "
                         f"{JACOBIAN_MAX_ENTRIES:,} Jacobian entries (784-512-10 at batch 128 "
                         "takes about 27 s per step on one core).")
    if "sweep" in args.parts:
        rows += bench_sweep(args, env, log)
        notes.append(f"Sweeps: {args.sweep_repeats} repeats per point; the Jacobian projection "
                     f"only where it has at most {JACOBIAN_MAX_ENTRIES:,} entries.")
    if "beyond_batch" in args.parts:
        rows += bench_beyond_batch(args, env, log)
    if "memories" in args.parts:
        rows += bench_memories(args, env, log)
    if "helpers" in args.parts:
        rows += bench_helpers(args, env, log)
        notes.append("Helpers: float32 on CPU whatever --dtype and --device; ratios to the plain "
                     "AdamW step of the same CNN, timed with the light steps.")
    if "floor" in args.parts:
        rows.append(bench_floor(args, env, log)[0])
    add_ratios(rows)
    frame = write_reports(args.out, rows, args, env, notes)
    goals = report.goal_table(frame)
    if len(goals):
        with __import__("pandas").option_context("display.width", 250,
                                                 "display.max_columns", 50):
            print(goals.to_string(index=False))
    for s in slopes(rows):
        log(f"slope {s['axis']} {s['framework']} {s['series']}: {s['slope_all']} "
            f"(last 3: {s['slope_last3']}); expected {s['expected']}")
    log(f"wrote {Path(args.out) / 'bench.csv'}, {Path(args.out) / 'bench.html'}")
    return 0
