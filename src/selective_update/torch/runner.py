"""PyTorch's runner: the study's strategies as eager steps, with the same numbers as tf1's."""
from __future__ import annotations

import functools
import time

import numpy as np
import torch

from .. import core, settings
from ..algorithms import growth, nullspace, protected, subspace
from ..core import options
from ..settings import PROJECTION_SWEEPS
from . import ops

NAME = "torch"

# --- the network ---------------------------------------------------------------------------------

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
        if grow:
            self.sizes, self.train = core.layer_sizes(params), train
            parts = growth.pieces(params, grow, train)
            self.pieces = {name: leaf(value) for name, (value, _) in parts.items()}
            self.trained = [self.pieces[name] for name, (_, t) in parts.items() if t]
            self.zeros = {}  # growth.assemble's constant blocks, made once
            return
        self.Ws = [leaf(params[f"W{l}"]) for l in range(1, L)]
        self.bs = [leaf(params[f"b{l}"]) for l in range(1, L)]
        W_L, b_L = params[f"W{L}"], params[f"b{L}"]
        if split:
            self.head_Ws = [leaf(W_L[:, k]) for k in range(W_L.shape[1])]
            self.head_bs = [leaf(b_L[k]) for k in range(W_L.shape[1])]
        else:
            self.Ws.append(leaf(W_L))
            self.bs.append(leaf(b_L))

    def layers(self):
        """Return (Ws, bs) with the output heads joined by torch.stack."""
        if self.grow:
            like = self.pieces["old_W1"]
            return growth.assemble(ops, self.pieces, self.sizes, self.grow, self.train, like,
                                   self.zeros)
        if not self.split:
            return self.Ws, self.bs
        return (self.Ws + [torch.stack(self.head_Ws, dim=1)],
                self.bs + [torch.stack(self.head_bs)])

    def parameters(self):
        """List every leaf tensor in a fixed order."""
        if self.grow:
            return list(self.pieces.values())
        heads = self.head_Ws + self.head_bs if self.split else []
        return [t for pair in zip(self.Ws, self.bs) for t in pair] + heads

    def trainable(self, strategy, train):
        """List the variables a strategy gives to the optimizer (its var_list)."""
        trains = core.STRATEGIES[strategy].trains
        if trains == "all":
            return self.parameters()
        if trains == "last_layer":
            return [self.Ws[-1], self.bs[-1]]
        if trains == "grown":
            return self.trained
        return [self.head_Ws[k] for k in train] + [self.head_bs[k] for k in train]

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


def make_optimizer(name, variables, lr, weight_decay):
    """Build the torch optimizer that matches the TF1 one of the same name."""
    if name == "sgd":
        return torch.optim.SGD(variables, lr=lr, weight_decay=weight_decay, foreach=False)
    if name == "momentum":
        return torch.optim.SGD(variables, lr=lr, momentum=settings.MOMENTUM,
                               weight_decay=weight_decay, foreach=False)
    cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
    return cls(variables, lr=lr, betas=settings.ADAM_BETAS, eps=settings.ADAM_EPS,
               weight_decay=weight_decay, foreach=False)


# --- one training step --------------------------------------------------------------------------

class _Trainer:
    """Run strategy steps on one network with one optimizer (its state carries across phases)."""

    def __init__(self, cfg, split):
        dt, dev = getattr(torch, cfg["dtype"]), cfg["device"]
        data = cfg["data"]
        self.cfg = cfg
        self.x = torch.as_tensor(data.x, dtype=dt, device=dev)
        self.y = torch.as_tensor(data.y, dtype=dt, device=dev)
        self.x_eval = torch.as_tensor(data.x_eval, dtype=dt, device=dev)
        ref = cfg.get("reference")
        self.x_ref = None if ref is None else torch.as_tensor(ref, dtype=dt, device=dev)
        self.residuals = []  # final Gauss-Newton residual per corrected step
        self.x_prot = self.x if self.x_ref is None else self.x_ref  # the protected inputs
        n_out = data.y.shape[1]
        self.mask = torch.as_tensor(core.train_mask(n_out, cfg["train"]), dtype=dt, device=dev)
        self.G = torch.as_tensor(core.output_gradient(len(data.x), n_out, cfg["train"]),
                                 dtype=dt, device=dev)
        grow = cfg.get("grow") if core.STRATEGIES[cfg["strategy"]].trains == "grown" else None
        self.net = Net(cfg["params"], split=split, grow=grow, train=cfg["train"],
                       dtype=cfg["dtype"], device=dev)
        self.opt = make_optimizer(cfg["optimizer"], self.net.parameters(), cfg["lr"],
                                  cfg["weight_decay"])
        self._before = self._delta = None  # projected steps' buffers, made at the first one
        self._graded = None  # the strategy whose variables require grad (grow)

    def set_lr(self, lr):
        """Change the optimizer's learning rate (its state stays)."""
        for group in self.opt.param_groups:
            group["lr"] = lr

    def _gradients(self, strategy, variables):
        """Return the strategy's gradients and, detached, the forward pass they came from."""
        s = core.STRATEGIES[strategy]
        hs, out = self.net.forward(self.x)
        if s.loss == "output_gradient":
            grads = torch.autograd.grad(out, variables, grad_outputs=self.G)
        else:
            err = out - self.y if s.loss == "full" else self.mask * (out - self.y)
            loss = (err ** 2).mean()
            if s.loss == "distill":
                loss = loss + subspace.distill_penalty(ops, *self.net.layers(), self.x_prot,
                                                       self.cfg["keep"], self.distill_target,
                                                       self.cfg["distill_weight"])
            grads = torch.autograd.grad(loss, variables)
        return grads, [h.detach() for h in hs], out.detach()

    def start(self, strategy):
        """Take what a strategy keeps from its start: layer bases, or kept outputs to distill."""
        s = core.STRATEGIES[strategy]
        if not (s.subspace or s.loss == "distill"):
            return
        with torch.no_grad():
            hs, out = self.net.forward(self.x_prot)
        like = self.x
        if s.subspace:
            self.bases = [tuple(ops.const(a, like) for a in pair)
                          for pair in subspace.bases([h.cpu().numpy() for h in hs],
                                                     self.cfg["energy"])]
            self.keep_mask = ops.const(subspace.keep_mask(out.shape[1], self.cfg["keep"]), like)
        if s.loss == "distill":
            self.distill_target = out[:, list(self.cfg["keep"])].T.contiguous()

    def step(self, strategy):
        """Take one optimizer step of `strategy`."""
        s = core.STRATEGIES[strategy]
        variables = self.net.trainable(strategy, self.cfg["train"])
        if self.net.grow and self._graded != strategy:  # frozen pieces out of the backward
            for p in self.net.parameters():            # pass; set once per strategy switch
                p.requires_grad_(False)
            for p in variables:
                p.requires_grad_(True)
            self._graded = strategy
        grads, hs, out = self._gradients(strategy, variables)
        for p in self.net.parameters():
            p.grad = None  # None, not zero: optimizers skip it (no decay, no state update)
        for p, g in zip(variables, grads):
            p.grad = g
        if not (s.projected or s.subspace):
            self.opt.step()
            return
        keep, L = self.cfg["keep"], len(self.net.Ws)
        with torch.no_grad():
            params = self.net.Ws + self.net.bs
            if self._before is None:  # reused every step: no large allocation per step
                self._before = [torch.empty_like(p) for p in params]
                self._delta = [torch.empty_like(p) for p in params]
            for o, p in zip(self._before, params):
                o.copy_(p)
            self.opt.step()
            for d, p, o in zip(self._delta, params, self._before):
                torch.sub(p, o, out=d)
            if s.subspace:  # the optimizer's step less its part along protected directions
                cWs, cbs = subspace.correction(ops, self.bases, self._delta[:L],
                                               self._delta[L:], self.keep_mask)
                for p, c in zip(params, cWs + cbs):
                    p.sub_(c)
                return
            if self.x_ref is not None:
                self._protect_reference(s, params, L)
                return
            # hs: the gradient's forward pass, at the parameters before the step.
            cWs, cbs = nullspace.correction(ops, self._before[:L], self._before[L:], self.x, keep,
                                            self._delta[:L], self._delta[L:], hs=hs)
            for p, o, d, c in zip(params, self._before, self._delta, cWs + cbs):
                p.copy_(o).add_(d.sub_(c))  # old + (step - correction), as project_step
            if s.corrected:
                seed = nullspace.kept_seed(ops, keep, out.shape[0], out.shape[1], out)
                target = ops.einsum("kbj,bj->kb", seed, out)  # kept outputs before the step
                tol = settings.RESTORE_TOL[self.cfg["dtype"]]
                new_Ws, new_bs, err = nullspace.restore(
                    ops, params[:L], params[L:], self.x, keep, target, tol,
                    settings.GAUSS_NEWTON_MAX_STEPS)
                self.residuals.append(float(err))
                for p, v in zip(params, new_Ws + new_bs):
                    p.copy_(v)

    def _protect_reference(self, s, params, L):
        """Replace the optimizer's step by its protected-inputs version (algorithms.protected)."""
        form = protected.form_for(core.layer_sizes(self.cfg["params"]), len(self.cfg["keep"]),
                                  len(self.x_ref))
        Ws, bs, err = protected.protected_step(
            ops, self._before[:L], self._before[L:], self.x_ref, self.cfg["keep"],
            self._delta[:L], self._delta[L:], form=form, sweeps=PROJECTION_SWEEPS,
            corrected=s.corrected, tol=settings.RESTORE_TOL[self.cfg["dtype"]],
            max_steps=settings.GAUSS_NEWTON_MAX_STEPS)
        if err is not None:
            self.residuals.append(float(err))
        for p, v in zip(params, Ws + bs):
            p.copy_(v)

    def outputs(self, x):
        """Return the outputs at x as numpy."""
        with torch.no_grad():
            return self.net.forward(x)[1].cpu().numpy()

    def hidden(self):
        """Return the first hidden layer's activations on the batch as numpy."""
        with torch.no_grad():
            return self.net.forward(self.x)[0][1].cpu().numpy()

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


def make_steps(strategies, **run_kwargs):
    """Return ({strategy: callable taking one step}, sync): one trainer per strategy.

    run_kwargs are run()'s (params, data, keep, train, optimizer, lr, ...); for the bench. An
    option (energy, grow, distill_weight) goes only to the strategies that use it.
    """
    steps, sync = {}, None
    for s in strategies:
        cfg = core.check_run(s, NAME, warn=False, **options.options_for(s, run_kwargs))
        trainer = _Trainer(cfg, split=core.STRATEGIES[s].trains == "train_heads")
        trainer.start(s)
        steps[s] = functools.partial(trainer.step, s)
        sync = trainer.sync
    return steps, sync


def run(strategy, *, params, data, keep=(0,), train=(1,), optimizer="sgd", lr=0.1, steps=1,
        weight_decay=0.0, warm_start_steps=0, dtype="float64", device="cpu",
        warm_start_lr=None, **options) -> core.RunResult:
    """Run warm-start steps (all_params), then `steps` steps of `strategy`, recording outputs.

    options: reference, energy, grow, distill_weight (see selective_update.run).
    """
    cfg = core.check_run(strategy, NAME, params=params, data=data, keep=keep, train=train,
                         optimizer=optimizer, lr=lr, steps=steps, weight_decay=weight_decay,
                         warm_start_steps=warm_start_steps, dtype=dtype, device=device,
                         warm_start_lr=warm_start_lr, **options)
    configure()
    trainer = _Trainer(cfg, split=core.STRATEGIES[strategy].trains == "train_heads")
    trainer.set_lr(cfg["warm_start_lr"])
    for _ in range(cfg["warm_start_steps"]):
        trainer.step("all_params")
    trainer.set_lr(cfg["lr"])
    trainer.start(strategy)
    inputs = [trainer.x, trainer.x_eval] + ([] if trainer.x_ref is None else [trainer.x_ref])
    recorded, seconds = [[trainer.outputs(x)] for x in inputs], []
    for _ in range(cfg["steps"]):
        trainer.sync()
        start = time.perf_counter()
        trainer.step(strategy)
        trainer.sync()
        seconds.append(time.perf_counter() - start)
        for outs, x in zip(recorded, inputs):
            outs.append(trainer.outputs(x))
    ref = np.stack(recorded[2]) if len(recorded) > 2 else None
    residual = trainer.residuals if core.STRATEGIES[strategy].corrected else None
    return core.make_result(cfg, np.stack(recorded[0]), np.stack(recorded[1]),
                            trainer.net.numpy_params(), seconds, ref, residual)


def seed_demo(params, data, *, lr=0.1, steps=1, keep=(0,), train=(1,)) -> core.SeedDemo:
    """Replay the seed's demo: train_op2, train_op12, train_op_all, one SGD optimizer."""
    cfg = core.check_run("all_params", NAME, params=params, data=data, keep=keep, train=train,
                         optimizer="sgd", lr=lr, steps=steps)
    configure()
    trainer = _Trainer(cfg, split=False)
    record = [(trainer.hidden(), trainer.outputs(trainer.x))]
    for _, strategy in core.SEED_PHASES:
        for _ in range(cfg["steps"]):
            trainer.step(strategy)
        record.append((trainer.hidden(), trainer.outputs(trainer.x)))
    return core.make_seed_demo(cfg, record)
