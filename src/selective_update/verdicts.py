"""Judge a strategy's promise from the numbers a run measured (no framework, no pandas)."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import core, validation
from .settings import BATCH_EXACT_TOL, FIRST_ORDER_RATIO


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
    validation.check_choice("promise", promise, core.PROMISES)
    validation.check_choice("dtype", dtype, core.DTYPES)
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
