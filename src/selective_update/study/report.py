"""Tables and Markdown for the study's pages: promised vs measured, agreement, accuracy.

Notebooks call these helpers so that each cell stays a few clear calls. pandas is imported inside
the functions that need it.
"""
from __future__ import annotations

import html
import inspect

import numpy as np

from .. import core
from ..files import markdown_table

# --- tables -------------------------------------------------------------------------------------

CONFIG = ["dataset", "strategy", "framework", "optimizer", "weight_decay", "warm_start_steps"]


def promise_table(rows, by=("framework", "optimizer", "weight_decay", "warm_start_steps")):
    """Promised vs measured per configuration (all seeds and steps): max drifts, holds."""
    import pandas as pd

    by = list(by)
    if rows.empty:
        return pd.DataFrame(columns=by + ["promise", "holds", "result"])
    g = rows.groupby(by, sort=True)
    table = pd.DataFrame({
        **({} if "promise" in by else {"promise": g["promise"].first()}),
        "max batch drift": g["drift_train"].max(),
        "max held-out drift": g["drift_eval"].max(),
        "min lr ratio": g["drift_ratio"].min() if "drift_ratio" in rows else np.nan,
        "runs": g["seed"].nunique() if "seed" in rows else 1,
        "holds": g["holds"].all(),
    }).reset_index()
    table["result"] = np.where(table["holds"], "pass", "FAIL")
    return table


def promise_markdown(results) -> str:
    """The measured promise table (strategy x promise, drifts per dataset) as Markdown."""
    datasets = sorted(set(results.dataset)) if "dataset" in results else [None]
    head = ["strategy", "promise"] + [f"{d or 'all'}: max batch / held-out drift"
                                      for d in datasets] + ["min lr ratio", "held in every run"]
    rows = []
    for (strategy, promised), g in results.groupby(["strategy", "promise"], sort=False):
        cells = [f"`{strategy}`", promised]
        for d in datasets:
            part = g if d is None else g[g.dataset == d]
            cells.append(f"{part.drift_train.max():.2g} / {part.drift_eval.max():.2g}"
                         if len(part) else "")
        ratio = g.drift_ratio.min()
        cells += ["" if np.isnan(ratio) else f"{ratio:.3g}", "yes" if g.holds.all() else "**no**"]
        rows.append(cells)
    order = {name: i for i, name in enumerate(core.STRATEGIES)}
    rows.sort(key=lambda r: (order.get(r[0].strip("`"), len(order)), r[1]))
    return markdown_table(head, rows)


def final_rows(rows):
    """One row per run (its last step) with the trained-loss improvement."""
    keys = [c for c in ["dataset", "strategy", "framework", "optimizer", "weight_decay",
                        "warm_start_steps", "seed"] if c in rows]
    first = rows[rows.step == 0].set_index(keys)
    last = rows.loc[rows.groupby(keys).step.idxmax()].set_index(keys)
    last = last.assign(loss_improvement=(first.train_loss - last.train_loss)
                       / first.train_loss)
    return last.reset_index()


def _kept(part, promise):
    """Say in words how the kept outputs fared in the runs that made one promise."""
    batch, held_out = part.drift_train.max(), part.drift_eval.max()
    if batch == 0 and held_out == 0:
        return "**bitwise fixed everywhere**"
    if promise in ("batch_exact", "reference_exact"):
        return (f"fixed **on the batch only** (drift <= {batch:.2g}); held-out inputs move by up "
                f"to {held_out:.2g}")
    if promise in ("first_order", "reference_first_order"):
        return (f"fixed **to first order on the batch** (one-step drift falls >= "
                f"{part.drift_ratio.min():.2f}x at lr/2); batch drift up to {batch:.2g}, "
                f"held-out up to {held_out:.2g}")
    return f"**no guarantee**: batch drift up to {batch:.2g}, held-out up to {held_out:.2g}"


def _where(strategy_rows):
    """Say in words where one strategy kept the kept outputs, per promise its set-ups made (a
    strategy whose promise depends on the optimizer set-up gets one clause per promise)."""
    promises = sorted(set(strategy_rows.promise), key=core.PROMISES.index)
    if len(promises) == 1:
        return _kept(strategy_rows, promises[0]) + ", in every run"
    rule = core.STRATEGIES[strategy_rows.strategy.iloc[0]].rule.__doc__.split("\n")[0]
    clauses = [f"where its set-up promises {p} ({len(final_rows(part))} runs): {_kept(part, p)}"
               for p in promises for part in [strategy_rows[strategy_rows.promise == p]]]
    return f"*{rule.rstrip('.').lower()}*: " + "; ".join(clauses)


def answer_markdown(rows):
    """Markdown: the study's answer in a few sentences, computed from results.csv's rows."""
    from IPython.display import Markdown

    return Markdown(answer_text(rows))


def answer_text(rows) -> str:
    """The study's answer as Markdown text (the summary page and the README's generated block)."""
    if rows.empty:
        return "No results yet: run `python -m selective_update study`."
    gain = final_rows(rows).groupby(["strategy", "dataset"]).loss_improvement.median()
    order = [s for s in core.STRATEGIES if s in set(rows.strategy)]
    failed = rows[~rows.holds.astype(bool)]
    lines = [f"Over {rows.dataset.nunique()} datasets, {rows.framework.nunique()} frameworks, "
             f"{rows.optimizer.nunique()} optimizers, weight decay, warm starts and seeds "
             f"({len(final_rows(rows))} runs), the kept outputs were:", ""]
    for name in order:
        part = rows[rows.strategy == name]
        change = ", ".join(f"{'fell' if v >= 0 else 'rose'} by {100 * abs(v):.3g}% on {d}"
                           for d, v in gain[name].items())
        lines.append(f"- `{name}`: {_where(part)}; the trained outputs' loss {change} "
                     "(median).")
    lines += ["", "Every promise held in every run." if failed.empty else
              f"**{failed.groupby(CONFIG).ngroups} configurations broke their promise** "
              "(the tables below mark them FAIL)."]
    return "\n".join(lines)


def answer_brief(rows) -> str:
    """The answer in five lines (the README's generated block), grouped by what was kept where."""
    if rows.empty:
        return "No results yet: run `make study`."
    runs = len(final_rows(rows))
    order = [s for s in core.STRATEGIES if s in set(rows.strategy)]
    groups = {"everywhere": [], "fresh": [], "batch": [], "first": [], "none": []}
    for name in order:
        part = rows[rows.strategy == name]
        promises, held_out = set(part.promise), part.drift_eval.max()
        if held_out == 0:
            groups["everywhere"].append(f"`{name}`")
        elif "exact" in promises:
            moved = part[part.promise != "exact"].drift_eval.max()
            groups["fresh"].append(f"`{name}` (otherwise held-out drift up to {moved:.2g})")
        elif promises & {"batch_exact", "reference_exact"}:
            groups["batch"].append(f"`{name}` (batch drift <= {part.drift_train.max():.2g}, "
                                   f"held-out up to {held_out:.2g})")
        elif promises & {"first_order", "reference_first_order"}:
            promised = part[part.promise != "none"]
            text = (f"`{name}` (halving lr cuts one step's drift >= "
                    f"{promised.drift_ratio.min():.3g}x; held-out up to "
                    f"{promised.drift_eval.max():.2g}")
            if "none" in promises:  # only some optimizer set-ups keep the promise
                text += (f"; where `su.promise` says none, held-out drift up to "
                         f"{part[part.promise == 'none'].drift_eval.max():.2g}")
            groups["first"].append(text + ")")
        else:
            groups["none"].append(f"`{name}` {held_out:.2g}")
    say = {"everywhere": "bitwise fixed on every input, in every run",
           "fresh": "exact only while no decay or optimizer state moves a zero-gradient weight",
           "batch": "exact on the protected batch, not beyond it",
           "first": "fixed to first order on the batch",
           "none": "no guarantee (largest held-out drift)"}
    failed = rows[~rows.holds.astype(bool)].groupby(CONFIG).ngroups
    lines = [f"- **{say[k]}**: {', '.join(v)}." for k, v in groups.items() if v]
    lines.append(f"- Over {runs:,} runs ({rows.dataset.nunique()} datasets x both frameworks x "
                 f"{rows.optimizer.nunique()} optimizers x weight decay x warm start x seeds), "
                 + ("every promise held." if not failed else
                    f"**{failed} configurations broke their promise**."))
    return "\n".join(lines)


def collapsed(table, summary):
    """HTML: a long table folded under a one-line summary (click to open)."""
    from IPython.display import HTML

    body = table.to_html() if hasattr(table, "to_html") else str(table)
    return HTML(f"<details><summary>{html.escape(summary)}</summary>{body}</details>")


def style_result(table):
    """Colour the result column (green pass, red FAIL) and format the numbers."""
    def colour(value):
        return ("background-color: #c8f0c8" if value == "pass"
                else "background-color: #f5b0b0; font-weight: bold" if value == "FAIL" else "")

    fmt = {c: ("{:g}" if c in ("weight_decay", "lr") else "{:.3g}") for c in table.columns
           if table[c].dtype.kind == "f"}
    return table.style.map(colour, subset=["result"]).format(fmt, na_rep="").hide(axis="index")


def framework_agreement(results):
    """Max |tf1 - torch| of the outputs (batch and held-out, every step) per configuration.

    `results` maps (framework, optimizer, weight_decay, warm_start_steps, seed) to RunResult.
    """
    import pandas as pd

    out = []
    for (fw, opt, wd, warm, seed), r in sorted(results.items()):
        if fw != "tf1" or ("torch", opt, wd, warm, seed) not in results:
            continue
        t = results[("torch", opt, wd, warm, seed)]
        out.append({"optimizer": opt, "weight_decay": wd, "warm_start_steps": warm, "seed": seed,
                    "max |tf1 - torch| batch": float(np.abs(r.outputs - t.outputs).max()),
                    "max |tf1 - torch| held-out":
                        float(np.abs(r.eval_outputs - t.eval_outputs).max())})
    frame = pd.DataFrame(out)
    if frame.empty:
        return frame
    return frame.groupby(["optimizer", "weight_decay", "warm_start_steps"]).max(
        numeric_only=True).drop(columns="seed").reset_index()


def accuracy_table(rows):
    """Held-out accuracy on the kept and trained classes, before and after (digits)."""
    import pandas as pd

    last = rows.step.max()
    keys = ["framework", "optimizer", "weight_decay", "warm_start_steps"]
    before = rows[rows.step == 0].groupby(keys)[["acc_keep", "acc_train"]].mean()
    after = rows[rows.step == last].groupby(keys)[["acc_keep", "acc_train"]].mean()
    return pd.DataFrame({"kept classes before": before.acc_keep,
                         "kept classes after": after.acc_keep,
                         "trained class before": before.acc_train,
                         "trained class after": after.acc_train}).reset_index()


def seed_table(tf1_demo, torch_demo, keep=(0,), train=(1,)):
    """Side by side, per phase of the seed's demo: output 1 / 2 change, loss, loss2 in both."""
    import pandas as pd

    a = pd.DataFrame(tf1_demo.rows(keep, train)).set_index("phase")
    b = pd.DataFrame(torch_demo.rows(keep, train)).set_index("phase")
    table = pd.concat({"tf1": a, "torch": b}, axis=1).swaplevel(axis=1)
    order = ["out1_change", "out2_change", "loss", "loss2"]
    table = table[[(c, fw) for c in order for fw in ("tf1", "torch")]]
    table[("max |tf1 - torch|", "outputs")] = np.abs(
        tf1_demo.outputs - torch_demo.outputs).max(axis=(1, 2))
    return table


def seed_verdict(tf1_demo, torch_demo, keep=(0,), train=(1,)):
    """Markdown: which of the seed's phases kept output 1 bitwise fixed, in each framework."""
    from IPython.display import Markdown

    lines = []
    for i, phase in enumerate(tf1_demo.phases[1:], start=1):
        cells = []
        for fw, demo in (("tf1", tf1_demo), ("torch", torch_demo)):
            change = float(demo.rows(keep, train)[i]["out1_change"])
            kept = "**kept exactly** (0.0)" if change == 0 else f"moved {change:.3g}"
            cells.append(f"{fw}: {kept}")
        order = " (G' cancels the first order)" if phase == core.COMPENSATED_PHASE else ""
        lines.append(f"- `{phase}`: kept output " + "; ".join(cells) + order)
    return Markdown("\n".join(lines))


def seed_compensation(tf1_demo, torch_demo, keep=(0,), train=(1,)):
    """Per sample, TF1 next to PyTorch: alpha (G = [0, -1] becomes G' = [-alpha, -1]) and the
    change of each output over the compensated phase (kept: second order; trained: its rise)."""
    import pandas as pd

    columns = {}
    for fw, demo in (("tf1", tf1_demo), ("torch", torch_demo)):
        change = demo.change(core.COMPENSATED_PHASE)
        for k, j in enumerate(keep):
            columns[(f"alpha, output {j + 1}", fw)] = demo.alpha[k]
            columns[(f"output {j + 1} change (kept)", fw)] = change[:, j]
        for j in train:
            columns[(f"output {j + 1} change (trained)", fw)] = change[:, j]
    table = pd.DataFrame(columns).sort_index(axis=1, level=0, sort_remaining=False)
    table.index.name = "sample"
    return table


def seed_orders(tf1_demo, torch_demo, keep=(0,), train=(1,)):
    """Markdown: output 1's change under G' (second order) next to train_op_all's (first order),
    and output 2's rise, in each framework."""
    from IPython.display import Markdown

    lines = []
    for fw, demo in (("tf1", tf1_demo), ("torch", torch_demo)):
        rows = {row["phase"]: row for row in demo.rows(keep, train)}
        full = rows["train_op_all"]["out1_change"]
        compensated = rows[core.COMPENSATED_PHASE]["out1_change"]
        rise = demo.change(core.COMPENSATED_PHASE)[:, list(train)]
        risen = (f"rose by {rise.min():.3g} to {rise.max():.3g} on every sample"
                 if rise.min() > 0 else f"fell on some sample (least change {rise.min():.3g})")
        lines.append(f"- {fw}: the kept output moved {compensated:.3g} under G' against "
                     f"{full:.3g} under `train_op_all` ({full / compensated:.3g}x less); the "
                     f"trained output {risen}")
    return Markdown("\n".join(lines))


def framework_gap(results):
    """Largest |tf1 - torch| of loss, trained loss and drifts per dataset and strategy."""
    import pandas as pd

    if results.empty:
        return pd.DataFrame()
    keys = ["dataset", "strategy", "optimizer", "weight_decay", "warm_start_steps", "seed", "step"]
    values = ["loss", "train_loss", "drift_train", "drift_eval"]
    wide = results.pivot_table(index=keys, columns="framework", values=values)
    gap = pd.DataFrame({v: (wide[(v, "tf1")] - wide[(v, "torch")]).abs() for v in values})
    return gap.groupby(["dataset", "strategy"]).max().add_prefix("max |tf1 - torch| ")


def demo_printout(demo) -> str:
    """Print what the seed's demo prints after each phase: hidden, out, loss, loss2."""
    np_opts = dict(precision=5, suppress=True, linewidth=100)
    lines = []
    with np.printoptions(**np_opts):
        for i, phase in enumerate(demo.phases):
            lines += [f"--- {phase}", "hidden:", str(demo.hidden[i]), "out:", str(demo.outputs[i]),
                      f"loss: {demo.loss[i]:.6f}  loss2: {demo.loss2[i]:.6f}"]
    return "\n".join(lines)


def broken_promises(verdicts):
    """The runs whose promise broke, each with the reason measured (Markdown when none broke)."""
    from IPython.display import Markdown

    broken = verdicts[~verdicts.holds.astype(bool)] if len(verdicts) else verdicts
    if not len(broken):
        return Markdown(f"Every promise held ({len(verdicts)} runs judged).")
    return broken.drop(columns="holds").style.hide(axis="index").format(
        {"weight_decay": "{:g}"}).set_caption(f"{len(broken)} broken promises")


def failed_runs_html(status) -> str:
    """An HTML table of the failed runs, each with a link to its report; '' when none failed."""
    failed = status[status.status != "ok"] if len(status) else status
    if not len(failed):
        return ""
    rows = "".join(
        f"<tr><td><a href=\"{html.escape(r.html)}\">{html.escape(r.name)}</a></td>"
        f"<td>{html.escape(str(r.error))}</td></tr>" for r in failed.itertuples())
    return ("<table><thead><tr><th>run</th><th>error</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>")


def runs_html(status) -> str:
    """An HTML list of every run with a link to its report and its status."""
    items = "".join(
        f"<li><a href=\"{html.escape(r.html)}\">{html.escape(r.name)}</a>: "
        f"{'ok' if r.status == 'ok' else '<b>' + html.escape(r.status) + '</b>'}</li>"
        for r in status.itertuples())
    return f"<ul>{items}</ul>"


# --- markdown helpers -----------------------------------------------------------------------------

def strategy_card(name):
    """Markdown: the strategy's name, summary, source and promise per optimizer set-up."""
    from IPython.display import Markdown

    s = core.STRATEGIES[name]
    lines = [f"**{s.name}**: {s.summary}", "", f"*Where it comes from:* {s.source}.", "",
             "| optimizer | weight_decay | warm_start_steps | promise |", "|---|---|---|---|"]
    for opt in core.OPTIMIZERS:
        for wd in (0.0, 0.01):
            for warm in (0, 2):
                lines.append(f"| {opt} | {wd:g} | {warm} | "
                             f"{core.promise(name, opt, weight_decay=wd, warm_start_steps=warm)} |")
    return Markdown("\n".join(lines))


def show_source(obj):
    """Markdown: the source code of a function, as a Python code block."""
    from IPython.display import Markdown

    return Markdown(f"```python\n{inspect.getsource(obj)}```")
