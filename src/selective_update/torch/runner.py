"""PyTorch's runner: interprets each strategy's description eagerly, one step at a time.

What a strategy trains, its loss, its start and what follows its step are algorithms.strategy_step',
written once for both frameworks; this module holds what PyTorch itself does: leaf tensors,
autograd, torch.optim. Same strategies, optimizers and numbers as tf1's runner.
"""
from __future__ import annotations

import functools
import time

import numpy as np
import torch

from .. import core, settings
from ..algorithms import compensated, growth, nullspace, strategy_step, subspace
from ..core import options
from . import ops

NAME = "torch"


class Net:
    """Hold an MLP's parameters as leaf tensors; `split` gives one variable per output unit;
    `grow` new units per hidden layer, as growth.pieces (one variable per piece)."""

    def __init__(self, params, *, split=False, grow=None, train=(), dtype="float64",
                 device="cpu"):
        L = core.n_layers(params)
        dt = getattr(torch, dtype)

        def leaf(a):
            return torch.tensor(np.asarray(a), dtype=dt, device=device, requires_grad=True)

        self.split, self.grow = split, grow
        self.heads_W = self.heads_b = self.trained = None
        if grow:
            self.sizes, self.train = core.layer_sizes(params), train
            parts = growth.pieces(params, grow, train)
            self.pieces = {name: leaf(value) for name, (value, _) in parts.items()}
            self.trained = [self.pieces[name] for name, (_, t) in parts.items() if t]
            self.zeros = {}  # growth.assemble's constant blocks, made once
            self.variables = list(self.pieces.values())
            return
        self.Ws = [leaf(params[f"W{l}"]) for l in range(1, L)]
        self.bs = [leaf(params[f"b{l}"]) for l in range(1, L)]
        W_L, b_L = params[f"W{L}"], params[f"b{L}"]
        if split:
            self.heads_W = [leaf(W_L[:, k]) for k in range(W_L.shape[1])]
            self.heads_b = [leaf(b_L[k]) for k in range(W_L.shape[1])]
        else:
            self.Ws.append(leaf(W_L))
            self.bs.append(leaf(b_L))
        self.variables = ([t for pair in zip(self.Ws, self.bs) for t in pair]
                          + (self.heads_W + self.heads_b if split else []))

    def layers(self):
        """Return (Ws, bs) with the output heads joined by torch.stack."""
        if self.grow:
            like = self.pieces["old_W1"]
            return growth.assemble(ops, self.pieces, self.sizes, self.grow, self.train, like,
                                   self.zeros)
        if not self.split:
            return self.Ws, self.bs
        return (self.Ws + [torch.stack(self.heads_W, dim=1)],
                self.bs + [torch.stack(self.heads_b)])

    def forward(self, x):
        """Return the hidden activations and the outputs."""
        Ws, bs = self.layers()
        return nullspace.forward(ops, Ws, bs, x)

    def numpy_params(self):
        """Return the parameters as a params dict of numpy arrays."""
        Ws, bs = self.layers()
        out = {}
        for l, (W, b) in enumerate(zip(Ws, bs), start=1):
            out[f"W{l}"] = W.detach().cpu().numpy().copy()
            out[f"b{l}"] = b.detach().cpu().numpy().copy()
        return out


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
    """Run strategy steps on one network with one optimizer (its state carries across phases)."""

    def __init__(self, config, split):
        dt, dev = getattr(torch, config.dtype), config.device
        data = config.data
        self.config = config
        self.x_all = torch.as_tensor(data.x, dtype=dt, device=dev)  # outputs are recorded here
        self.y_all = torch.as_tensor(data.y, dtype=dt, device=dev)
        self.x, self.y = self.x_all, self.y_all  # the step's batch (use_rows: its mini-batch)
        self.x_eval = torch.as_tensor(data.x_eval, dtype=dt, device=dev)
        ref = config.reference
        self.x_ref = None if ref is None else torch.as_tensor(ref, dtype=dt, device=dev)
        self.x_start = self.x if self.x_ref is None else self.x_ref  # start values taken here
        self.x_prot = self.x_start  # the step's protected inputs (use_rows: its mini-batch)
        self.residuals = []  # final Gauss-Newton residual per corrected step
        n_out = data.y.shape[1]
        self.mask = torch.as_tensor(core.output_mask(n_out, config.train), dtype=dt, device=dev)
        self.G = torch.as_tensor(core.output_gradient(config.step_rows, n_out, config.train),
                                 dtype=dt, device=dev)
        grow = config.grow if core.STRATEGIES[config.strategy].trains == "grown" else None
        self.net = Net(config.params, split=split, grow=grow, train=config.train,
                       dtype=config.dtype, device=dev)
        self.opt = torch_optimizer(config.optimizer, self.net.variables, config.lr,
                                   config.weight_decay)
        form = strategy_step.protected_form(config)
        self.after = strategy_step.AfterStep(
            keep=config.keep, tol=settings.RESTORE_TOL[config.dtype],
            max_steps=settings.GAUSS_NEWTON_MAX_STEPS, sweeps=settings.PROJECTION_SWEEPS,
            x=self.x, x_ref=self.x_ref, form=form)
        self.distill_target = self.step_target = None  # distill: all start values, the step's
        self._before = None  # the parameters before a projected step, reused every step
        self._first_inputs = None  # compensated_gradient: x x^T + 1 while the inputs stay
        self._graded = None  # the strategy whose variables require grad (grow)

    def set_lr(self, lr):
        """Change the optimizer's learning rate (its state stays)."""
        for group in self.opt.param_groups:
            group["lr"] = lr

    def _gradients(self, s, variables):
        """Return the strategy's gradients and, detached, the forward pass they came from."""
        hs, out = self.net.forward(self.x)
        if s.loss == "output_gradient":
            grads = torch.autograd.grad(out, variables, grad_outputs=self.G)
        elif s.loss == "compensated_gradient":
            grads = self._compensated(s, hs, out, variables)
        else:
            penalty = None
            if s.loss == "distill":
                penalty = subspace.distill_penalty(ops, *self.net.layers(), self.x_prot,
                                                   self.config.keep, self.step_target,
                                                   self.config.distill_weight)
            loss = strategy_step.loss(ops, s, out, self.y, self.mask, penalty)
            grads = torch.autograd.grad(loss, variables)
        return grads, [h.detach() for h in hs], out.detach()

    def _compensated(self, s, hs, out, variables):
        """Back-propagate G' in place of the masked loss's G (reference: with the reference
        inputs' outputs, which get -alpha on the kept outputs)."""
        hs_ref, out_ref = (None, None) if self.x_ref is None else self.net.forward(self.x_ref)
        with torch.no_grad():
            G = strategy_step.loss_gradient(ops, s, out, self.y, self.mask)
            if self._first_inputs is None:
                self._first_inputs = compensated.first_inputs(ops, self.x, self.x_ref)
            G_prime = compensated.compensated_gradient(ops, self.net.Ws, hs, G, self.config.keep,
                                                       hs_ref, self._first_inputs)
        if out_ref is None:
            return torch.autograd.grad(out, variables, grad_outputs=G_prime)
        return torch.autograd.grad((out, out_ref), variables, grad_outputs=(G, G_prime))

    def start(self, strategy):
        """Take what a strategy keeps from its start: layer bases, or kept outputs to distill."""
        s = core.STRATEGIES[strategy]
        if not s.starts:
            return
        with torch.no_grad():
            hs, out = self.net.forward(self.x_start)
        self._take_start(s, hs, out)
        if self.distill_target is not None:
            self.step_target = self.distill_target

    def _take_start(self, s, hs, out):
        """Hold a strategy's start values (strategy_step.start_values) as tensors."""
        values = strategy_step.start_values(s, self.config, [h.cpu().numpy() for h in hs],
                                    out.cpu().numpy())
        if "bases" in values:
            self.after.bases = [tuple(ops.const(a, self.x) for a in pair)
                                for pair in values["bases"]]
            kept = strategy_step.keep_columns(out.shape[1], self.config.keep)
            self.after.keep_mask = ops.const(kept, self.x)
        if "distill_target" in values:
            self.distill_target = ops.const(values["distill_target"], self.x)

    def use_rows(self, rows):
        """Make the next step train on rows of data.x (a mini-batch) and protect them, where no
        reference is given (strategy_step.protects_minibatch)."""
        index = torch.as_tensor(rows, device=self.x_all.device)
        self.x, self.y = self.x_all[index], self.y_all[index]
        self.after.x = self.x
        self._first_inputs = None
        if self.x_ref is None:
            self.x_prot = self.after.x_ref = self.x  # projections factor the mini-batch
            if self.distill_target is not None:
                self.step_target = self.distill_target[:, index]

    def step(self, strategy, rows=None):
        """Take one optimizer step of `strategy` (on rows of data.x: a mini-batch; None: the
        batch of the previous step, all of data.x at first)."""
        s = core.STRATEGIES[strategy]
        if rows is not None:
            self.use_rows(rows)
        variables = strategy_step.var_list(s, self.net, self.config.train)
        if self.net.grow and self._graded != strategy:  # frozen pieces out of the backward
            for p in self.net.variables:               # pass; set once per strategy switch
                p.requires_grad_(False)
            for p in variables:
                p.requires_grad_(True)
            self._graded = strategy
        grads, hs, out = self._gradients(s, variables)
        if rows is not None and strategy_step.rebases(s, self.config):
            self._take_start(s, hs, out)  # layer_subspace: the bases of this mini-batch
        for p in self.net.variables:
            p.grad = None  # None, not zero: optimizers skip it (no decay, no state update)
        for p, g in zip(variables, grads):
            p.grad = g
        if s.after == "none":
            self.opt.step()
            return
        L = len(self.net.Ws)
        with torch.no_grad():
            params = self.net.Ws + self.net.bs
            if self._before is None:  # reused every step: no large allocation per step
                self._before = [torch.empty_like(p) for p in params]
            for o, p in zip(self._before, params):
                o.copy_(p)
            self.opt.step()
            self.after.hs, self.after.out = hs, out  # the gradient's forward pass
            Ws, bs, residual = strategy_step.after_step(ops, s, self.after, self._before[:L],
                                                self._before[L:], params[:L], params[L:])
            if residual is not None:
                self.residuals.append(float(residual))
            for p, v in zip(params, Ws + bs):
                p.copy_(v)

    def outputs(self, x):
        """Return the outputs at x as numpy."""
        with torch.no_grad():
            return self.net.forward(x)[1].cpu().numpy()

    def hidden(self):
        """Return the first hidden layer's activations on data.x as numpy."""
        with torch.no_grad():
            return self.net.forward(self.x_all)[0][1].cpu().numpy()

    def sync(self):
        """Wait for queued device work, so step timings are honest."""
        if self.x.is_cuda:
            torch.cuda.synchronize()


def project_step(Ws, bs, x, keep, dWs, dbs):
    """Project a step onto the null space of the kept outputs' Jacobian (layer-wise Gram form)."""
    return nullspace.project(ops, Ws, bs, x, keep, dWs, dbs)


def configure(threads=None):
    """Make torch deterministic; pin its intra-op threads when `threads` is given."""
    torch.use_deterministic_algorithms(True)
    if threads:
        torch.set_num_threads(threads)


def make_steps(strategies, **arguments):
    """Return ({strategy: callable taking one step}, sync): one trainer per strategy.

    arguments are run()'s (params, data, keep, train, optimizer, lr, ...); for the bench. An
    option (energy, grow, distill_weight) goes only to the strategies that use it.
    """
    taken, sync = {}, None
    for s in strategies:
        config = core.check_run(s, NAME, warn=False, **options.options_for(s, arguments))
        strategy_step.check_full_batch(config, "make_steps")
        trainer = Trainer(config, split=core.STRATEGIES[s].trains == "train_heads")
        trainer.start(s)
        taken[s] = functools.partial(trainer.step, s)
        sync = trainer.sync
    return taken, sync


def run(strategy, **arguments) -> core.RunResult:
    """Run warm-start steps (all_params), then `steps` steps of `strategy`, recording outputs.

    arguments: selective_update.run's keyword arguments (core.ARGUMENTS).
    """
    return train(core.check_run(strategy, NAME, **arguments))


def train(config) -> core.RunResult:
    """Train a checked core.RunConfig and record the outputs after every step."""
    configure()
    strategy = config.strategy
    trainer = Trainer(config, split=core.STRATEGIES[strategy].trains == "train_heads")
    warm = config.warm_start_steps
    batches = config.batches(warm + config.steps)
    rows = [None] * (warm + config.steps) if batches is None else list(batches)
    trainer.set_lr(config.warm_start_lr)
    for i in range(warm):
        trainer.step("all_params", rows[i])
    trainer.set_lr(config.lr)
    trainer.start(strategy)
    inputs = [trainer.x_all, trainer.x_eval] + ([] if trainer.x_ref is None else [trainer.x_ref])
    recorded, seconds = [[trainer.outputs(x)] for x in inputs], []
    for i in range(warm, warm + config.steps):
        trainer.sync()
        start = time.perf_counter()
        trainer.step(strategy, rows[i])
        trainer.sync()
        seconds.append(time.perf_counter() - start)
        for outs, x in zip(recorded, inputs):
            outs.append(trainer.outputs(x))
    ref = np.stack(recorded[2]) if len(recorded) > 2 else None
    residual = trainer.residuals if core.STRATEGIES[strategy].corrected else None
    return core.make_result(config, np.stack(recorded[0]), np.stack(recorded[1]),
                            trainer.net.numpy_params(), seconds, ref, residual,
                            None if batches is None else batches[warm:])


def seed_demo(params, data, *, lr=0.1, steps=1, keep=(0,), train=(1,)) -> core.SeedDemo:
    """Replay the seed's demo: train_op2, train_op12, train_op_all, one SGD optimizer; then
    train_op_compensated: G = [0, -1] per sample becomes G' = [-alpha, -1] and
    torch.autograd.grad(out, params, grad_outputs=G') is applied."""
    config = core.check_run("all_params", NAME, params=params, data=data, keep=keep,
                            train=train, optimizer="sgd", lr=lr, steps=steps)
    configure()
    trainer = Trainer(config, split=False)
    record = [(trainer.hidden(), trainer.outputs(trainer.x))]
    for _, strategy in core.SEED_PHASES:
        for _ in range(config.steps):
            trainer.step(strategy)
        record.append((trainer.hidden(), trainer.outputs(trainer.x)))
    G = torch.as_tensor(core.question_gradient(*data.y.shape, config.train),
                        dtype=trainer.x.dtype)
    compensation = [_compensated_step(trainer, G) for _ in range(config.steps)][0]
    record.append((trainer.hidden(), trainer.outputs(trainer.x)))
    return core.make_seed_demo(config, record, *compensation)


def _compensated_step(trainer, G):
    """Take one optimizer step of every variable along G' (compensated G); return (alpha, G')."""
    hs, out = trainer.net.forward(trainer.x)
    with torch.no_grad():
        G_prime, alpha = compensated.compensate(ops, trainer.net.Ws, hs, G, trainer.config.keep)
    grads = torch.autograd.grad(out, trainer.net.variables, grad_outputs=G_prime)
    for p, g in zip(trainer.net.variables, grads):
        p.grad = g
    trainer.opt.step()
    return alpha.numpy(), G_prime.numpy()
