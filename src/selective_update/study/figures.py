"""The study's figures: drift per step, held-out vs batch, drift vs lr, trade-offs."""
from __future__ import annotations

import numpy as np

from .. import core
from . import report

# Drift is plotted on a log scale; an exact 0 is drawn at this floor.
LOG_FLOOR = 1e-18


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
    """Small multiples: one panel per (row value, col value), a line per optimizer x framework.

    Plain matplotlib (one ax.plot per line): seaborn's lineplot cost ~2 s a figure here.
    """
    import matplotlib.pyplot as plt

    row_values = list(dict.fromkeys(frame[rows])) if rows else [None]
    col_values = list(dict.fromkeys(frame[cols]))
    fig, axes = plt.subplots(len(row_values), len(col_values), squeeze=False, sharex=True,
                             sharey=sharey, figsize=(width * len(col_values),
                                                     height * len(row_values) + 0.6))
    colors = dict(zip(dict.fromkeys(frame.optimizer), plt.get_cmap("tab10").colors))
    styles = {"tf1": ("o", "-"), "torch": ("X", "--")}
    keys = [rows, cols] if rows else [cols]
    for key, part in frame.groupby(keys + ["optimizer", "framework"], sort=False):
        rv, cv, opt, fw = key if rows else (None, *key)
        ax = axes[row_values.index(rv)][col_values.index(cv)]
        marker, line = styles.get(fw, ("s", ":"))
        part = part.sort_values("step")
        ax.plot(part.step, part[y], marker=marker, ls=line, color=colors[opt], ms=4, lw=1.2,
                label=f"{opt}, {fw}")
    for i, rv in enumerate(row_values):
        for j, cv in enumerate(col_values):
            ax = axes[i][j]
            ax.set_title(" | ".join(str(v) for v in (rv, cv) if v is not None), fontsize=9)
            ax.set(xlabel="step" if i == len(row_values) - 1 else "", ylabel=y)
            if logy:
                ax.set_yscale("log")
                ax.axhline(LOG_FLOOR, color="grey", lw=0.8, ls=":")
    handles, labels = axes[0][-1].get_legend_handles_labels()
    if handles:
        axes[0][-1].legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1),
                           fontsize=8)
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

    final = report.final_rows(rows)
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

    final = report.final_rows(rows)
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


def plot_overview(rows):
    """The headline: each strategy's largest kept-output drift, on the batch and held out."""
    if rows.empty:
        return None
    import matplotlib.pyplot as plt
    import seaborn as sns

    long = drift_long(rows[rows.step > 0])
    top = long.groupby(["strategy", "split"], sort=False)["drift"].max().reset_index()
    order = [s for s in core.STRATEGIES if s in set(rows.strategy)]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(order) + 1.6))
    sns.stripplot(data=top, x="drift", y="strategy", hue="split", order=order,
                  hue_order=["batch", "held-out"], dodge=True, jitter=False, size=7,
                  marker="o", ax=ax, palette=["#1f77b4", "#d62728"], legend=True)
    ax.set(xscale="log", xlabel="largest drift of a kept output (log; exact 0 on the left edge)",
           ylabel="")
    ax.axvline(LOG_FLOOR, color="grey", lw=0.8, ls=":")
    # outside the axes, right of them: inside, it covered the last rows' points
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_title("Where each strategy keeps the kept outputs (max over every run and step)")
    fig.tight_layout()
    return fig
