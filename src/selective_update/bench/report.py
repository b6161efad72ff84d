"""The bench's tables (notebooks/bench.ipynb) and reading its files back."""
from __future__ import annotations

from pathlib import Path

from .timing import FRAMEWORK_ORDER, PLAIN, slopes


def read_bench(bench_dir):
    """Read bench.csv and bench_meta.json written by the bench command: (frame, meta)."""
    import json

    import pandas as pd

    bench_dir = Path(bench_dir)
    meta = json.loads((bench_dir / "bench_meta.json").read_text(encoding="utf-8"))
    return pd.read_csv(bench_dir / "bench.csv", keep_default_na=False, na_values=[""]), meta


def goal_table(frame):
    """Pivot the table part: one row per size/batch, one column per framework x strategy ratio."""
    import pandas as pd

    table = frame[(frame.part == "table") & (frame.strategy != PLAIN)]
    if not len(table):
        return pd.DataFrame(columns=["network", "batch"])
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


def slopes_table(frame):
    """The sweeps' fitted slopes as a table (a note when no sweep was run)."""
    import pandas as pd
    from IPython.display import Markdown

    table = pd.DataFrame(slopes(frame.to_dict("records")))
    return table if len(table) else Markdown("No sweep in this bench (`--parts sweep`).")


def floor_summary(frame):
    """Markdown: the study floor's wall time and what it covered ('' when not measured)."""
    from IPython.display import Markdown

    floor = frame[frame.part == "study_floor"]
    if not len(floor):
        return Markdown("Not measured in this bench (`--study-floor`).")
    row = floor.iloc[-1]
    return Markdown(f"**{row.median_s:.1f} s** wall, threads {row.threads}: {row.note}")


def reference_table(frame):
    """The reference part: step time per strategy and n_ref, per framework, with its goal."""
    from IPython.display import Markdown

    part = frame[frame.part == "reference"]
    if not len(part):
        return Markdown("Not measured in this bench (`--parts reference`).")
    shown = part.assign(ms=part.median_s * 1e3)[
        ["framework", "strategy", "sizes", "n_ref", "ms", "ratio_to_plain", "goal", "meets_goal"]]
    return shown.style.hide(axis="index").format({"ms": "{:.3g}", "ratio_to_plain": "{:.2f}"},
                                                 na_rep="")


def helpers_table(frame):
    """The helpers part: each helper's step against the plain step, with issue 15's targets."""
    from IPython.display import Markdown

    part = frame[frame.part == "helpers"]
    if not len(part):
        return Markdown("Not measured in this bench (`--parts helpers`).")
    shown = part.assign(ms=part.median_s * 1e3)[
        ["strategy", "n_ref", "ms", "ratio_to_plain", "peak_rss_mb", "goal", "meets_goal",
         "note"]].rename(columns={"strategy": "case", "n_ref": "protected inputs"})
    return shown.style.hide(axis="index").format(
        {"protected inputs": "{:.0f}", "ms": "{:.4g}", "ratio_to_plain": "{:.3g}",
         "peak_rss_mb": "{:.0f}"}, na_rep="")
