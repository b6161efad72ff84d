"""selective-update: change a loss or a gradient so that chosen MLP outputs provably stay fixed.

    import selective_update as su
    result = su.run("split_head", "torch", params=su.init_params(), data=su.make_toy_data())

Framework modules (`selective_update.tf1`, `selective_update.torch`) share their public names and
are imported only when a run asks for them.
"""
from __future__ import annotations

import importlib

from . import core, validation
from .core import (
    DTYPES,
    FRAMEWORKS,
    OPTIMIZERS,
    PROMISES,
    SEED_PHASES,
    STRATEGIES,
    Data,
    RestoreWarning,
    RunResult,
    SeedDemo,
    Strategy,
    TrivialNullSpaceWarning,
    check_run,
    drift,
    init_params,
    make_toy_data,
    promise,
)
from .settings import ADAM_BETAS, ADAM_EPS, GAUSS_NEWTON_MAX_STEPS, MOMENTUM, RESTORE_TOL

__version__ = "0.1.0"
__all__ = ["ADAM_BETAS", "ADAM_EPS", "DTYPES", "FRAMEWORKS", "GAUSS_NEWTON_MAX_STEPS", "MOMENTUM",
           "OPTIMIZERS", "PROMISES", "RESTORE_TOL", "SEED_PHASES", "STRATEGIES", "Data",
           "RestoreWarning", "RunResult", "SeedDemo", "Strategy", "TrivialNullSpaceWarning",
           "backend", "check_run", "core", "drift", "init_params", "make_toy_data", "promise",
           "run", "seed_demo", "validation"]


def backend(name):
    """Import and return the framework module `tf1` or `torch`."""
    validation.check_choice("framework", name, FRAMEWORKS)
    return importlib.import_module(f"{__name__}.{name}")


def run(strategy, framework, *, params, data, keep=(0,), train=(1,), optimizer="sgd", lr=0.1,
        steps=1, weight_decay=0.0, warm_start_steps=0, dtype="float64", device="cpu",
        warm_start_lr=None, reference=None, energy=None, grow=None,
        distill_weight=None) -> RunResult:
    """Train the `train` outputs with one strategy in one framework and record every step.

    warm_start_steps all_params steps come first, on the same optimizer (its state carries
    over), at warm_start_lr (default: lr); drift is measured from the end of the warm start.

    reference: None or inputs (n_ref, n_in) on which the kept outputs are protected. It replaces
    the batch as the protected inputs of null_space, null_space_corrected (the batch is not
    included: stack it into reference to protect both), layer_subspace and distill; every
    strategy records RunResult.reference_outputs on it. Strategy options (None: the default;
    a value with another strategy is a ValueError): energy (layer_subspace, 0.99), grow (grow,
    8 units per hidden layer), distill_weight (distill, 1.0).
    """
    kwargs = dict(params=params, data=data, keep=keep, train=train, optimizer=optimizer, lr=lr,
                  steps=steps, weight_decay=weight_decay, warm_start_steps=warm_start_steps,
                  dtype=dtype, device=device, warm_start_lr=warm_start_lr)
    options = dict(reference=reference, energy=energy, grow=grow, distill_weight=distill_weight)
    kwargs.update({k: v for k, v in options.items() if v is not None})
    # Refuse bad input before a framework is even imported; the module checks again (cheap).
    check_run(strategy, framework, warn=False, **kwargs)
    return backend(framework).run(strategy, **kwargs)


def seed_demo(framework, params, data, *, lr=0.1, steps=1) -> SeedDemo:
    """Replay the seed's three train ops (train_op2, train_op12, train_op_all) in one framework."""
    return backend(framework).seed_demo(params, data, lr=lr, steps=steps)

