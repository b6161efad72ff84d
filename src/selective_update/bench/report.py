"""The bench's tables (notebooks/bench.ipynb) and reading its files back."""
from __future__ import annotations

from pathlib import Path

from ..files import markdown_table
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


def beyond_batch_table(frame):
    """The beyond_batch part: step time per strategy and n_ref, per framework, with its goal."""
    from IPython.display import Markdown

    part = frame[frame.part == "beyond_batch"]
    if not len(part):
        return Markdown("Not measured in this bench (`--parts beyond_batch`).")
    shown = part.assign(ms=part.median_s * 1e3)[
        ["framework", "strategy", "sizes", "n_ref", "ms", "ratio_to_plain", "goal", "meets_goal"]]
    return shown.style.hide(axis="index").format({"ms": "{:.3g}", "ratio_to_plain": "{:.2f}"},
                                                 na_rep="")


def helpers_table(frame):
    """The helpers part: each helper's step against the plain step, with their targets."""
    from IPython.display import Markdown

    import pandas as pd

    part = frame[frame.part == "helpers"]
    if not len(part):
        return Markdown("Not measured in this bench (`--parts helpers`).")
    # n_ref holds "batch" and "all" in other parts' rows: numbers here
    part = part.assign(n_ref=pd.to_numeric(part.n_ref, errors="coerce"),
                       peak_rss_mb=pd.to_numeric(part.peak_rss_mb, errors="coerce"))
    shown = part.assign(ms=part.median_s * 1e3)[
        ["strategy", "n_ref", "ms", "ratio_to_plain", "peak_rss_mb", "goal", "meets_goal",
         "note"]].rename(columns={"strategy": "case", "n_ref": "protected inputs"})
    return shown.style.hide(axis="index").format(
        {"protected inputs": "{:.0f}", "ms": "{:.4g}", "ratio_to_plain": "{:.3g}",
         "peak_rss_mb": "{:.0f}"}, na_rep="")


# --- the docs' generated blocks (python -m selective_update docs) ---------------------------

def _machine_line(frame, meta, plain="the plain step (all_params, sgd) of the same framework"):
    """The line above a generated table: machine, threads, dtype and device of its rows (frame),
    versions and load, and what its ratios divide by (plain)."""
    first = frame.iloc[0] if len(frame) else None
    setup = "" if first is None else (f"; {first['threads']} thread(s), {first['dtype']}, "
                                      f"device {first['device']}")
    load = str(meta.get("load average (1 min)", "?")).split(" while")[0]
    return (f"Measured by `make bench` on {meta.get('machine', '?')}{setup}; "
            f"{meta.get('versions', '')}; 1-minute load {load}. Medians of interleaved steps; "
            f"ratios to {plain}.")


def goal_markdown(frame, meta) -> str:
    """The table part as Markdown: one row per strategy, its ratio per network and framework."""
    table = frame[frame.part == "table"]
    if not len(table):
        return "No table part in this bench (`--parts table`)."
    cases = list(dict.fromkeys(zip(table.sizes, table.batch)))
    columns = [(case, fw) for case in cases for fw in FRAMEWORK_ORDER
               if ((table.sizes == case[0]) & (table.batch == case[1])
                   & (table.framework == fw)).any()]
    head = ["strategy", "goal"] + [f"{s}/{int(b)} {fw}" for (s, b), fw in columns]
    rows = []
    for strategy in dict.fromkeys(table.strategy):
        mine = table[table.strategy == strategy]
        goal = next((g for g in mine.goal if isinstance(g, str) and g), "")
        cells = [f"`{strategy}`", goal]
        for (sizes, batch), fw in columns:
            hit = mine[(mine.sizes == sizes) & (mine.batch == batch) & (mine.framework == fw)]
            if not len(hit):
                cells.append("")
                continue
            r = hit.iloc[0]
            if strategy == PLAIN:
                cells.append(f"{r.median_s * 1e3:.3g} ms")
                continue
            mark = " **missed**" if str(r.meets_goal) == "False" else ""
            cells.append(f"{r.ratio_to_plain:.2f}x{mark}")
        rows.append(cells)
    return _machine_line(frame, meta) + "\n\n" + markdown_table(head, rows)


def beyond_batch_markdown(frame, meta) -> str:
    """The beyond_batch part as Markdown: ms per step and the ratio to the plain step."""
    part = frame[frame.part == "beyond_batch"]
    if not len(part):
        return "No beyond_batch part in this bench (`--parts beyond_batch`)."
    rows = [[r.framework, f"`{r.strategy}`", r.sizes, "" if r.n_ref != r.n_ref else r.n_ref,
             f"{r.median_s * 1e3:.3g}",
             "" if r.ratio_to_plain != r.ratio_to_plain else f"{r.ratio_to_plain:.2f}",
             r.goal if isinstance(r.goal, str) else "",
             {"True": "met", "False": "**missed**"}.get(str(r.meets_goal), "")]
            for r in part.itertuples()]
    head = ["framework", "strategy", "network", "protected inputs", "ms per step",
            "ratio to plain", "goal", ""]
    return _machine_line(frame, meta) + "\n\n" + markdown_table(head, rows)


def memories_markdown(frame, meta) -> str:
    """The memories part as Markdown: the rotations' last-task step of each row, against the
    plain step of GEM's network."""
    part = frame[frame.part == "memories"]
    if not len(part):
        return "No memories part in this bench (`--parts memories`)."
    rows = [[r.framework, f"`{r.strategy}`", "" if r.n_ref != r.n_ref else f"{float(r.n_ref):,.0f}",
             f"{r.median_s * 1e3:.3g}", f"{r.ratio_to_plain:.3g}"] for r in part.itertuples()]
    head = ["framework", "strategy", "memories (all tasks)", "ms per step", "ratio to plain"]
    return (_machine_line(frame, meta, "the plain step of GEM's network (784-100-100-10, ReLU, "
                          "cross-entropy, batch 10; this part alone in float32)")
            + "\n\n" + markdown_table(head, rows))


def helpers_markdown(frame, meta) -> str:
    """The helpers part as Markdown: each helper's step against the plain step, with its goal."""
    part = frame[frame.part == "helpers"]
    if not len(part):
        return "No helpers part in this bench (`--parts helpers`)."
    rows = []
    for r in part.itertuples():
        protected = "" if r.n_ref != r.n_ref or r.n_ref == "" else f"{float(r.n_ref):.0f}"
        rss = "" if r.peak_rss_mb != r.peak_rss_mb else f"{r.peak_rss_mb:.0f}"
        rows.append([f"`{r.strategy}`", protected, f"{r.median_s * 1e3:.4g}",
                     f"{r.ratio_to_plain:.3g}", rss, r.goal if isinstance(r.goal, str) else "",
                     {"True": "met", "False": "**missed**"}.get(str(r.meets_goal), ""),
                     r.note if isinstance(r.note, str) else ""])
    head = ["case", "protected inputs", "ms per step", "ratio to plain", "peak RSS MB", "goal",
            "", "note"]
    return (_machine_line(part, meta, "the plain AdamW step (`plain`)") + "\n\n"
            + markdown_table(head, rows))


def cluster_bench_markdown(frame) -> str:
    """tools/bench_cluster.py's rows as Markdown: the pool against --cluster local, round by round.

    The overhead per task is (cluster - pool) divided by the notebooks of one study: of the wall
    time, and of the notebooks' own seconds (each run measured on its worker).
    """
    med = frame.groupby("executor")[["wall_s", "notebook_s", "load_1min"]].median()
    pool, cluster = med.loc["pool"], med.loc["cluster local"]
    tasks = int(frame.notebooks.iloc[0])
    paired = frame.pivot(index="round", columns="executor", values="wall_s")
    ratios = ", ".join(f"{r:.2f}" for r in paired["cluster local"] / paired["pool"])
    same = bool(frame.results_identical.all()) if "results_identical" in frame else None
    head = ["rounds", "notebooks", "--jobs", "pool wall s (median)", "cluster wall s (median)",
            "cluster / pool, round by round", "overhead per task (wall)",
            "overhead per task (inside the runs)", "1-min load", "results.csv identical"]
    row = [paired.shape[0], tasks, int(frame.jobs.iloc[0]), f"{pool.wall_s:.1f}",
           f"{cluster.wall_s:.1f}", ratios, f"{(cluster.wall_s - pool.wall_s) / tasks:+.2f} s",
           f"{(cluster.notebook_s - pool.notebook_s) / tasks:+.2f} s",
           f"{frame.load_1min.min():.1f}-{frame.load_1min.max():.1f}",
           {True: "every round", False: "**no**", None: ""}[same]]
    return markdown_table(head, [row])
