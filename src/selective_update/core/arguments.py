"""A run's arguments checked before any work: one line naming the first bad one (check_run)."""
from __future__ import annotations

import warnings
from dataclasses import fields

import numpy as np

from ..validation import (check_bool, check_choice, check_disjoint, check_int, check_outputs,
                          check_real, fail, is_int)
from . import promises
from .nets import ACTIVATIONS, LOSSES, Data, Memory, n_layers, n_params
from .runs import ARGUMENTS, RunConfig, TrivialNullSpaceWarning
from .strategies import (DEVICES, DTYPES, FRAMEWORKS, OPTIMIZERS, OPTION_USERS, STRATEGIES,
                         check_options)


# --- validation of a run's arguments (one line naming the parameter, before any work) -------

def check_weights(params, data):
    """Check a params dict (W1, b1, ..., WL, bL) whose shapes chain from data.x to data.y."""
    allowed = "a dict W1, b1, ..., WL, bL (L >= 2) of float arrays whose shapes chain from data.x"
    if not isinstance(params, dict) or "W1" not in params:
        fail("params", type(params).__name__ if not isinstance(params, dict) else sorted(params),
             allowed)
    L = n_layers(params)
    expected = {f"{p}{l}" for l in range(1, L + 1) for p in "Wb"}
    if L < 2 or set(params) != expected:
        fail("params", sorted(params), allowed)
    width = data.x.shape[1]
    for l in range(1, L + 1):
        W, b = np.asarray(params[f"W{l}"]), np.asarray(params[f"b{l}"])
        if W.ndim != 2 or W.shape[0] != width or b.shape != (W.shape[1],):
            raise ValueError(f"params: W{l} {W.shape} / b{l} {b.shape} do not fit input width "
                             f"{width}; allowed: W{l} ({width}, d), b{l} (d,)")
        if not (np.all(np.isfinite(W)) and np.all(np.isfinite(b))):
            fail("params", f"non-finite values in layer {l}", "finite numbers")
        width = W.shape[1]
    if data.y.shape[1] != width or data.y_eval.shape[1] != width:
        raise ValueError(f"params: {width} outputs but data.y has {data.y.shape[1]} columns; "
                         "allowed: as many outputs as target columns")
    if width < 2:
        fail("params", f"{width} output", "at least 2 outputs")


def check_data(data):
    """Check a Data of finite, non-empty 2-D arrays with matching lengths and widths."""
    if not isinstance(data, Data):
        fail("data", type(data).__name__, "a selective_update.Data (make_toy_data, load_dataset)")
    for name in ("x", "y", "x_eval", "y_eval"):
        a = getattr(data, name)
        if (not isinstance(a, np.ndarray) or a.ndim != 2 or len(a) == 0
                or not np.all(np.isfinite(a))):
            fail("data", f"{name} is not a finite non-empty 2-D array", "finite 2-D float arrays")
    if len(data.x) != len(data.y) or len(data.x_eval) != len(data.y_eval):
        fail("data", "x and y differ in length", "as many targets as inputs")
    if data.x.shape[1] != data.x_eval.shape[1]:
        fail("data", "x and x_eval differ in width", "the same input width")


def check_reference(reference, data, strategy):
    """Check None, a finite (n_ref, n_in) array of reference inputs, or a Memory of them with
    targets and tasks; return (inputs, targets, tasks) as float64, float64, int64 (None where
    not given), or None."""
    width, described = data.x.shape[1], STRATEGIES[strategy]
    if reference is None:
        return None
    memory = reference if isinstance(reference, Memory) else None
    allowed = (f"None, or a Memory(x, y, task) of earlier tasks' examples, x (n_ref, {width})"
               if described.memory else
               f"None, a finite non-empty 2-D array (n_ref, {width}) of inputs, or a Memory")
    x = reference.x if memory else reference
    if not isinstance(x, np.ndarray) or (described.memory and memory is None):
        fail("reference", type(reference).__name__, allowed)
    if (x.ndim != 2 or not len(x) or x.shape[1] != width
            or not np.issubdtype(x.dtype, np.number)):
        fail("reference", f"array of shape {x.shape}", allowed)
    if not np.all(np.isfinite(x)):
        fail("reference", "non-finite values", allowed)
    if memory is None:
        return np.array(x, dtype=np.float64), None, None
    y, task = np.asarray(memory.y), np.asarray(memory.task)
    if y.shape != (len(x), data.y.shape[1]) or not np.all(np.isfinite(y)):
        fail("reference", f"Memory with y of shape {y.shape}",
             f"finite targets (n_ref, {data.y.shape[1]}), one row per input")
    if task.shape != (len(x),) or not np.issubdtype(task.dtype, np.integer):
        fail("reference", f"Memory with task of shape {task.shape}",
             "one integer task per input")
    return np.array(x, dtype=np.float64), np.array(y, dtype=np.float64), task.astype(np.int64)


def check_carry(carry, strategy, params):
    """Check what a strategy carries from the run before (RunResult.carry): None, or a dict of
    arrays shaped like params under each name the strategy carries."""
    names = STRATEGIES[strategy].carries
    if carry is None:
        return None
    if not names:
        fail("carry", type(carry).__name__, f"None with strategy {strategy!r} (it carries "
             "nothing from run to run)")
    allowed = f"RunResult.carry of an earlier {strategy} run: {', '.join(names)}"
    if not isinstance(carry, dict) or set(carry) != set(names):
        fail("carry", sorted(carry) if isinstance(carry, dict) else type(carry).__name__, allowed)
    for name in names:
        if (not isinstance(carry[name], dict) or set(carry[name]) != set(params)
                or any(np.shape(carry[name][k]) != np.shape(params[k]) for k in params)):
            fail("carry", f"{name} not shaped like params", allowed)
    return {name: {k: np.array(v, dtype=np.float64) for k, v in carry[name].items()}
            for name in names}


def check_run(strategy, framework, *, warn=True, **arguments) -> RunConfig:
    """Validate run()'s keyword arguments (RunConfig's fields) and return them as a RunConfig.

    Raises ValueError naming the first bad argument, before any work; warns
    (TrivialNullSpaceWarning) when warn is set and a projection has no room left.
    """
    unknown = sorted(set(arguments) - set(ARGUMENTS))
    if unknown:
        raise TypeError(f"run() got unexpected keyword argument(s) {unknown}; allowed: "
                        f"{', '.join(ARGUMENTS)}")
    missing = [name for name in ("params", "data") if name not in arguments]
    if missing:
        raise TypeError(f"run() missing required keyword argument(s): {', '.join(missing)}")
    a = {f.name: f.default for f in fields(RunConfig) if f.name in ARGUMENTS[2:]}
    a.update(arguments)
    check_choice("strategy", strategy, STRATEGIES)
    check_choice("framework", framework, FRAMEWORKS)
    check_choice("optimizer", a["optimizer"], OPTIMIZERS)
    check_real("lr", a["lr"], 0.0, strict=True)
    check_int("steps", a["steps"], 1)
    check_real("weight_decay", a["weight_decay"], 0.0)
    check_int("warm_start_steps", a["warm_start_steps"], 0)
    if a["warm_start_lr"] is not None:
        check_real("warm_start_lr", a["warm_start_lr"], 0.0, strict=True)
    check_choice("dtype", a["dtype"], DTYPES)
    check_choice("activation", a["activation"], ACTIVATIONS)
    check_choice("loss", a["loss"], LOSSES)
    check_choice("device", a["device"], DEVICES)
    if framework == "tf1" and a["device"] != "cpu":
        fail("device", a["device"], "'cpu' for framework tf1 (the cuda device is for torch)")
    data, params = a["data"], a["params"]
    check_data(data)
    check_weights(params, data)
    n_out = data.y.shape[1]
    keep = check_outputs("keep", a["keep"], n_out)
    train = check_outputs("train", a["train"], n_out)
    options = check_options(strategy, **{k: a[k] for k in OPTION_USERS})
    memory = check_reference(a["reference"], data, strategy)
    reference, reference_targets, reference_tasks = memory or (None, None, None)
    described = STRATEGIES[strategy]
    protects = described.reference or described.rule is not promises.nothing
    if (reference is None and protects) or not described.overlap:
        check_disjoint(keep, train, ", or overlapping ones with reference= inputs (kept there, "
                       "trained on the batch)" if described.overlap
                       else f" ({strategy} freezes what it keeps)")
    if a["loss"] == "cross_entropy" and described.masked and len(train) < 2:
        fail("train", list(train), "two or more outputs with loss='cross_entropy' (its softmax is "
             "over the trained outputs: over one it is constant, no gradient), or loss='mse'")
    batch_size = a["batch_size"]
    if batch_size is not None and not (is_int(batch_size) and 1 <= batch_size <= len(data.x)):
        fail("batch_size", batch_size, f"None (every step on all {len(data.x)} inputs of data.x) "
             f"or an integer in 1..{len(data.x)}")
    batch_seed = check_int("batch_seed", a["batch_seed"], 0)
    lr = float(a["lr"])
    config = RunConfig(
        strategy=strategy, framework=framework, params=params, data=data, keep=keep,
        train=train, optimizer=a["optimizer"], lr=lr, steps=int(a["steps"]),
        weight_decay=float(a["weight_decay"]), warm_start_steps=int(a["warm_start_steps"]),
        dtype=a["dtype"], device=a["device"],
        warm_start_lr=lr if a["warm_start_lr"] is None else float(a["warm_start_lr"]),
        reference=reference, reference_targets=reference_targets,
        reference_tasks=reference_tasks, carry=check_carry(a["carry"], strategy, params),
        **options,
        batch_size=None if batch_size is None else int(batch_size), batch_seed=batch_seed,
        activation=a["activation"], loss=a["loss"],
        record_steps=check_bool("record_steps", a["record_steps"]))
    if warn and (STRATEGIES[strategy].projected
                 or STRATEGIES[strategy].loss == "compensated_gradient"):
        protected_rows = config.step_rows if reference is None else len(reference)
        warn_if_trivial_null_space(params, protected_rows, len(keep))
    return config


def warn_if_trivial_null_space(params, n_sample, n_keep):
    """Warn when the kept constraints (samples x kept outputs) outnumber the parameters."""
    m, P = n_sample * n_keep, n_params(params)
    if m >= P:
        warnings.warn(f"null space: {m} kept constraints ({n_sample} samples x {n_keep} outputs) "
                      f">= {P} parameters; the null space may be trivial and the projected step "
                      "may vanish", TrivialNullSpaceWarning, stacklevel=4)
