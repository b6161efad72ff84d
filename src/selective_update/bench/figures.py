"""The bench's figures (notebooks/bench.ipynb): step cost ratios, scaling sweeps, beyond the batch.
"""
from __future__ import annotations

import numpy as np

from .. import core
from .timing import PLAIN, SWEEP_BATCH_WIDTH, SWEEP_IN, SWEEP_OUT, SWEEP_WIDTH_BATCH

def plot_bench_ratios(frame):
    """Each strategy's step cost over the plain step, per network and batch (log scale)."""
    import matplotlib.ticker as ticker
    import seaborn as sns

    table = frame[(frame.part == "table") & (frame.strategy != PLAIN)].copy()
    if len(table):
        table["case"] = table.sizes + "/" + table.batch.astype(str)
        g = sns.catplot(data=table, kind="strip", x="ratio_to_plain", y="strategy",
                        hue="framework", col="case", col_wrap=min(4, table.case.nunique()),
                        height=3.6, aspect=1.0, sharex=True, jitter=False, dodge=True, size=8,
                        order=[s for s in list(core.STRATEGIES) + ["null_space_jacobian"]
                               if s in set(table.strategy)])
        for ax in g.axes.flat:
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 3.0)))
            ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(ticker.NullFormatter())
            ax.tick_params(axis="x", labelrotation=45)
            ax.axvline(1.0, color="black", lw=0.8)
            for goal, style in ((1.05, ":"), (1.4, (0, (1, 3))), (2.5, "--"), (5.0, "-.")):
                ax.axvline(goal, color="grey", lw=0.8, ls=style)
        g.set_axis_labels("ratio to the plain step (log)", "")
        g.figure.suptitle("Step cost relative to the plain step (all_params, sgd); black: 1, "
                          "grey: goals 1.05, 1.4, 2.5, 5", y=1.03)
        return g.figure
    return None


def plot_bench_sweep(frame, part):
    """Median step time against width or batch (part sweep_width | sweep_batch), log-log."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    axis, title = {"sweep_width": ("width", f"{SWEEP_IN}-W-{SWEEP_OUT}, batch {SWEEP_WIDTH_BATCH}"),
                   "sweep_batch": ("batch", f"{SWEEP_IN}-{SWEEP_BATCH_WIDTH}-{SWEEP_OUT}")}[part]
    sweep = frame[frame.part == part].copy()
    if not len(sweep):
        return None
    sweep["series"] = sweep.framework + " " + sweep.strategy
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    sns.lineplot(data=sweep, x=axis, y="median_s", hue="strategy", style="framework",
                 markers=True, dashes=True, ax=ax)
    plain = sweep[sweep.strategy == PLAIN].sort_values(axis)
    if len(plain) >= 2:  # guides through the plain step's first point
        x0, t0 = float(plain[axis].iloc[0]), float(plain.median_s.iloc[0])
        xs = np.array([x0, float(sweep[axis].max())])
        for slope, style in ((1, ":"), (2, "--")):
            ax.plot(xs, t0 * (xs / x0) ** slope, color="grey", lw=0.9, ls=style,
                    label=f"slope {slope}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel(f"{axis} (log)")
    ax.set_ylabel("median seconds per call (log)")
    ax.set_title(f"Scaling in {axis}: {title}")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return fig


def plot_bench_beyond_batch(frame):
    """Step time of the reference-protected strategies against the reference set's size."""
    import matplotlib.pyplot as plt

    part = frame[(frame.part == "beyond_batch") & frame.strategy.isin(
        ["null_space", "null_space_corrected", "compensated_gradient"])].copy()
    if not len(part):
        return None
    batch = part.batch.iloc[0]
    part["n"] = part.n_ref.map(lambda v: batch if str(v) == "batch" else int(float(v)))
    fig, ax = plt.subplots(figsize=(7, 4.2))
    styles = {"tf1": "-", "torch": "--"}
    for (strategy, fw), g in part.groupby(["strategy", "framework"], sort=True):
        g = g.sort_values("n")
        ax.plot(g.n, g.median_s * 1e3, marker="o", ls=styles.get(fw, ":"),
                label=f"{strategy}, {fw}")
    for fw, g in frame[(frame.part == "beyond_batch") & (frame.strategy == "all_params")
                       & (frame.sizes == part.sizes.iloc[0])].groupby("framework"):
        ax.axhline(g.median_s.iloc[0] * 1e3, color="grey", lw=0.8, ls=styles.get(fw, ":"),
                   label=f"plain step, {fw}")
    ax.set(xscale="log", yscale="log", xlabel="protected inputs n_ref (the batch: its size)",
           ylabel="median ms per step", title="Reference-protected step time (digits 64-16-10)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1))
    return fig


def plot_bench_helpers(frame):
    """Each helper's step over the plain AdamW step on the bench's CNN (log), goals marked."""
    import matplotlib.pyplot as plt

    part = frame[(frame.part == "helpers") & (frame.strategy != "plain")]
    if not len(part):
        return None
    part = part.iloc[::-1]
    fig, ax = plt.subplots(figsize=(7.5, 0.5 * len(part) + 1.5))
    colors = ["tab:green" if m is True or m == "True" else "tab:red" if m is False or m == "False"
              else "tab:grey" for m in part.meets_goal]
    ax.barh(part.strategy, part.ratio_to_plain, color=colors)
    for y, (ratio, goal) in enumerate(zip(part.ratio_to_plain, part.goal)):
        ax.annotate(f"{ratio:.3g}x" + (f"  (goal {goal})" if isinstance(goal, str) and goal
                                       else ""), (ratio, y), xytext=(4, -3),
                    textcoords="offset points", fontsize=8)
    ax.axvline(1.0, color="black", lw=0.8)
    ax.set(xscale="log", xlabel="ratio to the plain AdamW step (log)",
           title="Helpers on a ~55k-parameter CNN (float32); green: goal met, red: missed")
    return fig
