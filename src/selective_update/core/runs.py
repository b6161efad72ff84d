"""A run: its checked arguments, its result, the drift it measured and its warnings."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field, fields

import numpy as np

from ..settings import RESTORE_TOL
from ..validation import (check_bool, check_choice, check_disjoint, check_int, check_outputs,
                          check_real, fail, is_int)
from .nets import ACTIVATIONS, LOSSES, Data, n_layers, n_params
from .strategies import (DEVICES, DTYPES, FRAMEWORKS, OPTIMIZERS, OPTION_USERS, STRATEGIES,
                         check_options, promise)

class TrivialNullSpaceWarning(UserWarning):
    """Warn that the kept constraints outnumber the parameters."""


class RestoreWarning(UserWarning):
    """Warn that Gauss-Newton corrections stopped above their tolerance (a broken promise)."""


def drift(outputs, keep) -> np.ndarray:
    """Return, per step, the max |change| of the kept outputs since step 0."""
    kept = outputs[:, :, list(keep)]
    return np.abs(kept - kept[:1]).max(axis=(1, 2))


def mse(outputs, y, cols=None) -> np.ndarray:
    """Return the mean squared error per step, over samples and the given output columns."""
    cols = slice(None) if cols is None else list(cols)
    return ((outputs[..., cols] - y[..., cols]) ** 2).mean(axis=(-2, -1))


def cross_entropy(outputs, y, cols=None) -> np.ndarray:
    """Return the softmax cross-entropy per step against the rows of y as target distributions,
    mean over samples; cols: the softmax over those output columns only."""
    cols = slice(None) if cols is None else list(cols)
    z, t = outputs[..., cols], y[..., cols]
    top = z.max(axis=-1, keepdims=True)
    log_softmax = z - top - np.log(np.exp(z - top).sum(axis=-1, keepdims=True))
    return -(t * log_softmax).sum(axis=-1).mean(axis=-1)


LOSS_VALUES = {"mse": mse, "cross_entropy": cross_entropy}


@dataclass(frozen=True, eq=False)
class RunConfig:
    """run()'s arguments, checked and normalized by check_run: what a framework's runner trains.

    Strategy options (energy, grow, distill_weight) are filled with their defaults for the
    strategies that use them and None elsewhere; reference is None or float64 inputs.
    """

    strategy: str
    framework: str
    params: dict
    data: Data
    keep: tuple = (0,)
    train: tuple = (1,)
    optimizer: str = "sgd"
    lr: float = 0.1
    steps: int = 1
    weight_decay: float = 0.0
    warm_start_steps: int = 0
    dtype: str = "float64"
    device: str = "cpu"
    warm_start_lr: float | None = None  # None: lr
    reference: np.ndarray | None = None
    energy: float | None = None
    grow: int | None = None
    distill_weight: float | None = None
    batch_size: int | None = None  # None: every step on all of data.x (the fixed batch)
    batch_seed: int = 0
    activation: str = "sigmoid"  # of the hidden layers: sigmoid | relu
    loss: str = "mse"  # mse | cross_entropy (softmax against the rows of y)
    record_steps: bool = True  # False: outputs recorded at the start and the end only

    @property
    def protected_inputs(self) -> np.ndarray:
        """The inputs the strategy protects: the reference inputs, or else the batch.

        With mini-batches and no reference, a step protects its own mini-batch; these (all of
        data.x) are where layer_subspace's and distill's start values are taken.
        """
        return self.data.x if self.reference is None else self.reference

    @property
    def step_rows(self) -> int:
        """How many inputs each step trains on: batch_size, or all of data.x."""
        return len(self.data.x) if self.batch_size is None else self.batch_size

    def batches(self, n_steps):
        """Return the rows of data.x each of n_steps steps trains on (n_steps, batch_size), or
        None without mini-batches; minibatches() draws them, the same for both frameworks."""
        if self.batch_size is None:
            return None
        return minibatches(len(self.data.x), self.batch_size, n_steps, self.batch_seed)

    def summary(self) -> dict:
        """The plain values of the config (no arrays): RunResult.config."""
        plain = {f.name: getattr(self, f.name) for f in fields(self)
                 if f.name not in ("params", "data", "reference")}
        plain["n_reference"] = None if self.reference is None else len(self.reference)
        return plain


def minibatches(n, batch_size, n_steps, seed) -> np.ndarray:
    """Return (n_steps, batch_size) row indices into n inputs, drawn in numpy from one seed.

    Each epoch is a fresh permutation of range(n) from np.random.default_rng(seed), cut into
    n // batch_size mini-batches; the rows left over (n % batch_size) sit that epoch out, so every
    step has the same shape (TF1's graph is built for it). Epochs follow one another.
    """
    per_epoch = n // batch_size
    rng = np.random.default_rng(seed)
    epochs = [rng.permutation(n)[:per_epoch * batch_size].reshape(per_epoch, batch_size)
              for _ in range(-(-n_steps // per_epoch))]
    return np.concatenate(epochs)[:n_steps] if epochs else np.zeros((0, batch_size), np.int64)


# run()'s keyword arguments, in RunConfig's order: the one list both frameworks' run() accept.
ARGUMENTS = tuple(f.name for f in fields(RunConfig) if f.name not in ("strategy", "framework"))


@dataclass
class RunResult:
    """Hold what one run measured: outputs per step on x and x_eval, losses, final params."""

    strategy: str
    framework: str
    optimizer: str
    keep: tuple
    train: tuple
    # per step, step 0 first (record_steps=False: the start and the end only)
    outputs: np.ndarray  # (steps+1, n, n_out) on data.x
    eval_outputs: np.ndarray  # (steps+1, n_eval, n_out) on data.x_eval
    loss: np.ndarray  # (steps+1,) the run's loss (MSE or cross-entropy) on every output
    train_loss: np.ndarray  # (steps+1,) the same on the train outputs
    params: dict  # grow: the grown layers
    step_seconds: np.ndarray
    config: dict = field(default_factory=dict)
    reference_outputs: np.ndarray | None = None  # (steps+1, n_ref, n_out); None without reference
    restore_residual: np.ndarray | None = None  # (steps,) final Gauss-Newton residual per step
    batches: np.ndarray | None = None  # (steps, batch_size) rows of data.x; None: all of them

    @property
    def drift_train(self) -> np.ndarray:
        return drift(self.outputs, self.keep)

    @property
    def drift_eval(self) -> np.ndarray:
        return drift(self.eval_outputs, self.keep)

    @property
    def drift_reference(self):
        """Per step, the max |change| of the kept outputs on the reference inputs (or None)."""
        return None if self.reference_outputs is None else drift(self.reference_outputs,
                                                                 self.keep)

    @property
    def drift_minibatch(self) -> np.ndarray:
        """Per step (0 first), the max |change| of the kept outputs across that step on the rows
        it trained on (its mini-batch; every row of data.x without mini-batches)."""
        kept = self.outputs[:, :, list(self.keep)]
        change = np.abs(kept[1:] - kept[:-1])
        if self.batches is not None:
            change = np.take_along_axis(change, self.batches[:, :, None], axis=1)
        per_step = change.max(axis=(1, 2)) if change.size else np.zeros(len(change))
        return np.concatenate([[0.0], per_step])

    @property
    def promise(self) -> str:
        c = self.config
        return promise(self.strategy, self.optimizer, weight_decay=c["weight_decay"],
                       warm_start_steps=c["warm_start_steps"],
                       reference=c.get("n_reference") is not None,
                       batch_size=c.get("batch_size"),
                       **{k: c.get(k) for k in OPTION_USERS})


def make_result(config, outputs, eval_outputs, params, step_seconds, reference_outputs=None,
                restore_residual=None, batches=None) -> RunResult:
    """Assemble a RunResult of a RunConfig from per-step outputs (numpy, any float dtype).

    batches: the strategy steps' mini-batches (rows of data.x), None without mini-batches.
    """
    outputs = np.asarray(outputs)
    eval_outputs = np.asarray(eval_outputs)
    y = config.data.y.astype(outputs.dtype)
    value = LOSS_VALUES[config.loss]
    if restore_residual is not None:
        restore_residual = np.asarray(restore_residual, dtype=np.float64)
        warn_if_not_restored(restore_residual, config.dtype)
    return RunResult(
        strategy=config.strategy, framework=config.framework, optimizer=config.optimizer,
        keep=config.keep, train=config.train, outputs=outputs, eval_outputs=eval_outputs,
        loss=value(outputs, y), train_loss=value(outputs, y, config.train),
        params={k: np.asarray(v) for k, v in params.items()},
        step_seconds=np.asarray(step_seconds, dtype=np.float64), config=config.summary(),
        reference_outputs=None if reference_outputs is None else np.asarray(reference_outputs),
        restore_residual=restore_residual,
        batches=None if batches is None else np.asarray(batches, dtype=np.int64),
    )


def warn_if_not_restored(residual, dtype):
    """Warn (RestoreWarning) when a step's Gauss-Newton corrections stopped above tolerance."""
    tol = RESTORE_TOL[dtype]
    bad = np.flatnonzero(~(residual <= tol))
    if len(bad):
        warnings.warn(f"restore: Gauss-Newton stopped at kept-output residual "
                      f"{residual[bad].max():.3g} > {tol:g} in {len(bad)} of {len(residual)} "
                      f"steps (first: step {bad[0] + 1}); the promise is broken",
                      RestoreWarning, stacklevel=4)


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


def check_reference(reference, data):
    """Check None or a finite (n_ref, n_in) array of reference inputs; return float64 or None."""
    if reference is None:
        return None
    width = data.x.shape[1]
    allowed = f"None or a finite non-empty 2-D array (n_ref, {width}) of inputs"
    if not isinstance(reference, np.ndarray):
        fail("reference", type(reference).__name__, allowed)
    if (reference.ndim != 2 or not len(reference) or reference.shape[1] != width
            or not np.issubdtype(reference.dtype, np.number)):
        fail("reference", f"array of shape {reference.shape}", allowed)
    if not np.all(np.isfinite(reference)):
        fail("reference", "non-finite values", allowed)
    return np.array(reference, dtype=np.float64)


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
    reference = check_reference(a["reference"], data)
    described = STRATEGIES[strategy]
    if reference is None or not described.overlap:
        check_disjoint(keep, train, ", or overlapping ones with reference= inputs (kept there, "
                       "trained on the batch)" if described.overlap
                       else f" ({strategy} freezes what it keeps)")
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
        reference=reference, **options,
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
