"""A run: its checked arguments, its result, the drift it measured and its warnings."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field, fields

import numpy as np

from ..settings import RESTORE_TOL
from .nets import Data
from .strategies import OPTION_USERS, promise

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
    carry: dict | None = None  # what the strategy carries from the run before (ewc's Fisher)
    ewc_strength: float | None = None
    gem_margin: float | None = None
    reference_targets: np.ndarray | None = None  # a Memory's targets (gem, ewc)
    reference_tasks: np.ndarray | None = None  # a Memory's task per input (gem)

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
        plain = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in (
            "params", "data", "reference", "carry", "reference_targets", "reference_tasks")}
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


# run()'s keyword arguments, in RunConfig's order: the one list both frameworks' run() accept
# (a Memory passed as reference= fills reference_targets and reference_tasks).
ARGUMENTS = tuple(f.name for f in fields(RunConfig) if f.name not in (
    "strategy", "framework", "reference_targets", "reference_tasks"))


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
    carry: dict | None = None  # what the strategy carries to the next run (run(carry=...))
    memory_loss: np.ndarray | None = None  # (steps+1, tasks): a Memory's loss per earlier task

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
                restore_residual=None, batches=None, carry=None) -> RunResult:
    """Assemble a RunResult of a RunConfig from per-step outputs (numpy, any float dtype).

    batches: the strategy steps' mini-batches (rows of data.x), None without mini-batches.
    """
    outputs = np.asarray(outputs)
    eval_outputs = np.asarray(eval_outputs)
    y = config.data.y.astype(outputs.dtype)
    value = LOSS_VALUES[config.loss]
    memory_loss = None
    if config.reference_targets is not None and reference_outputs is not None:
        tasks = config.reference_tasks
        memory_loss = np.stack([value(np.asarray(reference_outputs)[:, tasks == k],
                                      config.reference_targets[tasks == k])
                                for k in np.unique(tasks)], axis=1)
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
        batches=None if batches is None else np.asarray(batches, dtype=np.int64), carry=carry,
        memory_loss=memory_loss)


def warn_if_not_restored(residual, dtype):
    """Warn (RestoreWarning) when a step's Gauss-Newton corrections stopped above tolerance."""
    tol = RESTORE_TOL[dtype]
    bad = np.flatnonzero(~(residual <= tol))
    if len(bad):
        warnings.warn(f"restore: Gauss-Newton stopped at kept-output residual "
                      f"{residual[bad].max():.3g} > {tol:g} in {len(bad)} of {len(residual)} "
                      f"steps (first: step {bad[0] + 1}); the promise is broken",
                      RestoreWarning, stacklevel=4)
