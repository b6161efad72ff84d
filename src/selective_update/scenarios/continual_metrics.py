"""GEM's continual-learning metrics from an accuracy matrix, framework-free (numpy).

R is T x T: R[i, j] is the accuracy on task j's test set when task i has just been learned (row i
= after task i); `initial` (T,) is each task's accuracy before any training (GEM's `baseline`,
their first evaluation). As facebookresearch/GradientEpisodicMemory's metrics/metrics.py codes
them, and as the published numbers were computed:

    ACC = mean_j R[T-1, j]
    BWT = 1/T * sum_{j < T-1} (R[T-1, j] - R[j, j])      (their mean includes the last task's 0)
    FWT = 1/T * sum_{j >= 1} (R[j-1, j] - initial[j])    (likewise, the first task's 0)

The paper's formulas (and later papers) divide by T - 1 instead: `bwt_formula`, `fwt_formula`,
(T / (T - 1)) times the coded ones (20 tasks: the coded values are 0.95 x the formulas').
Intervals over seeds are Student t intervals (`stats.interval`).
"""
from __future__ import annotations

import numpy as np

from .. import validation
from . import stats

METRICS = ("acc", "bwt", "bwt_formula", "fwt", "fwt_formula")


def check_matrix(R, name="R") -> np.ndarray:
    """Check a T x T (T >= 2) matrix of accuracies in [0, 1]; return it as float64."""
    R = np.asarray(R, dtype=np.float64)
    if R.ndim != 2 or R.shape[0] != R.shape[1] or R.shape[0] < 2:
        validation.fail(name, f"shape {R.shape}", "a square T x T matrix with T >= 2")
    if not np.all(np.isfinite(R)) or R.min() < 0 or R.max() > 1:
        validation.fail(name, f"values in [{np.nanmin(R):g}, {np.nanmax(R):g}]",
                        "finite accuracies in [0, 1]")
    return R


def check_initial(initial, T) -> np.ndarray:
    """Check the T accuracies before training; return them as float64."""
    initial = np.asarray(initial, dtype=np.float64)
    if initial.shape != (T,):
        validation.fail("initial", f"shape {initial.shape}", f"one accuracy per task, ({T},)")
    if not np.all(np.isfinite(initial)) or initial.min() < 0 or initial.max() > 1:
        validation.fail("initial", f"values in [{np.nanmin(initial):g}, "
                        f"{np.nanmax(initial):g}]", "finite accuracies in [0, 1]")
    return initial


def acc(R) -> float:
    """ACC: the mean accuracy over all tasks after the last one."""
    return float(check_matrix(R)[-1].mean())


def bwt(R, form="code") -> float:
    """BWT: mean of R[T-1, j] - R[j, j]; form="code" averages over all T tasks (GEM's code, the
    published numbers), form="formula" over the T - 1 earlier ones (the paper's formula)."""
    R = check_matrix(R)
    validation.check_choice("form", form, ("code", "formula"))
    change = R[-1, :-1] - np.diag(R)[:-1]
    return float(change.sum() / (len(R) if form == "code" else len(R) - 1))


def fwt(R, initial, form="code") -> float:
    """FWT: mean of R[j-1, j] - initial[j] over j >= 1; form as in `bwt`."""
    R = check_matrix(R)
    initial = check_initial(initial, len(R))
    validation.check_choice("form", form, ("code", "formula"))
    change = np.diag(R, k=1) - initial[1:]
    return float(change.sum() / (len(R) if form == "code" else len(R) - 1))


def metrics(R, initial) -> dict:
    """All of METRICS for one run: {name: float}."""
    R = check_matrix(R)
    initial = check_initial(initial, len(R))
    return dict(acc=acc(R), bwt=bwt(R), bwt_formula=bwt(R, "formula"), fwt=fwt(R, initial),
                fwt_formula=fwt(R, initial, "formula"))


def over_seeds(runs) -> dict:
    """Mean and 95% Student t interval of each metric over runs [(R, initial), ...] (one per
    seed): {name: (mean, low, high)}; NaN bounds with one run (stats.interval)."""
    runs = list(runs)
    if not runs:
        validation.fail("runs", runs, "one (R, initial) pair per seed, at least one")
    per_run = [metrics(R, initial) for R, initial in runs]
    return {m: stats.interval([r[m] for r in per_run]) for m in METRICS}
