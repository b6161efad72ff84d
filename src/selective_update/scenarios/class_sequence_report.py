"""The class sequence's answer, tables and figures (notebooks/class_sequence.ipynb, the summary).

Every function takes reports/class_sequence.csv (class_sequence.COLUMNS, one row per task and
seed) or class_sequence_summary.csv (ACC and BWT with 95% t-intervals), so the summary page can
call them on the files alone. Differences are called only where the intervals separate.
"""
from __future__ import annotations

import numpy as np

from ..settings import CLASS_SEQUENCE_MAX_FORGETTING as MAX_FORGETTING
from . import stats
from .class_sequence import N_CLASSES, RECALLS
from .new_class_report import CEILING, FLOOR, label, strategy_colors

TABLE_COLUMNS = ["hidden", "framework", "strategy", "setting", "optimizer", "lr", "epochs",
                 "n_seeds", "acc_mean", "acc_ci_low", "acc_ci_high", "bwt_mean", "bwt_ci_low",
                 "bwt_ci_high"]


def summary_table(summary):
    """Return the summary sorted by hidden width, framework and ACC (highest first)."""
    return summary.sort_values(["hidden", "framework", "acc_mean"], ascending=[True, True, False],
                               kind="mergesort")[TABLE_COLUMNS].reset_index(drop=True)


def _scores(row) -> str:
    return f"ACC {stats.shown(row, 'acc')}, BWT {stats.shown(row, 'bwt')}"


def answer_markdown(summary, framework="torch") -> str:
    """Say, per hidden width, how the strategies score on the sequence (Markdown list)."""
    lines = []
    for hidden, g in summary[summary.framework == framework].groupby("hidden", sort=True):
        lines += [f"**Hidden {hidden}**, classes 5-9 learned one at a time after 0-4 "
                  f"({framework}, {int(g.n_seeds.min())} seeds; mean [95% t-interval]):", ""]
        for strategy, name in ((CEILING, "Ceiling, joint training"),
                               (FLOOR, "Floor, fine-tuning")):
            bound = g[g.strategy == strategy]
            if len(bound):
                lines.append(f"- **{name}** (`{strategy}`): {_scores(bound.iloc[0])}.")
        ranked = g[np.isfinite(g.acc_mean) & ~g.strategy.isin([CEILING, FLOOR])].sort_values(
            ["acc_mean", "bwt_mean"], ascending=False, kind="mergesort")
        if len(ranked):
            top = ranked.iloc[0]
            line = f"- **Highest ACC** (bounds aside): {label(top)}, {_scores(top)}"
            ceiling = g[g.strategy == CEILING]
            if len(ceiling):
                line += "; against the ceiling: " + stats.compared(
                    top, ceiling.iloc[0], "acc", label(top), "joint training")
            lines.append(line + ".")
            close = [label(r) for _, r in ranked.iloc[1:].iterrows()
                     if not stats.separated(top, r, "acc")]
            below = [label(r) for _, r in ranked.iloc[1:].iterrows()
                     if stats.separated(top, r, "acc")]
            lines.append(f"- **Within noise of it** (ACC intervals overlap): "
                         f"{', '.join(close) or 'none'}; **below it** (intervals separate): "
                         f"{', '.join(below) or 'none'}.")
            steady = ranked[ranked.bwt_ci_low >= -MAX_FORGETTING]
            if len(steady):
                best = steady.iloc[0]
                lines.append(f"- **Highest ACC forgetting at most {MAX_FORGETTING}** (BWT "
                             f"interval above -{MAX_FORGETTING}): {label(best)}, "
                             f"{_scores(best)}.")
        lines.append("")
    return "\n".join(lines).strip()


def recall_matrix(rows, framework="torch"):
    """Return the mean recall per strategy, task and class: {(strategy, setting): (6, 10)}."""
    part = rows[rows.framework == framework]
    mean = part.groupby(["strategy", "setting", "task"], sort=True)[RECALLS].mean()
    return {key: g.droplevel([0, 1]).to_numpy() for key, g in mean.groupby(level=[0, 1])}


def plot_class_accuracy(rows, framework="torch"):
    """Draw, per strategy, the recall of every class after every task (mean over seeds).

    Rows: after task 0 (pretrained on 0-4) to task 5 (9 learned); columns: classes 0-9; a blank
    cell is a class not seen yet.
    """
    import matplotlib.pyplot as plt

    matrices = recall_matrix(rows, framework)
    n = len(matrices)
    cols = min(4, n)
    fig, axes = plt.subplots(-(-n // cols), cols, figsize=(3.3 * cols, 2.8 * -(-n // cols)),
                             squeeze=False, layout="constrained")
    order = sorted(matrices, key=lambda k: (k[0] not in (CEILING, FLOOR), k))  # bounds first
    for ax, (strategy, setting) in zip(axes.flat, order):
        R = matrices[strategy, setting]
        image = ax.imshow(np.ma.masked_invalid(R), vmin=0, vmax=1, cmap="viridis",
                          aspect="auto")
        ax.set_title(strategy + ("" if setting == "none" else f"\n{setting}"), fontsize=8)
        ax.set_xticks(range(N_CLASSES))
        ax.set_yticks(range(R.shape[0]), ["0-4"] + [str(c) for c in range(5, 10)])
        ax.tick_params(labelsize=7)
        ax.set_xlabel("class", fontsize=7)
        ax.set_ylabel("after learning", fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.colorbar(image, ax=axes, shrink=0.6, label="held-out recall (mean over seeds)")
    fig.suptitle(f"Recall of each class after each task ({framework}); blank: not seen yet",
                 fontsize=10)
    return fig


def _clipped(row, metric, low, high):
    """Return a row's interval as errorbar distances, drawn clipped to [low, high]."""
    mean, lo, hi = (row[f"{metric}_{s}"] for s in stats.SUFFIXES)
    if not np.isfinite(lo):
        return None
    return [[mean - max(lo, low)], [min(hi, high) - mean]]


def plot_acc_bwt(summary, framework="torch"):
    """Draw ACC against BWT, one point per strategy (mean, 95% t-intervals on both axes, drawn
    clipped to the metrics' ranges)."""
    import matplotlib.pyplot as plt

    g = summary[summary.framework == framework]
    colors = strategy_colors(g.strategy.unique())
    fig, ax = plt.subplots(figsize=(8.5, 5))
    for _, r in g.iterrows():
        xerr, yerr = _clipped(r, "bwt", -1.0, 1.0), _clipped(r, "acc", 0.0, 1.0)
        marker = "^" if r.strategy == CEILING else "v" if r.strategy == FLOOR else "o"
        ax.errorbar(r.bwt_mean, r.acc_mean, xerr=xerr, yerr=yerr, color=colors[r.strategy],
                    marker=marker, ms=7, capsize=3, ls="none",
                    label=f"{r.strategy}" + ("" if r.setting == "none" else f" ({r.setting})"))
    ax.axvline(0, color="grey", lw=0.8, ls=":")
    ax.set(xlabel="BWT (backward transfer; negative: forgetting)",
           ylabel="ACC (mean final recall over the 10 classes)",
           title=f"The class sequence ({framework}): mean over seeds with 95% t-intervals")
    ax.set_ylim(-0.05, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False)
    fig.tight_layout()
    return fig


def selected_table(sweep):
    """Return each strategy's chosen point with its validation ACC and BWT (sweep seeds' mean)."""
    chosen = sweep[sweep.selected.astype(bool)]
    return chosen.groupby(["hidden", "strategy", "setting", "optimizer", "lr", "epochs"],
                          sort=True).agg(acc=("acc", "mean"), bwt=("bwt", "mean"),
                                         drift_max=("drift_max", "mean")).reset_index()


def headline_markdown(summary, framework="torch", top=5) -> str:
    """The README's table: the bounds and the `top` strategies by ACC, with ACC and BWT and their
    95% intervals (every strategy: answer_markdown)."""
    from ..files import markdown_table

    body = []
    for hidden, g in summary[summary.framework == framework].groupby("hidden", sort=True):
        ranked = g.sort_values(["acc_mean", "bwt_mean"], ascending=False, kind="mergesort")
        shown = ranked[ranked.strategy.isin([CEILING, FLOOR])
                       | ranked.index.isin(ranked[~ranked.strategy.isin([CEILING, FLOOR])]
                                           .index[:top])]
        for _, r in shown.iterrows():
            body.append([hidden, label(r), stats.shown(r, "acc"), stats.shown(r, "bwt")])
    n = int(summary.n_seeds.min()) if len(summary) else 0
    return (f"{framework}, {n} seeds, mean [95% Student t interval], GEM's ACC and BWT over the "
            f"10 classes; the bounds and the {top} highest ACC:\n\n"
            + markdown_table(["hidden", "strategy", "ACC", "BWT"], body))
