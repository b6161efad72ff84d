"""Judge promises from measured numbers, build the study's tables and figures, render offline HTML.

Notebooks call these helpers so that each cell stays a few clear calls. pandas, seaborn and
nbconvert are imported inside the functions that need them.
"""
from __future__ import annotations

import html
import inspect
import os
import re
import tempfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

from . import core

# --- judging a promise from measured numbers ------------------------------------------------------

# batch_exact: the kept outputs on the batch are back within this of their start, every step.
BATCH_EXACT_TOL = {"float64": 1e-10, "float32": 1e-4}
# first_order: one step's batch drift at lr over the drift at lr/2 (2nd order: 4; 1st order: 2).
FIRST_ORDER_RATIO = 2.8
# Drift is plotted on a log scale; an exact 0 is drawn at this floor.
LOG_FLOOR = 1e-18


class Verdict(NamedTuple):
    """Say whether a promise held and what was measured (one line)."""

    holds: bool
    measured: str


def promise_holds(promise, drift_train, drift_eval, *, dtype="float64",
                  drift_train_half_lr=None) -> Verdict:
    """Judge one run's promise from its measured drift of the kept outputs.

    drift_train / drift_eval: per step (step 0 first), max |change| of the kept outputs since the
    start, on the batch and on held-out inputs (RunResult.drift_train / drift_eval).

    - exact: every drift, batch and held-out, is exactly 0;
    - batch_exact: batch drift <= 1e-10 (float64) or 1e-4 (float32) at every step;
    - first_order: the one-step batch drift at lr is >= 2.8x the one-step batch drift of a run
      at lr/2 (`drift_train_half_lr`: that run's drift after its first step), or already below
      the batch_exact tolerance;
    - none: nothing is promised, so it holds; the drift is reported.
    """
    core._check_choice("promise", promise, core.PROMISES)
    core._check_choice("dtype", dtype, core.DTYPES)
    drift_train = np.asarray(drift_train, dtype=np.float64)
    drift_eval = np.asarray(drift_eval, dtype=np.float64)
    batch, held_out = float(drift_train.max()), float(drift_eval.max())
    seen = f"batch {batch:.3g}, held-out {held_out:.3g}"
    tol = BATCH_EXACT_TOL[dtype]
    if promise == "exact":
        return Verdict(batch == 0.0 and held_out == 0.0, seen)
    if promise == "batch_exact":
        return Verdict(batch <= tol, seen)
    if promise == "first_order":
        if drift_train_half_lr is None:
            raise ValueError("drift_train_half_lr: got None; allowed: the one-step batch drift of "
                             "the same run at lr/2 (a first_order promise needs it)")
        one, half = float(drift_train[1]), float(drift_train_half_lr)
        if one <= tol:
            return Verdict(True, f"one-step batch drift {one:.3g} <= {tol:g}; {seen}")
        ratio = drift_ratio(one, half)
        return Verdict(ratio >= FIRST_ORDER_RATIO, f"lr/(lr/2) drift ratio {ratio:.3g}; {seen}")
    return Verdict(True, f"nothing promised; {seen}")


def drift_ratio(drift_one_step, drift_half_lr) -> float:
    """Return the one-step batch drift at lr over the one at lr/2 (inf when the latter is 0)."""
    return float(drift_one_step) / float(drift_half_lr) if drift_half_lr > 0 else float("inf")


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
    """The measured promise table (strategy x promise) as Markdown, e.g. for the README."""
    lines = ["| strategy | promise | max batch drift | max held-out drift | min lr ratio | "
             "held in every run |", "|---|---|---|---|---|---|"]
    for r in promise_table(results, by=("strategy", "promise")).to_dict("records"):
        ratio = "" if np.isnan(r["min lr ratio"]) else f"{r['min lr ratio']:.3g}"
        lines.append(f"| `{r['strategy']}` | {r['promise']} | {r['max batch drift']:.3g} | "
                     f"{r['max held-out drift']:.3g} | {ratio} | "
                     f"{'yes' if r['holds'] else '**no**'} |")
    return "\n".join(lines)


def style_result(table):
    """Colour the result column (green pass, red FAIL) and format the numbers."""
    def colour(value):
        return ("background-color: #c8f0c8" if value == "pass"
                else "background-color: #f5b0b0; font-weight: bold" if value == "FAIL" else "")

    fmt = {c: "{:.3g}" for c in table.columns
           if table[c].dtype.kind == "f" and c not in ("weight_decay", "lr")}
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
            cells.append(f"{fw}: {'**kept exactly** (0.0)' if change == 0 else f'moved {change:.3g}'}")
        lines.append(f"- `{phase}`: kept output " + "; ".join(cells))
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


# --- figures (seaborn) ----------------------------------------------------------------------------

def _setup_label(frame):
    return ("wd=" + frame.weight_decay.map("{:g}".format) + ", warm="
            + frame.warm_start_steps.astype(str))


def drift_long(rows):
    """Drift in long form (split = batch | held-out), exact zeros moved to the log floor."""
    import pandas as pd

    keep = [c for c in rows.columns if c not in ("drift_train", "drift_eval")]
    long = pd.concat([rows[keep].assign(split="batch", drift=rows.drift_train),
                      rows[keep].assign(split="held-out", drift=rows.drift_eval)])
    long["drift"] = long["drift"].clip(lower=LOG_FLOOR)
    long["set-up"] = _setup_label(long)
    return long


def _floor_line(grid):
    for ax in grid.axes.flat:
        ax.axhline(LOG_FLOOR, color="grey", lw=0.8, ls=":")
    grid.figure.text(0.01, 0.003, f"dotted: exactly 0 (drawn at {LOG_FLOOR:g})", fontsize=8)


def _panels(frame, rows, cols, y, *, logy, title=None, sharey=True, width=4.0, height=2.1):
    """Small multiples with seaborn lines: one panel per (row value, col value); max over seeds."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    row_values = list(dict.fromkeys(frame[rows])) if rows else [None]
    col_values = list(dict.fromkeys(frame[cols]))
    fig, axes = plt.subplots(len(row_values), len(col_values), squeeze=False, sharex=True,
                             sharey=sharey, figsize=(width * len(col_values),
                                                     height * len(row_values) + 0.6))
    hue_order = list(dict.fromkeys(frame.optimizer))
    for i, rv in enumerate(row_values):
        for j, cv in enumerate(col_values):
            ax = axes[i][j]
            part = frame[(frame[cols] == cv) & ((frame[rows] == rv) if rows else True)]
            sns.lineplot(data=part, x="step", y=y, hue="optimizer", hue_order=hue_order,
                         style="framework", style_order=["tf1", "torch"], estimator=None,
                         markers=True, ax=ax, legend=(i == 0 and j == len(col_values) - 1))
            ax.set_title(" | ".join(str(v) for v in (rv, cv) if v is not None), fontsize=9)
            if logy:
                ax.set_yscale("log")
                ax.axhline(LOG_FLOOR, color="grey", lw=0.8, ls=":")
    legend = axes[0][-1].get_legend()
    if legend is not None:
        sns.move_legend(axes[0][-1], "upper left", bbox_to_anchor=(1.02, 1), fontsize=8)
    if logy:
        fig.text(0.01, 0.002, f"dotted: exactly 0 (drawn at {LOG_FLOOR:g})", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_drift(rows, title=None):
    """Drift of the kept outputs per step, batch and held-out, log scale (max over seeds)."""
    if rows.empty:
        return None
    long = drift_long(rows[rows.step > 0])
    keys = ["set-up", "split", "optimizer", "framework", "step"]
    top = long.groupby(keys, sort=False)["drift"].max().reset_index()
    return _panels(top, "set-up", "split", "drift", logy=True, title=title)


def plot_loss(rows, title=None):
    """Trained outputs' loss per step (mean over seeds), one panel per optimizer set-up."""
    if rows.empty:
        return None
    frame = rows.assign(**{"set-up": _setup_label(rows)})
    keys = ["set-up", "optimizer", "framework", "step"]
    mean = frame.groupby(keys, sort=False)["train_loss"].mean().reset_index()
    return _panels(mean, None, "set-up", "train_loss", logy=False, title=title, sharey=False,
                   width=3.2, height=2.4)


def final_rows(rows):
    """One row per run (its last step) with the trained-loss improvement."""
    keys = [c for c in ["dataset", "strategy", "framework", "optimizer", "weight_decay",
                        "warm_start_steps", "seed"] if c in rows]
    first = rows[rows.step == 0].set_index(keys)
    last = rows.loc[rows.groupby(keys).step.idxmax()].set_index(keys)
    last = last.assign(loss_improvement=(first.train_loss - last.train_loss)
                       / first.train_loss)
    return last.reset_index()


def plot_drift_by_strategy(rows):
    """Drift vs step per strategy (both datasets), batch and held-out, log scale."""
    if rows.empty:
        return None
    import seaborn as sns

    long = drift_long(rows[rows.step > 0])
    grid = sns.relplot(data=long, x="step", y="drift", hue="optimizer", style="split",
                       col="strategy", row="dataset", kind="line", estimator="max",
                       errorbar=None, height=2.0, aspect=1.1)
    grid.set(yscale="log")
    grid.set_titles("{row_name} | {col_name}", size=8)
    _floor_line(grid)
    return grid


def plot_heldout_vs_batch(rows):
    """Final held-out drift against final batch drift per run, log-log, with the diagonal."""
    if rows.empty:
        return None
    import matplotlib.pyplot as plt
    import seaborn as sns

    final = final_rows(rows)
    x = final.drift_train.clip(lower=LOG_FLOOR)
    y = final.drift_eval.clip(lower=LOG_FLOOR)
    fig, ax = plt.subplots(figsize=(7, 5))
    sns.scatterplot(x=x, y=y, hue=final.strategy, style=final.dataset, ax=ax, s=25)
    ax.set(xscale="log", yscale="log", xlabel="batch drift (last step)",
           ylabel="held-out drift (last step)")
    lim = [LOG_FLOOR, max(float(x.max()), float(y.max()), 1.0) * 2]
    ax.plot(lim, lim, color="grey", lw=0.8, ls="--")
    ax.legend(fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
    return fig


def lr_slopes(sweep):
    """Fit log(drift) against log(lr) per strategy, dataset and framework (non-zero drift)."""
    import pandas as pd

    out = []
    keys = ["dataset", "strategy", "framework", "optimizer"]
    for key, g in sweep.groupby(keys):
        g = g[g.drift_train > 0]
        slope = (np.polyfit(np.log(g.lr), np.log(g.drift_train), 1)[0]
                 if g.lr.nunique() >= 2 else np.nan)
        out.append(dict(zip(keys, key), slope=slope))
    return pd.DataFrame(out)


def plot_drift_vs_lr(sweep, strategies=None):
    """One step's batch drift against lr, log-log (second order: slope 2)."""
    if sweep.empty:
        return None
    import seaborn as sns

    frame = sweep if strategies is None else sweep[sweep.strategy.isin(strategies)]
    frame = frame[frame.drift_train > 0]
    if frame.empty:
        print(f"no non-zero one-step drift for {strategies or 'any strategy'} in this study")
        return None
    grid = sns.relplot(data=frame, x="lr", y="drift_train", hue="optimizer", style="framework",
                       col="strategy", row="dataset", kind="line", markers=True, errorbar=None,
                       height=2.4, aspect=1.2)
    grid.set(xscale="log", yscale="log", ylabel="one-step batch drift")
    grid.set_titles("{row_name} | {col_name}", size=9)
    lrs = np.array(sorted(frame.lr.unique()))
    for ax in grid.axes.flat:  # reference slopes through the panel's largest-lr point
        ax.set_xticks(lrs, [f"{v:.3g}" for v in lrs], minor=False)
        ax.set_xticks([], minor=True)
        lines = [line for line in ax.get_lines() if len(line.get_xdata())]
        if lines:
            x0, y0 = lines[0].get_xdata()[-1], lines[0].get_ydata()[-1]
            ax.plot(lrs, y0 * (lrs / x0) ** 2, color="black", lw=0.8, ls="--")
            ax.plot(lrs, y0 * (lrs / x0), color="grey", lw=0.8, ls=":")
    grid.figure.text(0.01, 0.003, "dashed: slope 2; dotted: slope 1", fontsize=8)
    return grid


def plot_tradeoff(rows):
    """Trained-loss improvement against the kept outputs' held-out drift, per run."""
    if rows.empty:
        return None
    import matplotlib.pyplot as plt
    import seaborn as sns

    final = final_rows(rows)
    fig, axes = plt.subplots(1, final.dataset.nunique(), figsize=(11, 4), squeeze=False)
    for ax, (dataset, g) in zip(axes[0], final.groupby("dataset")):
        sns.scatterplot(data=g.assign(drift_eval=g.drift_eval.clip(lower=LOG_FLOOR)),
                        x="loss_improvement", y="drift_eval", hue="strategy", style="optimizer",
                        ax=ax, s=25, legend=ax is axes[0][-1])
        ax.set(yscale="log", title=dataset, xlabel="relative trained-loss improvement",
               ylabel="held-out drift of kept outputs")
    axes[0][-1].legend(fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
    fig.tight_layout()
    return fig


# --- HTML that views offline ----------------------------------------------------------------------

TEMPLATES = Path(__file__).resolve().parent / "templates"
TEMPLATE = "offline"
# A tag or CSS url() that makes the browser fetch something from the network.
_EXTERNAL = re.compile(
    r"""<(?:script|img|iframe|audio|video|source|embed)\b[^>]*\bsrc\s*=\s*["']?\s*(?:https?:)?//"""
    r"""|<link\b[^>]*\bhref\s*=\s*["']?\s*(?:https?:)?//"""
    r"""|@import\s+(?:url\()?\s*["']?\s*(?:https?:)?//"""
    r"""|url\(\s*["']?\s*(?:https?:)?//""", re.IGNORECASE)


def external_references(text) -> list:
    """Return every fetch an HTML page would make off the file (scripts, styles, images, fonts)."""
    return [m.group(0) for m in _EXTERNAL.finditer(text)]


def exporter():
    """An HTMLExporter on the offline template (lab look, no CDN scripts)."""
    from nbconvert import HTMLExporter

    return HTMLExporter(template_name=TEMPLATE, extra_template_basedirs=[str(TEMPLATES)])


_UMASK = os.umask(0o022)
os.umask(_UMASK)


def atomic_write(path, data):
    """Write text or bytes to path through a temporary sibling and os.replace (all or nothing)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "wb" if isinstance(data, bytes) else "w"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({} if mode == "wb" else {"encoding": "utf-8"})) as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def render_html(notebook, html_path, title=None):
    """Render an executed notebook (path or NotebookNode) to a self-contained offline HTML file."""
    import nbformat

    nb = nbformat.read(str(notebook), as_version=4) if isinstance(notebook, (str, Path)) \
        else notebook
    if title:
        nb.metadata["title"] = title
    body, _ = exporter().from_notebook_node(nb)
    found = external_references(body)
    if found:  # the template should make this impossible; never ship a page that phones home
        raise RuntimeError(f"{html_path}: external references in the HTML: {found[:3]}")
    atomic_write(html_path, body)
    return Path(html_path)
