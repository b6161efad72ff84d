"""Judge a strategy's promise from the numbers a run measured (no framework, no pandas)."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .. import validation
from ..settings import BATCH_EXACT_TOL, FIRST_ORDER_RATIO, RESTORE_TOL
from .promises import PROMISE_NAMES, Promise
from .strategies import DTYPES, PROMISES


class Verdict(NamedTuple):
    """Say whether a promise held and what was measured (one line)."""

    holds: bool
    measured: str


def promise_holds(promise, drift_train, drift_eval, *, dtype="float64",
                  drift_train_half_lr=None, drift_reference=None, drift_reference_half_lr=None,
                  restore_residual=None, drift_minibatch=None,
                  drift_minibatch_half_lr=None, memory_loss=None,
                  memory_loss_half_lr=None) -> Verdict:
    """Judge one run's promise (its name, or a Promise) from its measured drift of the kept outputs.

    drift_train / drift_eval / drift_reference: per step (step 0 first), max |change| of the kept
    outputs since the start, on the batch, held-out and reference inputs (RunResult.drift_*).
    drift_minibatch: per step, the max |change| across that step on the rows it trained on
    (RunResult.drift_minibatch); the minibatch_ promises are judged on it.
    restore_residual: RunResult.restore_residual; a correction that stopped above RESTORE_TOL
    breaks a batch_exact or reference_exact promise, whatever the drift.

    - exact: every drift, batch and held-out (and reference), is exactly 0;
    - batch_exact / reference_exact / minibatch_exact: the batch / reference / each step's
      mini-batch drift is <= 1e-10 (float64) or 1e-4 (float32) at every step;
    - first_order / reference_first_order / minibatch_first_order: the one-step batch / reference
      / mini-batch drift at lr is >= 2.8x that of a run at lr/2 (`drift_train_half_lr` /
      `drift_reference_half_lr` / `drift_minibatch_half_lr`: that run's drift after its first
      step, on the same first mini-batch), or already below the batch_exact tolerance;
    - reference_no_loss_rise: no earlier task's memory loss (RunResult.memory_loss, per step
      and task) rises by more than the batch_exact tolerance in the first step, or its largest
      one-step rise at lr is >= 2.8x that of the run at lr/2 (`memory_loss_half_lr`: that run's
      memory_loss), a second-order rise;
    - none: nothing is promised, so it holds; the drift is reported.
    """
    if isinstance(promise, Promise):
        promise = str(promise)
    validation.check_choice("promise", promise, PROMISES)
    validation.check_choice("dtype", dtype, DTYPES)
    promised = PROMISE_NAMES[promise]
    drift_train = np.asarray(drift_train, dtype=np.float64)
    drift_eval = np.asarray(drift_eval, dtype=np.float64)
    batch, held_out = float(drift_train.max()), float(drift_eval.max())
    seen = f"batch {batch:.3g}, held-out {held_out:.3g}"
    where = promised.where
    measured = {"reference": drift_reference, "minibatch": drift_minibatch}
    for name, values in measured.items():
        if values is not None:
            measured[name] = np.asarray(values, dtype=np.float64)
            seen += f", {name} {float(measured[name].max()):.3g}"
        elif where == name:
            raise ValueError(f"drift_{name}: got None; allowed: the run's drift on its {name} "
                             f"inputs (a {promise} promise needs it)")
    drift_reference = measured["reference"]
    tol = BATCH_EXACT_TOL[dtype]
    exact_on_a_set = promised.strength == "exact" and where != "everywhere"
    if exact_on_a_set and restore_residual is not None:
        residual = np.asarray(restore_residual, dtype=np.float64)
        if residual.size and not residual.max() <= RESTORE_TOL[dtype]:
            step = int(np.argmax(~(residual <= RESTORE_TOL[dtype]))) + 1
            return Verdict(False, f"Gauss-Newton stopped at residual {residual.max():.3g} > "
                           f"{RESTORE_TOL[dtype]:g} (step {step}); {seen}")
    protected = measured.get(where, drift_train)
    if promised.strength == "exact" and where == "everywhere":
        return Verdict(batch == 0.0 and held_out == 0.0
                       and (drift_reference is None or float(drift_reference.max()) == 0.0), seen)
    if exact_on_a_set:
        return Verdict(float(protected.max()) <= tol, seen)
    if promised.strength == "no_loss_rise":
        if memory_loss is None or memory_loss_half_lr is None:
            raise ValueError("memory_loss: got None; allowed: the run's and its lr/2 twin's "
                             f"RunResult.memory_loss (a {promise} promise needs both)")
        rise = float(np.max(np.asarray(memory_loss)[1] - np.asarray(memory_loss)[0]))
        seen += f", memory loss rise {rise:.3g}"
        if rise <= tol:
            return Verdict(True, seen)
        half = np.asarray(memory_loss_half_lr)
        ratio = drift_ratio(rise, max(float(np.max(half[1] - half[0])), 0.0))
        return Verdict(ratio >= FIRST_ORDER_RATIO, f"lr/(lr/2) rise ratio {ratio:.3g}; {seen}")
    if promised.strength == "first_order":
        name = f"drift_{'train' if where == 'batch' else where}_half_lr"
        half = {"batch": drift_train_half_lr, "reference": drift_reference_half_lr,
                "minibatch": drift_minibatch_half_lr}[where]
        if half is None:
            raise ValueError(f"{name}: got None; allowed: the one-step drift of the same run at "
                             f"lr/2 (a {promise} promise needs it)")
        one = float(protected[1])
        if one <= tol:
            return Verdict(True, f"one-step {where} drift {one:.3g} <= {tol:g}; {seen}")
        ratio = drift_ratio(one, float(half))
        return Verdict(ratio >= FIRST_ORDER_RATIO, f"lr/(lr/2) drift ratio {ratio:.3g}; {seen}")
    return Verdict(True, f"nothing promised; {seen}")


def drift_ratio(drift_one_step, drift_half_lr) -> float:
    """Return the one-step batch drift at lr over the one at lr/2 (inf when the latter is 0)."""
    return float(drift_one_step) / float(drift_half_lr) if drift_half_lr > 0 else float("inf")
