"""The run, written once: warm start, start values, each step's rows, the step, recording, timing.

It works over a small Trainer contract that each framework fills (torch/runner.py eagerly,
tf1/runner.py with one graph and a Session), in the way papermill's engine runs a notebook over
a kernel and d2l's Trainer.fit runs over a framework's fit_epoch. What a step does is
strategy_step.take_step's; which rows it trains on, what it starts from and what is recorded is
decided here, once, for both frameworks.
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from .. import core
from ..core.strategies import STRATEGIES, options_for
from . import strategy_step

WARM_START = "all_params"  # the strategy of warm-start steps (their state carries over)


@dataclass(frozen=True)
class Batch:
    """One step's data as numpy: the rows it trains on and the start values it uses.

    rows: indices into data.x, or None for every row (the fixed batch: what depends on it only
    may be kept from step to step).
    """

    x: np.ndarray
    y: np.ndarray
    rows: Any = None
    start: dict | None = None


class Trainer(Protocol):
    """What a framework fills for the loop (and for strategy_step.take_step's sequence).

    For the loop: Trainer(config, strategies) builds the network, its optimizer and a step for
    each strategy; then prepare, step, set_lr, start, outputs, layer_inputs, numpy_params, sync.
    For take_step (tensors in, tensors out; tf1 builds graph ops, torch runs eagerly): ops,
    config, net, layers, forward, gradients, apply, snapshot, assign, no_grad.
    """

    ops: Any
    config: Any
    net: Any

    def prepare(self, batch: Batch) -> Any:
        """Return a batch in the framework's terms (tensors, or a feed), to pass to step()."""

    def step(self, strategy: str, prepared: Any) -> Any:
        """Take one step of a strategy; return the Gauss-Newton residual of a corrected one."""

    def set_lr(self, lr: float) -> None:
        """Change the optimizer's learning rate (its state stays)."""

    def start(self, values: dict) -> None:
        """Hold start values that stay across steps (layer bases), from numpy."""

    def outputs(self, x: np.ndarray) -> np.ndarray:
        """Return the outputs at inputs x, as numpy."""

    def layer_inputs(self, x: np.ndarray) -> tuple:
        """Return the layer inputs [x, h1, ...] and the outputs at x, as numpy."""

    def numpy_params(self) -> dict:
        """Return the parameters as a params dict of numpy arrays."""

    def loss_gradients(self, x: np.ndarray, y: np.ndarray) -> dict:
        """Return the gradient of the mean loss of every output at (x, y), as a params dict."""

    def sync(self) -> None:
        """Wait for queued device work, so step timings are honest."""

    def layers(self) -> tuple:
        """Return (Ws, bs): the layers as tensors (heads joined, grown pieces assembled)."""

    def forward(self, x, variables=None) -> tuple:
        """Return (hs, out) at tensor x, differentiable in `variables` (default: every one)."""

    def gradients(self, ys, variables, grad_ys) -> list:
        """Return d(ys)/d(variables) seeded by grad_ys (None: ys is a scalar loss)."""

    def apply(self, grads, variables, after=None) -> Any:
        """Apply the optimizer (with its weight decay) once `after` is done; return the
        variables' new values (tf1: ops that read them after the update)."""

    def snapshot(self, variables, after=None) -> list:
        """Return the variables' values now, kept apart from the optimizer's update."""

    def assign(self, variables, values) -> Any:
        """Write values into the variables."""

    def no_grad(self) -> Any:
        """A context in which the math is not recorded for autodiff."""


def batch_for(config, rows, start=None) -> Batch:
    """Return the Batch of one step: rows of data.x (None: every row), with its start values."""
    data = config.data
    if rows is None:
        return Batch(data.x, data.y, None, start)
    return Batch(data.x[rows], data.y[rows], rows, strategy_step.step_start(start or {}, config,
                                                                             rows))


def take_start(t, strategy, config, inputs):
    """Return what a strategy takes from its start at inputs (numpy), held by the trainer."""
    hs, out = t.layer_inputs(inputs)
    gradients = params = None
    if strategy.carries:  # ewc: the memory's mean-loss gradients at the start
        params = t.numpy_params()
        if config.reference_targets is not None:
            gradients = t.loss_gradients(config.reference, config.reference_targets)
    values = strategy_step.start_values(strategy, config, hs, out, gradients, params)
    t.start(values)
    return values


def train(make_trainer, config) -> core.RunResult:
    """Train a checked core.RunConfig: warm-start steps (all_params, their optimizer state
    carried over), then `steps` steps of the strategy, recording the outputs after each."""
    strategy = STRATEGIES[config.strategy]
    t = make_trainer(config, tuple(dict.fromkeys((WARM_START, config.strategy))))
    warm, steps = config.warm_start_steps, config.steps
    batches = config.batches(warm + steps)
    rows = [None] * (warm + steps) if batches is None else list(batches)
    fixed = t.prepare(batch_for(config, None)) if batches is None else None
    t.set_lr(config.warm_start_lr)
    for i in range(warm):
        t.step(WARM_START, fixed if fixed is not None else t.prepare(batch_for(config, rows[i])))
    t.set_lr(config.lr)
    start = take_start(t, strategy, config, config.protected_inputs) if strategy.starts else {}
    if batches is None:
        fixed = t.prepare(batch_for(config, None, start))
    inputs = [config.data.x, config.data.x_eval]
    if config.reference is not None:
        inputs.append(config.reference)
    recorded, seconds, residuals = [[t.outputs(x)] for x in inputs], [], []
    for i in range(warm, warm + steps):
        if strategy_step.rebases(strategy, config):  # this mini-batch's own start values
            start = take_start(t, strategy, config, config.data.x[rows[i]])
        prepared = fixed if fixed is not None else t.prepare(batch_for(config, rows[i], start))
        t.sync()
        begin = time.perf_counter()
        residuals.append(t.step(config.strategy, prepared))
        t.sync()
        seconds.append(time.perf_counter() - begin)
        if config.record_steps or i == warm + steps - 1:
            for outs, x in zip(recorded, inputs):
                outs.append(t.outputs(x))
    reference = np.stack(recorded[2]) if config.reference is not None else None
    return core.make_result(config, np.stack(recorded[0]), np.stack(recorded[1]),
                            t.numpy_params(), seconds, reference,
                            residuals if strategy.corrected else None,
                            None if batches is None or not config.record_steps
                            else batches[warm:], strategy_step.carried(strategy, start))


def make_steps(make_trainer, framework, strategies, **arguments):
    """Return ({strategy: callable taking one full-batch step}, sync): one trainer each, for the
    bench. arguments are run()'s; an option goes only to the strategies that use it."""
    taken, sync = {}, None
    for name in strategies:
        config = core.check_run(name, framework, warn=False, **options_for(name, arguments))
        if config.batch_size is not None:
            raise ValueError(f"batch_size: got {config.batch_size!r}; allowed: None in "
                             "make_steps (it times full-batch steps; su.run takes mini-batches)")
        t = make_trainer(config, (name,))
        strategy = STRATEGIES[name]
        start = take_start(t, strategy, config, config.protected_inputs) if strategy.starts \
            else {}
        taken[name] = functools.partial(t.step, name, t.prepare(batch_for(config, None, start)))
        sync = t.sync
    return taken, sync


@dataclass(frozen=True)
class Runner:
    """A framework's runner surface, the same for every framework: run, train, make_steps,
    project_step (tests/test_house.py checks the signatures)."""

    name: str
    make_trainer: Any
    ops: Any

    def run(self, strategy, **arguments) -> core.RunResult:
        """Run warm-start steps (all_params), then `steps` steps of `strategy`, recording
        outputs. arguments: selective_update.run's keyword arguments (core.ARGUMENTS)."""
        return self.train(core.check_run(strategy, self.name, **arguments))

    def train(self, config) -> core.RunResult:
        """Train a checked core.RunConfig and record the outputs after every step."""
        return train(self.make_trainer, config)

    def make_steps(self, strategies, **arguments):
        """Return ({strategy: callable taking one step}, sync): one trainer per strategy.

        arguments are run()'s (params, data, keep, train, optimizer, lr, ...); for the bench. An
        option (energy, grow, distill_weight) goes only to the strategies that use it."""
        return make_steps(self.make_trainer, self.name, strategies, **arguments)

    def project_step(self, Ws, bs, x, keep, dWs, dbs):
        """Project a step onto the null space of the kept outputs' Jacobian (layer-wise Gram
        form)."""
        return strategy_step.project_step(self.ops, Ws, bs, x, keep, dWs, dbs)
