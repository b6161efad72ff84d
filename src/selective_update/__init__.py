"""selective-update: change a loss or a gradient so that chosen MLP outputs provably stay fixed.

    import selective_update as su
    result = su.run("split_head", "torch", params=su.init_params(), data=su.make_toy_data())

Framework packages (`selective_update.tf1`, `selective_update.torch`) share their runner's public
names and are imported only when a run asks for them. The package's folders: core/ (strategies,
runs, verdicts), algorithms/ (the math, once, over the `ops` contract), tf1/, torch/, keras.py,
study/ (the notebooks' batch), scenarios/, bench/.
"""
from __future__ import annotations

import importlib

from . import core as core, validation
from .core import (
    FRAMEWORKS,
    OPTIMIZERS,
    PROMISES,
    STRATEGIES,
    Data,
    Memory,
    RestoreWarning,
    RunResult,
    SeedDemo,
    TrivialNullSpaceWarning,
    check_run,
    drift,
    init_params,
    make_toy_data,
    promise,
)
from .notices import PromiseWarning

__version__ = "0.1.0"
# What a user calls; the rest stays importable from its module (selective_update.settings for
# the constants, selective_update.core for RunConfig, check_run, Strategy, ...).
__all__ = ["Data", "FRAMEWORKS", "Memory", "OPTIMIZERS", "PROMISES", "PromiseWarning",
           "RestoreWarning", "RunResult", "STRATEGIES", "TrivialNullSpaceWarning", "backend",
           "drift", "init_params", "make_toy_data", "promise", "run", "seed_demo"]


def backend(name):
    """Import and return the framework module `tf1` or `torch`."""
    validation.check_choice("framework", name, FRAMEWORKS)
    return importlib.import_module(f"{__name__}.{name}")


def run(strategy, framework, *, params, data, keep=(0,), train=(1,), optimizer="sgd", lr=0.1,
        steps=1, weight_decay=0.0, warm_start_steps=0, dtype="float64", device="cpu",
        warm_start_lr=None, reference=None, energy=None, grow=None,
        distill_weight=None, batch_size=None, batch_seed=0, activation="sigmoid",
        loss="mse", record_steps=True, carry=None, ewc_strength=None,
        gem_margin=None) -> RunResult:
    """Train the `train` outputs with one strategy in one framework and record every step.

    Args:
        strategy: a name of STRATEGIES (what it trains, its loss, what follows its step).
        framework: "tf1" or "torch"; the same numbers in both.
        params: the MLP's weights {"W1", "b1", ..., "WL", "bL"} (init_params, float arrays).
        data: a Data (x, y, x_eval, y_eval); x is the training batch, x_eval held out.
        keep, train: output indices kept fixed and trained (disjoint).
        optimizer: "sgd", "momentum", "adam" or "adamw" (torch's constants in both frameworks).
        lr, steps, weight_decay: the strategy's steps (coupled L2; decoupled for adamw).
        warm_start_steps, warm_start_lr: all_params steps first, on the same optimizer (its
            state carries over), at warm_start_lr (default lr); drift is measured from their end.
        dtype, device: "float64" | "float32"; "cpu" | "cuda" (torch only).
        reference: None, or inputs (n_ref, n_in) on which null_space, null_space_corrected,
            compensated_gradient, layer_subspace and distill protect the kept outputs instead of
            the batch (stack the batch into it to protect both); or a Memory(x, y, task) of
            earlier tasks' examples, whose loss gem (one constraint per task) and ewc (its
            Fisher) keep. With a reference, keep and train may share outputs (kept on the
            reference inputs, trained on the batch) where the strategy does not freeze them.
        energy, grow, distill_weight, ewc_strength, gem_margin: options of layer_subspace
            (0.99), grow (8 units per hidden layer), distill (1.0), ewc (1000) and gem (0.5);
            None is the default, a value with another strategy a ValueError.
        batch_size, batch_seed: None trains every step on all of x; an integer makes each step
            (warm start included) take the next mini-batch, each epoch a fresh order drawn in
            numpy from batch_seed (the same in both frameworks; n % batch_size rows sit an epoch
            out). Without a reference, strategies that protect the batch protect each step's own
            mini-batch (promises minibatch_exact / minibatch_first_order).
        activation, loss: the hidden layers' "sigmoid" (the seed's) or "relu"; the loss "mse"
            (the seed's) or "cross_entropy" (softmax against the rows of y as target
            distributions, one-hot for labels; a masked loss takes the softmax over the trained
            outputs only, so the kept outputs get no gradient).
        record_steps: False records the outputs at the start and the end only (long runs).
        carry: RunResult.carry of the run before, for a strategy that carries something from
            task to task (ewc: the Fisher information and anchors of the earlier tasks).

    Returns:
        A RunResult: outputs per step on x, x_eval (and reference), drift_train, drift_eval,
        drift_reference, drift_minibatch, losses, the final params, step seconds, and the
        promise its set-up makes (RunResult.promise).

    Raises:
        ValueError: one line naming the first bad argument and what is allowed, before a
            framework is imported.

    Example:
        >>> import selective_update as su
        >>> r = su.run("split_head", "torch", params=su.init_params(), data=su.make_toy_data(),
        ...            optimizer="adam", steps=3)
        >>> float(r.drift_eval.max())
        0.0
    """
    arguments = {k: v for k, v in locals().items() if k not in ("strategy", "framework")}
    config = check_run(strategy, framework, **arguments)  # before the framework is imported
    return backend(framework).train(config)


def seed_demo(framework, params, data, *, lr=0.1, steps=1) -> SeedDemo:
    """Replay the seed's three train ops (train_op2, train_op12, train_op_all) in one framework."""
    return backend(framework).seed_demo(params, data, lr=lr, steps=steps)

