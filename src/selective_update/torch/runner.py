"""PyTorch's trainer for the study's loop (algorithms.training): leaf tensors, autograd, optim.

The run's sequence is algorithms.training's and a step's is strategy_step.take_step's, written
once for both frameworks; this module holds what PyTorch itself does, eagerly, at every step.
Same strategies, optimizers and numbers as tf1's trainer.
"""
from __future__ import annotations

import torch

from .. import core, settings
from ..algorithms import memory, nullspace, strategy_step, training
from . import ops
from .network import Net

NAME = "torch"


def torch_optimizer(name, variables, lr, weight_decay=0.0):
    """Build the torch.optim optimizer that matches tf1's v1_optimizer of the same name."""
    if name == "sgd":
        return torch.optim.SGD(variables, lr=lr, weight_decay=weight_decay, foreach=False)
    if name == "momentum":
        return torch.optim.SGD(variables, lr=lr, momentum=settings.MOMENTUM,
                               weight_decay=weight_decay, foreach=False)
    cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
    return cls(variables, lr=lr, betas=settings.ADAM_BETAS, eps=settings.ADAM_EPS,
               weight_decay=weight_decay, foreach=False)


class Trainer:
    """One network and one optimizer (its state carries across strategies), stepped eagerly."""

    ops = ops

    def __init__(self, config, strategies):
        torch.use_deterministic_algorithms(True)
        self.config = config
        self.strategies = {s: core.STRATEGIES[s] for s in strategies}
        self.dtype, self.device = getattr(torch, config.dtype), config.device
        network = strategy_step.network(core.STRATEGIES[config.strategy])
        self.net = Net(config.params, network=network, grow=config.grow, train=config.train,
                       dtype=config.dtype, device=config.device)
        self.opt = torch_optimizer(config.optimizer, self.net.variables, config.lr,
                                   config.weight_decay)
        self.reference, self.reference_targets = (
            None if a is None else self.tensor(a)
            for a in (config.reference, config.reference_targets))
        self.memories = None if config.reference_tasks is None else memory.by_task(
            ops, self.reference, self.reference_targets, config.reference_tasks)
        self.held = {}  # start values that stay across steps (bases), as tensors
        self._before = None  # the parameters before a corrected step, reused every step
        self._graded = None  # the variables that require grad (a grown net's pieces)

    def tensor(self, a):
        return torch.as_tensor(a, dtype=self.dtype, device=self.device)

    # --- the loop's side ------------------------------------------------------------------------
    def prepare(self, batch):
        """Return the step's inputs as tensors (strategy_step.StepInputs)."""
        start = {name: self.tensor(v) for name, v in (batch.start or {}).items()
                 if name not in self.held}
        options = {"distill_weight": self.config.distill_weight,
                   "ewc_strength": self.config.ewc_strength}
        return strategy_step.StepInputs(
            self.tensor(batch.x), self.tensor(batch.y), self.reference, self.reference_targets,
            self.memories, minibatch=batch.rows is not None, start={**self.held, **start},
            options=options)

    def step(self, strategy, prepared):
        residual = strategy_step.take_step(self, self.strategies[strategy], prepared)[1]
        return None if residual is None else float(residual)

    def set_lr(self, lr):
        for group in self.opt.param_groups:
            group["lr"] = lr

    def start(self, values):
        for name in strategy_step.HELD:
            if name in values:
                self.held[name] = [tuple(self.tensor(a) for a in pair) for pair in values[name]]

    def outputs(self, x):
        with torch.no_grad():
            return self.forward(self.tensor(x))[1].cpu().numpy()

    def layer_inputs(self, x):
        with torch.no_grad():
            hs, out = self.forward(self.tensor(x))
        return [h.cpu().numpy() for h in hs], out.cpu().numpy()

    def numpy_params(self):
        Ws, bs = self.layers()
        return {f"{p}{l}": a.detach().cpu().numpy().copy()
                for l, (W, b) in enumerate(zip(Ws, bs), start=1) for p, a in (("W", W), ("b", b))}

    def loss_gradients(self, x, y):
        Ws, bs = self.layers()
        _, out = nullspace.forward(ops, Ws, bs, self.tensor(x), self.config.activation)
        loss = strategy_step.full_loss(ops, out, self.tensor(y), self.config.loss)
        grads = torch.autograd.grad(loss, list(Ws) + list(bs))
        return {f"{p}{l}": g.cpu().numpy() for p, part in (("W", grads[:len(Ws)]),
                                                           ("b", grads[len(Ws):]))
                for l, g in enumerate(part, start=1)}

    def sync(self):
        if self.device == "cuda":
            torch.cuda.synchronize()

    # --- take_step's side ------------------------------------------------------------------------
    def layers(self):
        return self.net.layers()

    def forward(self, x, variables=None):
        if self.net.grow and variables is not None and self._graded is not variables:
            for p in self.net.variables:  # frozen pieces stay out of the backward pass
                p.requires_grad_(False)
            for p in variables:
                p.requires_grad_(True)
            self._graded = variables
        return nullspace.forward(ops, *self.layers(), x, self.config.activation)

    def gradients(self, ys, variables, grad_ys):
        return torch.autograd.grad(ys, variables, grad_outputs=grad_ys)

    def apply(self, grads, variables, after=None):
        for p in self.net.variables:
            p.grad = None  # None, not zero: optimizers skip it (no decay, no state update)
        for p, g in zip(variables, grads):
            p.grad = g
        self.opt.step()
        return variables

    def snapshot(self, variables, after=None):
        if self._before is None:  # reused every step: no large allocation per step
            self._before = [torch.empty_like(p) for p in variables]
        for o, p in zip(self._before, variables):
            o.copy_(p)
        return self._before

    def assign(self, variables, values):
        for p, v in zip(variables, values):
            p.copy_(v)

    def no_grad(self):
        return torch.no_grad()


RUNNER = training.Runner(NAME, Trainer, ops)


def configure(threads=None):
    """Make torch deterministic; pin its intra-op threads when `threads` is given."""
    torch.use_deterministic_algorithms(True)
    if threads:
        torch.set_num_threads(threads)


def cuda_available() -> bool:
    """Say whether torch sees a CUDA device."""
    return torch.cuda.is_available()


def device_name() -> str:
    """Name the device a cuda run would use (the CPU otherwise)."""
    return torch.cuda.get_device_name(0) if cuda_available() else "cpu"
