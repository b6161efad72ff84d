"""The new-class scenario's tables, figure and answer (notebooks/new_class.ipynb, the summary).

Every function takes the rows of reports/new_class.csv (selective_update.new_class.COLUMNS) or
the sweep of reports/new_class_sweep.csv, so the summary page can call them on the files alone.
"""
from __future__ import annotations

import numpy as np

from ..settings import NEW_CLASS_MAX_ACC_DROP as MAX_ACC_DROP

FRONT_COLUMNS = ["hidden", "framework", "strategy", "setting", "optimizer", "seed", "recall_new",
                 "accuracy_kept", "drift_max", "drift_mean"]
DRIFT_FLOOR = 1e-4  # the symlog axis is linear below this, so an exact 0 is drawn at 0
DRIFT_BOUNDS = (0.01, 0.1, 0.3)  # the answer names the best recall within each held-out drift
DRIFT_CLIP = 10.0  # drifts beyond (diverged runs) are drawn at the panel's right edge


def front_table(frame):
    """Return the Pareto front's rows (pareto == True), by hidden width, framework and drift."""
    front = frame[frame["pareto"].astype(bool)]
    return front.sort_values(["hidden", "framework", "drift_max", "recall_new"],
                             kind="mergesort")[FRONT_COLUMNS].reset_index(drop=True)


def _label(row):
    setting = "" if row["setting"] == "none" else f" ({row['setting']})"
    return f"`{row['strategy']}`{setting}, {row['optimizer']}"


def answer_markdown(frame, framework="torch", skipped=None) -> str:
    """Say what the front is, per hidden width, with its numbers (Markdown)."""
    lines = []
    for hidden, g in frame[frame.framework == framework].groupby("hidden", sort=True):
        front = g[g.pareto.astype(bool)].sort_values(["drift_max", "recall_new"],
                                                     ascending=[True, False], kind="mergesort")
        if front.empty:
            lines.append(f"- **hidden {hidden}**: no finite row, so no front.")
            continue
        lo = front.iloc[0]  # the best recall at the lowest drift
        hi = front.sort_values(["recall_new", "drift_max"], ascending=[False, True],
                               kind="mergesort").iloc[0]
        lines.append(
            f"- **hidden {hidden}** ({framework}, {len(front)} front points of {len(g)} rows): "
            f"from {_label(lo)}: recall {lo.recall_new:.2f} at held-out kept drift "
            f"{lo.drift_max:.3g} (accuracy on 0-8 {lo.accuracy_kept:.3f}), to {_label(hi)}: "
            f"recall {hi.recall_new:.2f} at drift {hi.drift_max:.3g} (accuracy on 0-8 "
            f"{hi.accuracy_kept:.3f}).")
        exact = g[g.drift_max == 0]
        if len(exact):  # rows that moved no kept logit show the pretrained accuracy on 0-8
            floor = exact.accuracy_kept.max() - MAX_ACC_DROP
            kept = g[np.isfinite(g.drift_max) & (g.accuracy_kept >= floor - 1e-12)]
            best = kept.sort_values(["recall_new", "drift_max"], ascending=[False, True]).iloc[0]
            lines.append(f"  Best recall keeping accuracy on 0-8 >= {floor:.3f} (pretrained "
                         f"{floor + MAX_ACC_DROP:.3f} - {MAX_ACC_DROP}): {best.recall_new:.2f} "
                         f"({_label(best)}, drift {best.drift_max:.3g}).")
        for bound in DRIFT_BOUNDS:
            within = front[front.drift_max <= bound]
            if len(within):
                best = within.sort_values(["recall_new", "drift_max"],
                                          ascending=[False, True]).iloc[0]
                lines.append(f"  Best recall with drift <= {bound:g}: {best.recall_new:.2f} "
                             f"({_label(best)}, drift {best.drift_max:.3g}, accuracy on 0-8 "
                             f"{best.accuracy_kept:.3f}).")
    if skipped is not None and len(skipped):
        names = ", ".join(sorted({f"`{r.strategy}` {r.setting} (hidden {r.hidden})"
                                  for r in skipped.itertuples()}))
        lines.append(f"- Not run (too costly per step, see the cost table): {names}.")
    gap = framework_gap(frame)
    if gap is not None:
        lines.append(f"- TF1 and PyTorch agree: largest difference over matching rows "
                     f"{gap:.2g} (recall and accuracy absolute, drifts relative above 1).")
    return "\n".join(lines)


def framework_gap(frame):
    """Return the largest tf1-vs-torch difference over matching rows (None if unmatched).

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
    """Return the chosen (lr, steps) per hidden width, strategy, setting and optimizer."""
    chosen = sweep[sweep.selected.astype(bool)]
    return chosen.groupby(["hidden", "strategy", "setting", "optimizer"], sort=True).agg(
        lr=("lr", "first"), steps=("steps", "first"), admissible=("admissible", "all"),
        recall_new=("recall_new", "mean"), accuracy_kept=("accuracy_kept", "mean"),
        drift_max=("drift_max", "mean")).reset_index()


def cost_table(sweep_seconds):
    """Return the sweep's wall seconds per hidden width, strategy and setting, costliest first."""
    columns = ["hidden", "strategy", "setting", "tier", "work", "seconds"]
    return sweep_seconds.groupby(columns[:5], sort=True)["seconds"].sum().reset_index() \
        .sort_values("seconds", ascending=False, kind="mergesort")[columns] \
        .reset_index(drop=True)


def _strategy_colors(strategies):
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("tab20")  # the 10 dark shades first, then the light ones
    order = list(range(0, 20, 2)) + list(range(1, 20, 2))
    return {s: cmap(order[i % 20]) for i, s in enumerate(sorted(strategies))}


def plot_tradeoff_front(frame):
    """Draw recall of the new class against held-out kept drift and against kept accuracy.

    One point per row (tf1 as crosses over torch's circles), one row of panels per hidden
    width; the front (pareto rows) is ringed and joined in the drift panel.
    """
    import matplotlib.pyplot as plt

    hiddens = sorted(frame.hidden.unique())
    fig, axes = plt.subplots(len(hiddens), 2, figsize=(12.5, 3.6 * len(hiddens)), squeeze=False)
    colors = _strategy_colors(frame.strategy.unique())
    markers = {"torch": dict(marker="o", s=36, alpha=0.75), "tf1": dict(marker="x", s=30)}
    for row, hidden in zip(axes, hiddens):
        g = frame[frame.hidden == hidden]
        for (strategy, framework), part in g.groupby(["strategy", "framework"], sort=True):
            style = markers.get(framework, dict(marker="s", s=20))
            label = strategy if framework == "torch" else None
            row[0].scatter(np.minimum(part.drift_max, DRIFT_CLIP), part.recall_new,
                           color=colors[strategy], label=label, **style)
            row[1].scatter(part.accuracy_kept, part.recall_new, color=colors[strategy], **style)
        front = g[g.pareto.astype(bool)]
        for framework, part in front.groupby("framework", sort=True):
            part = part.sort_values("drift_max")
            row[0].step(np.minimum(part.drift_max, DRIFT_CLIP), part.recall_new, where="post",
                        color="black",
                        lw=0.8, ls="-" if framework == "torch" else ":", zorder=0)
        for ax, x in zip(row, ("drift_max", "accuracy_kept")):
            xs = np.minimum(front[x], DRIFT_CLIP) if x == "drift_max" else front[x]
            ax.scatter(xs, front.recall_new, s=130, facecolors="none",
                       edgecolors="black", lw=1.0, label="front" if x == "drift_max" else None)
            ax.set_ylabel(f"hidden {hidden}: recall of class 9")
            ax.set_ylim(-0.05, 1.05)
            ax.grid(alpha=0.3)
        row[0].set_xscale("symlog", linthresh=DRIFT_FLOOR)
        shown = np.minimum(g.drift_max, DRIFT_CLIP)
        row[0].set_xlim(0, max(float(shown.max()), DRIFT_FLOOR) * 1.5)
        beyond = int((g.drift_max > DRIFT_CLIP).sum())
        row[0].set_xlabel("held-out kept drift (max |change| of logits 0-8; symlog)"
                          + (f"; {beyond} diverged rows at {DRIFT_CLIP:g}" if beyond else ""))
        row[1].set_xlabel("held-out accuracy on 0-8 (10-way)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="center right", title="o torch, x tf1",
               title_fontsize=8, frameon=False)
    fig.suptitle("Learning class 9 while keeping 0-8: one point per strategy x setting x "
                 "optimizer x seed; rings: the front (higher recall, lower drift)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.84, 1))
    return fig


def side_by_side(frame):
    """Return the final rows with TF1 and PyTorch next to each other, per metric."""
    keys = ["hidden", "strategy", "setting", "optimizer", "seed"]
    table = frame.pivot_table(index=keys, columns="framework",
                              values=["recall_new", "accuracy_kept", "drift_max", "pareto"],
                              aggfunc="first")
    return table.reindex(columns=["recall_new", "accuracy_kept", "drift_max", "pareto"], level=0)
