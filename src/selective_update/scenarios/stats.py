"""Seeds into intervals, means into a front, and when a difference is more than noise.

Intervals are 95% Student t intervals over seeds (scipy.stats.t): mean +- t(0.975, n - 1) * s /
sqrt(n), s the sample standard deviation (ddof 1). They are not clipped to a metric's range, so
they can be recomputed from the per-seed rows exactly as written; with one seed, or a non-finite
value among the seeds (a diverged run), they are NaN.
"""
from __future__ import annotations

import numpy as np

from ..settings import INTERVAL_LEVEL as LEVEL

SUFFIXES = ("mean", "ci_low", "ci_high")


def interval(values, level=LEVEL):
    """Return (mean, low, high) of a Student t interval over the values (NaN bounds for n < 2)."""
    from scipy import stats

    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean()) if values.size else float("nan")
    if values.size < 2 or not np.all(np.isfinite(values)):  # one seed, or a diverged run
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + level / 2, values.size - 1)
                 * values.std(ddof=1) / np.sqrt(values.size))
    return mean, mean - half, mean + half


def summarize(rows, keys, metrics, seed="seed"):
    """Return one row per keys group: n_seeds and <metric>_mean, _ci_low, _ci_high per metric."""
    import pandas as pd

    out = []
    for key, g in rows.groupby(keys, sort=True, dropna=False):
        row = dict(zip(keys, key if isinstance(key, tuple) else (key,)))
        row["n_seeds"] = int(g[seed].nunique())
        for m in metrics:
            row.update(zip((f"{m}_{s}" for s in SUFFIXES), interval(g[m].to_numpy())))
        out.append(row)
    columns = list(keys) + ["n_seeds"] + [f"{m}_{s}" for m in metrics for s in SUFFIXES]
    return pd.DataFrame(out, columns=columns)


def pareto(frame, by, higher, lower):
    """Flag the rows no other row of the same `by` group dominates on (higher, lower).

    A row leaves the front when another row is at least as good on both columns and strictly
    better on one (higher is better for `higher`, lower for `lower`); rows with a non-finite value
    are never on it, and equal rows keep each other.
    """
    import pandas as pd

    flags = pd.Series(False, index=frame.index)
    for _, g in frame.groupby(by, sort=False):
        up, down = g[higher].to_numpy(float), g[lower].to_numpy(float)
        ok = np.isfinite(up) & np.isfinite(down)
        as_good = (up[None, :] >= up[:, None]) & (down[None, :] <= down[:, None])
        better = (up[None, :] > up[:, None]) | (down[None, :] < down[:, None])
        beaten = (as_good & better & ok[None, :]).any(axis=1)
        flags[g.index] = ok & ~beaten
    return flags.astype(bool)


def separated(a, b, metric) -> bool:
    """Say whether two summary rows' intervals of a metric do not overlap."""
    lo_a, hi_a = a[f"{metric}_ci_low"], a[f"{metric}_ci_high"]
    lo_b, hi_b = b[f"{metric}_ci_low"], b[f"{metric}_ci_high"]
    if not all(np.isfinite([lo_a, hi_a, lo_b, hi_b])):
        return False
    return bool(lo_a > hi_b or lo_b > hi_a)


def shown(row, metric, digits=2) -> str:
    """Format a summary row's metric as 'mean [low, high]' (digits decimals; drifts, which span
    orders of magnitude, with digits + 1 significant digits)."""
    spec = f".{digits + 1}g" if metric.startswith("drift") else f".{digits}f"
    mean, lo, hi = (row[f"{metric}_{s}"] for s in SUFFIXES)
    if not np.isfinite(lo):
        return f"{mean:{spec}}"
    return f"{mean:{spec}} [{lo:{spec}}, {hi:{spec}}]"


def compared(a, b, metric, name_a, name_b, digits=2) -> str:
    """Say how two summary rows compare on a metric: which is higher where the intervals
    separate, else that the difference is within noise."""
    if separated(a, b, metric):
        first, second = (a, b) if a[f"{metric}_mean"] > b[f"{metric}_mean"] else (b, a)
        names = (name_a, name_b) if first is a else (name_b, name_a)
        return (f"{names[0]} is higher than {names[1]} ({shown(first, metric, digits)} vs "
                f"{shown(second, metric, digits)}; the intervals separate)")
    return (f"{name_a} and {name_b} are within noise ({shown(a, metric, digits)} vs "
            f"{shown(b, metric, digits)}; the intervals overlap)")
