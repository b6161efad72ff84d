"""The new-class scenario's answer, tables and trade-off figure (notebooks/new_class.ipynb and the
summary page).

Every function takes the rows of reports/new_class.csv (new_class.COLUMNS, one per seed), its
summary new_class_summary.csv (new_class.SUMMARY_COLUMNS) or the sweep new_class_sweep.csv, so the
summary page can call them on the files alone. A difference between two rows is called only where
their 95% intervals separate (scenarios.stats.compared); otherwise it is within noise.
"""
from __future__ import annotations

import numpy as np

from ..settings import NEW_CLASS_MAX_ACC_DROP as MAX_ACC_DROP
from . import stats
from .strategy_settings import CEILING, FLOOR

FRONT_COLUMNS = ["hidden", "framework", "strategy", "setting", "optimizer", "lr", "epochs",
                 "n_seeds", "recall_new_mean", "recall_new_ci_low", "recall_new_ci_high",
                 "accuracy_kept_mean", "accuracy_kept_before", "drift_max_mean",
                 "drift_max_ci_low", "drift_max_ci_high"]
DRIFT_FLOOR = 1e-4  # the symlog axis is linear below this, so an exact 0 is drawn at 0
DRIFT_BOUNDS = (0.01, 0.1)  # the answer names the best recall within each held-out drift
DRIFT_CLIP = 10.0  # drifts beyond (diverged runs) are drawn at the panel's right edge


def front_table(summary):
    """Return the front's rows (pareto on the means), by hidden width, framework and drift."""
    front = summary[summary["pareto"].astype(bool)]
    return front.sort_values(["hidden", "framework", "drift_max_mean", "recall_new_mean"],
                             kind="mergesort")[FRONT_COLUMNS].reset_index(drop=True)


def label(row) -> str:
    """Name a summary row: `strategy` (setting), optimizer."""
    setting = "" if row["setting"] == "none" else f" ({row['setting']})"
    return f"`{row['strategy']}`{setting}"


def _metrics(row) -> str:
    return (f"recall {stats.shown(row, 'recall_new')}, accuracy on 0-8 "
            f"{stats.shown(row, 'accuracy_kept', 3)}, kept drift "
            f"{stats.shown(row, 'drift_max', 2)}")


def _best(rows, by="recall_new_mean"):
    return rows.sort_values([by, "drift_max_mean"], ascending=[False, True],
                            kind="mergesort").iloc[0]


def width_answer(g) -> list:
    """Return the answer's bullet lines for one hidden width and framework (summary rows)."""
    lines, finite = [], g[np.isfinite(g.drift_max_mean)]
    for strategy, name in ((CEILING, "Ceiling, joint training"), (FLOOR, "Floor, fine-tuning")):
        bound = g[g.strategy == strategy]
        if len(bound):
            lines.append(f"- **{name}** (`{strategy}`): {_metrics(bound.iloc[0])}.")
    exact = finite[(finite.drift_max_mean == 0) & ~(finite.drift_max_ci_high > 0)]
    if len(exact):  # drift 0 in every seed
        top = _best(exact)
        line = (f"- **Kept logits bitwise fixed** (drift 0 in every seed): best {label(top)}, "
                f"recall {stats.shown(top, 'recall_new')}")
        if len(exact) > 1:
            second = _best(exact[exact.index != top.name])
            line += "; " + stats.compared(top, second, "recall_new", label(top), label(second))
        lines.append(line + ".")
    before = float(g.accuracy_kept_before.mean())
    keeping = finite.accuracy_kept_mean >= before - MAX_ACC_DROP - 1e-12
    candidates = finite[keeping & ~finite.strategy.isin([CEILING, FLOOR])]
    if len(candidates):
        top = _best(candidates)
        close = [label(r) for _, r in candidates.iterrows()
                 if r.name != top.name and not stats.separated(top, r, "recall_new")]
        line = (f"- **Highest recall keeping accuracy on 0-8** (mean within {MAX_ACC_DROP} of "
                f"the pretrained net's {before:.3f}; bounds aside): {label(top)}, "
                f"{_metrics(top)}. Within noise of it (recall intervals overlap): "
                f"{', '.join(close) or 'none'}")
        ceiling = g[g.strategy == CEILING]
        if len(ceiling):
            line += "; against the ceiling: " + stats.compared(
                top, ceiling.iloc[0], "recall_new", label(top), "joint training")
        lines.append(line + ".")
    named = set()
    for bound in DRIFT_BOUNDS:
        within = candidates[(candidates.drift_max_mean > 0)
                            & (candidates.drift_max_mean <= bound)] if len(candidates) else []
        if len(within) and _best(within).name not in named:  # a row already named: no repeat
            best = _best(within)
            named.add(best.name)
            lines.append(f"- **Best recall with a mean kept drift in (0, {bound:g}]**: "
                         f"{label(best)}, {_metrics(best)}.")
    losing = g[~keeping.reindex(g.index, fill_value=False)]
    if len(losing):
        lines.append(f"- **Losing accuracy on 0-8** (mean more than {MAX_ACC_DROP} below "
                     f"{before:.3f}): " + ", ".join(
                         f"{label(r)} ({r.accuracy_kept_mean:.3f}, recall "
                         f"{r.recall_new_mean:.2f})" for _, r in losing.iterrows()) + ".")
    return lines


def answer_markdown(summary, framework="torch", skipped=None, rows=None) -> str:
    """Say what each width's answer is, as a short list with 95% intervals (Markdown).

    summary: new_class_summary.csv; rows (optional): new_class.csv, for the TF1-PyTorch gap.
    """
    lines = []
    for hidden, g in summary[summary.framework == framework].groupby("hidden", sort=True):
        n = int(g.n_seeds.min())
        lines += [f"**Hidden {hidden}** ({framework}, {n} seeds; mean [95% t-interval]):", ""]
        lines += width_answer(g) + [""]
    if skipped is not None and len(skipped):
        names = ", ".join(sorted({f"`{r.strategy}` {r.setting} (hidden {r.hidden})"
                                  for r in skipped.itertuples()}))
        lines.append(f"Not run (too costly per step, see the cost table): {names}.")
    gap = None if rows is None else framework_gap(rows)
    if gap is not None:
        lines.append(f"TF1 and PyTorch agree: largest difference over matching runs {gap:.2g} "
                     "(recall and accuracy absolute, drifts relative above 1).")
    return "\n".join(lines).strip()


def framework_gap(frame):
    """Return the largest tf1-vs-torch difference over matching per-seed rows (None if unmatched).

    Absolute for recall and accuracy; for drifts relative to max(1, |drift|), so a diverged run
    (drift 1e13) compares by its leading digits.
    """
    keys = ["hidden", "strategy", "setting", "optimizer", "seed"]
    metrics = ["recall_new", "accuracy_kept", "drift_max", "drift_mean"]
    tf1 = frame[frame.framework == "tf1"].set_index(keys)[metrics]
    torch = frame[frame.framework == "torch"].set_index(keys)[metrics]
    both = tf1.merge(torch, left_index=True, right_index=True, suffixes=("_tf1", "_torch"))
    if both.empty:
        return None
    diff = [(np.abs(both[f"{m}_tf1"] - both[f"{m}_torch"])
             / np.maximum(1.0, np.abs(both[f"{m}_torch"]) if m.startswith("drift") else 1.0)).max()
            for m in metrics]
    return float(np.nanmax(diff))


def selected_table(sweep):
    """Return the chosen (optimizer, lr, epochs) per hidden width, strategy and setting."""
    chosen = sweep[sweep.selected.astype(bool)]
    return chosen.groupby(["hidden", "strategy", "setting"], sort=True).agg(
        optimizer=("optimizer", "first"), lr=("lr", "first"), epochs=("epochs", "first"),
        admissible=("admissible", "all"), recall_new=("recall_new", "mean"),
        accuracy_kept=("accuracy_kept", "mean"), drift_max=("drift_max", "mean")).reset_index()


def cost_table(sweep_seconds):
    """Return the sweep's wall seconds per hidden width, strategy and setting, costliest first."""
    columns = ["hidden", "strategy", "setting", "tier", "work", "seconds"]
    return sweep_seconds.groupby(columns[:5], sort=True)["seconds"].sum().reset_index() \
        .sort_values("seconds", ascending=False, kind="mergesort")[columns] \
        .reset_index(drop=True)


def strategy_colors(strategies):
    """Return one colour per strategy (tab20: the 10 dark shades first, then the light ones)."""
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("tab20")
    order = list(range(0, 20, 2)) + list(range(1, 20, 2))
    return {s: cmap(order[i % 20]) for i, s in enumerate(sorted(strategies))}


def _errors(g, metric, low, high):
    """Return the (2, n) distances from the means to their interval, clipped to [low, high]."""
    mean = g[f"{metric}_mean"].clip(low, high)
    lo = g[f"{metric}_ci_low"].fillna(g[f"{metric}_mean"]).clip(low, high)
    hi = g[f"{metric}_ci_high"].fillna(g[f"{metric}_mean"]).clip(low, high)
    return mean, np.vstack([(mean - lo).clip(0), (hi - mean).clip(0)])


def plot_tradeoff_front(summary, framework="torch"):
    """Draw recall of the new class against held-out kept drift and against kept accuracy.

    One point per summary row of `framework` (the mean over seeds) with its 95% interval on both
    axes (drawn clipped to the metric's range), one row of panels per hidden width; the front
    (pareto on the means) is ringed and joined in the drift panel.
    """
    import matplotlib.pyplot as plt

    summary = summary[summary.framework == framework]
    hiddens = sorted(summary.hidden.unique())
    fig, axes = plt.subplots(len(hiddens), 2, figsize=(12.5, 3.8 * len(hiddens)), squeeze=False)
    colors = strategy_colors(summary.strategy.unique())
    markers = {"joint": "^", "fine-tuning": "v"}
    for row, hidden in zip(axes, hiddens):
        g = summary[summary.hidden == hidden]
        y, yerr = _errors(g, "recall_new", 0.0, 1.0)
        x, xerr = _errors(g, "drift_max", 0.0, DRIFT_CLIP)
        acc, accerr = _errors(g, "accuracy_kept", 0.0, 1.0)
        for i, (_, r) in enumerate(g.iterrows()):
            style = dict(color=colors[r.strategy], marker=markers.get(r.setting, "o"), ms=6,
                         capsize=2, lw=0.9, alpha=0.85, ls="none")
            row[0].errorbar(x.iloc[i], y.iloc[i], xerr=xerr[:, i:i + 1], yerr=yerr[:, i:i + 1],
                            **style)
            row[1].errorbar(acc.iloc[i], y.iloc[i], xerr=accerr[:, i:i + 1],
                            yerr=yerr[:, i:i + 1], **style)
        front = g[g.pareto.astype(bool)].sort_values("drift_max_mean")
        fx = np.minimum(front.drift_max_mean, DRIFT_CLIP)
        row[0].step(fx, front.recall_new_mean, where="post", color="black", lw=0.8, zorder=0)
        row[0].scatter(fx, front.recall_new_mean, s=150, facecolors="none", edgecolors="black",
                       lw=1.0, zorder=3)
        row[1].scatter(front.accuracy_kept_mean, front.recall_new_mean, s=150,
                       facecolors="none", edgecolors="black", lw=1.0, zorder=3)
        for ax in row:
            ax.set_ylabel(f"hidden {hidden}: recall of class 9")
            ax.set_ylim(-0.05, 1.05)
            ax.grid(alpha=0.3)
        row[0].set_xscale("symlog", linthresh=DRIFT_FLOOR)
        row[0].set_xlim(0, max(float(x.max() + xerr[1].max()), DRIFT_FLOOR) * 1.5)
        beyond = int((g.drift_max_mean > DRIFT_CLIP).sum())
        row[0].set_xlabel("held-out kept drift (max |change| of logits 0-8; symlog)"
                          + (f"; {beyond} diverged at {DRIFT_CLIP:g}" if beyond else ""))
        row[1].set_xlabel("held-out accuracy on 0-8 (10-way)")
    handles = [plt.Line2D([], [], color=colors[s], marker="o", ls="none", label=s)
               for s in sorted(colors)]
    handles += [plt.Line2D([], [], color="grey", marker=m, ls="none", label=f"{name} (bound)")
                for name, m in markers.items()]
    handles.append(plt.Line2D([], [], marker="o", ms=11, mfc="none", mec="black", ls="none",
                              label="front (means)"))
    fig.legend(handles=handles, fontsize=8, loc="center right", frameon=False)
    fig.suptitle(f"Learning class 9 while keeping 0-8 ({framework}): mean over seeds with 95% "
                 "t-intervals; rings: the front (higher recall, lower drift)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.83, 1))
    return fig


def side_by_side(frame):
    """Return the per-seed rows with TF1 and PyTorch next to each other, per metric."""
    keys = ["hidden", "strategy", "setting", "optimizer", "seed"]
    table = frame.pivot_table(index=keys, columns="framework",
                              values=["recall_new", "accuracy_kept", "drift_max"],
                              aggfunc="first")
    return table.reindex(columns=["recall_new", "accuracy_kept", "drift_max"], level=0)


def headline_markdown(summary, framework="torch") -> str:
    """The README's table: per width, the bounds, the best bitwise-fixed row and the highest
    recall keeping accuracy on 0-8, with 95% intervals (the rest: answer_markdown)."""
    from ..files import markdown_table

    body = []
    for hidden, g in summary[summary.framework == framework].groupby("hidden", sort=True):
        finite = g[np.isfinite(g.drift_max_mean)]
        before = float(g.accuracy_kept_before.mean())
        keeping = finite[(finite.accuracy_kept_mean >= before - MAX_ACC_DROP - 1e-12)
                         & ~finite.strategy.isin([CEILING, FLOOR])]
        exact = finite[(finite.drift_max_mean == 0) & ~(finite.drift_max_ci_high > 0)]
        picks = [("ceiling: joint training", g[g.strategy == CEILING]),
                 ("floor: fine-tuning", g[g.strategy == FLOOR]),
                 ("kept logits bitwise fixed, best", exact),
                 ("highest recall keeping 0-8", keeping)]
        for role, rows in picks:
            if len(rows):
                r = _best(rows)
                body.append([hidden, role, label(r), stats.shown(r, "recall_new"),
                             stats.shown(r, "accuracy_kept", 3), stats.shown(r, "drift_max", 2)])
    head = ["hidden", "row", "strategy", "recall of 9", "accuracy on 0-8", "held-out kept drift"]
    n = int(summary.n_seeds.min()) if len(summary) else 0
    return (f"{framework}, {n} seeds, mean [95% Student t interval] on the 597 held-out "
            "digits:\n\n" + markdown_table(head, body))
