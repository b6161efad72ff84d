"""`python -m selective_update docs`: refresh the README's and docs/'s tables from reports/.

Numbers in the README and under docs/ are never typed by hand: each table or answer that comes
from a report sits between two markers,

    <!-- generated: NAME (from reports/SOURCE) -->
    ...
    <!-- end generated: NAME -->

and this command rewrites what is between them from the CSV files that `make study` and
`make bench` wrote (`make study` and `make bench` call it); a block marked `(from the registry)`
is written from the package itself (the strategies' records). A block whose source file is not
in the reports folder is left as it is and named; `--check` changes nothing and exits 1 when a
block differs from what the reports say.
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .files import atomic_write
from .settings import REPORTS_DIR, ROOT
from .validation import out_dir_option

MARKER = re.compile(r"(<!-- generated: (?P<name>[a-z_]+) "
                    r"\(from (?:reports/(?P<source>[^)]+)|the registry)\) -->\n)"
                    r"(?P<body>.*?)"
                    r"(<!-- end generated: (?P=name) -->)", re.S)


@dataclass(frozen=True)
class Block:
    """One generated block: the report file it comes from and how it is written."""

    source: str | None  # None: the registry (rendered from the package, always)
    render: Callable  # (reports_dir: Path) -> Markdown text

    @property
    def origin(self) -> str:
        return "the registry" if self.source is None else f"reports/{self.source}"


def _results(reports):
    import pandas as pd

    return pd.read_csv(reports / "results.csv")


def _strategy_table(reports=None):
    """The strategies as the registry describes them (core.strategies), one row each."""
    from .core import strategies
    from .files import markdown_table

    rows = []
    for s in strategies.STRATEGIES.values():
        options = ", ".join(f"`{o.name}`={o.default}" for o in s.options) or "-"
        reference = ("a Memory" if s.memory else "yes") if s.reference else "-"
        rows.append([f"`{s.name}`", strategies.TRAINS[s.trains], strategies.LOSSES[s.loss],
                     strategies.GRADIENTS[s.gradient], strategies.AFTER[s.after], options,
                     reference, s.rule.__doc__.split("\n")[0].rstrip("."), s.source])
    return markdown_table(["strategy", "trains", "loss", "the gradient", "the step", "options",
                           "`reference=`", "promise", "source"], rows)


def _promise_table(reports):
    from .study import report

    rows = _results(reports)
    runs = len(report.final_rows(rows))
    return (f"Measured by `make study`: {len(rows):,} rows of `reports/results.csv` ({runs:,} runs"
            f": {rows.strategy.nunique()} strategies x {rows.dataset.nunique()} datasets x "
            f"{rows.framework.nunique()} frameworks x {rows.optimizer.nunique()} optimizers x "
            f"weight decay {sorted(set(rows.weight_decay))} x warm start "
            f"{sorted(set(rows.warm_start_steps))} x seeds {sorted(set(rows.seed))}, "
            f"{rows.step.max()} steps, lr {sorted(set(rows.lr))}, {', '.join(set(rows.dtype))})."
            f" Drift = max |change| of the kept outputs since the strategy's first step.\n\n"
            + report.promise_markdown(rows))


def _answer(reports):
    from .study import report

    return report.answer_brief(_results(reports))


def _approach_b(reports):
    from .files import markdown_table

    rows = _results(reports)
    part = rows[(rows.strategy == "masked_last_layer")]
    if part.empty:
        return "No `masked_last_layer` rows in this study."
    head = ["dataset", "optimizer", "weight decay", "warm start", "promise",
            "max held-out drift of the kept outputs"]
    table = part.groupby(["dataset", "optimizer", "weight_decay", "warm_start_steps"],
                         sort=True).agg(promise=("promise", "first"), drift=("drift_eval", "max"))
    body = [[d, o, f"{w:g}", k, r.promise, f"{r.drift:.3g}"]
            for (d, o, w, k), r in table.iterrows()]
    return markdown_table(head, body)


def _new_class(reports):
    import pandas as pd

    from .scenarios import new_class_report

    return new_class_report.headline_markdown(pd.read_csv(reports / "new_class_summary.csv"))


def _new_class_answer(reports):
    import pandas as pd

    from .scenarios import new_class_report

    rows = reports / "new_class.csv"
    return new_class_report.answer_markdown(
        pd.read_csv(reports / "new_class_summary.csv"),
        rows=pd.read_csv(rows) if rows.is_file() else None)


def _rotations(reports):
    import pandas as pd

    from .scenarios import rotations_report

    return rotations_report.answer_markdown(pd.read_csv(reports / "rotations_summary.csv"))


def _rotations_brief(reports):
    import pandas as pd

    from .scenarios import rotations_report

    return rotations_report.brief_markdown(pd.read_csv(reports / "rotations_summary.csv"))


def _class_sequence(reports):
    import pandas as pd

    from .scenarios import class_sequence_report

    return class_sequence_report.headline_markdown(
        pd.read_csv(reports / "class_sequence_summary.csv"))


def _class_sequence_answer(reports):
    import pandas as pd

    from .scenarios import class_sequence_report

    return class_sequence_report.answer_markdown(
        pd.read_csv(reports / "class_sequence_summary.csv"))


def _csv_table(name):
    """Render a report CSV whole, numbers to 3 significant digits."""
    def render(reports):
        import pandas as pd

        from .files import markdown_table

        frame = pd.read_csv(reports / name)
        cells = [[f"{v:.3g}" if isinstance(v, float) else v for v in row]
                 for row in frame.itertuples(index=False)]
        return markdown_table(list(frame.columns), cells)
    return render


def _study_time(reports):
    import pandas as pd

    from .files import markdown_table

    status = pd.read_csv(reports / "status.csv").sort_values("seconds", ascending=False)
    head = ["notebook run", "status", "seconds"]
    body = [[r.name, r.status, f"{r.seconds:.1f}"] for r in status.head(8).itertuples()]
    return (f"{len(status)} notebook runs, {status.seconds.sum():.0f} s of notebook time in all "
            "(the runs share the workers); the longest:\n\n" + markdown_table(head, body))


def _bench_table(reports):
    from .bench import report

    frame, meta = report.read_bench(reports)
    return report.goal_markdown(frame, meta)


def _bench_helpers(reports):
    from .bench import report

    frame, meta = report.read_bench(reports)
    return report.helpers_markdown(frame, meta)


def _cluster_bench(reports):
    import pandas as pd

    from .bench import report

    return report.cluster_bench_markdown(pd.read_csv(reports / "cluster_bench.csv"))


def _bench_memories(reports):
    from .bench import report

    frame, meta = report.read_bench(reports)
    return report.memories_markdown(frame, meta)


def _bench_beyond_batch(reports):
    from .bench import report

    frame, meta = report.read_bench(reports)
    return report.beyond_batch_markdown(frame, meta)


BLOCKS = {
    "strategies": Block(None, _strategy_table),
    "answer": Block("results.csv", _answer),
    "promise_table": Block("results.csv", _promise_table),
    "approach_b": Block("results.csv", _approach_b),
    "new_class": Block("new_class_summary.csv", _new_class),
    "new_class_answer": Block("new_class_summary.csv", _new_class_answer),
    "rotations": Block("rotations_summary.csv", _rotations),
    "rotations_brief": Block("rotations_summary.csv", _rotations_brief),
    "class_sequence": Block("class_sequence_summary.csv", _class_sequence),
    "class_sequence_answer": Block("class_sequence_summary.csv", _class_sequence_answer),
    "study_time": Block("status.csv", _study_time),
    "your_model": Block("your_model.csv", _csv_table("your_model.csv")),
    "bench_table": Block("bench.csv", _bench_table),
    "bench_beyond_batch": Block("bench.csv", _bench_beyond_batch),
    "bench_memories": Block("bench.csv", _bench_memories),
    "bench_helpers": Block("bench.csv", _bench_helpers),
    "cluster_bench": Block("cluster_bench.csv", _cluster_bench),
}
DOCUMENTS = ("README.md", "docs/*.md")


def documents(root=ROOT) -> list:
    """The Markdown files that may hold generated blocks."""
    found = []
    for pattern in DOCUMENTS:
        found += sorted(Path(root).glob(pattern))
    return found


def refresh(text, reports, rendered=None) -> tuple:
    """Return (new text, names refreshed, names kept) with every block rewritten from reports.

    rendered: a cache {name: text} shared between documents.
    """
    rendered = {} if rendered is None else rendered
    refreshed, kept = [], []

    def replace(match):
        name, source = match.group("name"), match.group("source")
        block = BLOCKS.get(name)
        if block is None or block.source != source:
            origin = "the registry" if source is None else f"reports/{source}"
            raise ValueError(f"generated block {name!r} (from {origin}): allowed: "
                             + ", ".join(f"{n} (from {b.origin})" for n, b in BLOCKS.items()))
        if source is not None and not (Path(reports) / source).is_file():
            kept.append(name)
            return match.group(0)
        if name not in rendered:
            rendered[name] = block.render(Path(reports)).rstrip("\n") + "\n"
        refreshed.append(name)
        return match.group(1) + rendered[name] + match.group(5)

    return MARKER.sub(replace, text), refreshed, kept


def add_arguments(parser):
    """Declare the command's options."""
    parser.add_argument("--reports", type=out_dir_option, default=REPORTS_DIR,
                        help=f"folder the study and the bench wrote (default: {REPORTS_DIR})")
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 when a block differs from the reports")


def main(args) -> int:
    """Rewrite the generated blocks of README.md and docs/*.md from the reports folder."""
    reports = Path(args.reports)
    stale, rendered = [], {}
    for path in documents():
        text = path.read_text(encoding="utf-8")
        try:
            new, refreshed, kept = refresh(text, reports, rendered)
        except ValueError as error:
            print(f"docs: {path.relative_to(ROOT)}: {error}", file=sys.stderr)
            return 2
        name = path.relative_to(ROOT)
        if kept:
            print(f"docs: {name}: kept {', '.join(kept)} (not in {reports}/)")
        if new != text:
            stale.append(str(name))
            if not args.check:
                atomic_write(path, new)
        if refreshed:
            verb = "differs" if args.check and new != text else "refreshed"
            print(f"docs: {name}: {verb} {', '.join(refreshed)}")
    if args.check and stale:
        print(f"docs: out of date with {reports}/: {', '.join(stale)} (run `python -m "
              "selective_update docs`)", file=sys.stderr)
        return 1
    return 0

