"""The bench's Jacobian baseline (parts `table` and `sweep`); no public face exports it.

Null-space projection through the materialized Jacobian (torch.func.jacrev + pinv): the slow,
obviously-right way the layer-wise Gram form is checked and timed against. Built from public
pieces only (the runner's torch_optimizer and project_step, nullspace.forward), so it does not
depend on how the runner's step is written.
"""
from __future__ import annotations

import numpy as np
import torch

from .. import core
from ..algorithms import nullspace
from . import ops
from .runner import RUNNER, torch_optimizer

project_step = RUNNER.project_step


def project_step_jacobian(Ws, bs, x, keep, dWs, dbs):
    """Project a step with the materialized Jacobian (torch.func.jacrev): the slow baseline."""
    sizes = [t.numel() for pair in zip(Ws, bs) for t in pair]
    shapes = [t.shape for pair in zip(Ws, bs) for t in pair]
    flat = torch.cat([t.reshape(-1) for pair in zip(Ws, bs) for t in pair])

    def kept(theta):
        parts = [p.reshape(s) for p, s in zip(torch.split(theta, sizes), shapes)]
        return nullspace.kept_outputs(ops, parts[0::2], parts[1::2], x, keep).reshape(-1)

    J = torch.func.jacrev(kept)(flat)
    step = torch.cat([t.reshape(-1) for pair in zip(dWs, dbs) for t in pair])
    projected = step - torch.linalg.pinv(J) @ (J @ step)
    parts = [p.reshape(s) for p, s in zip(torch.split(projected, sizes), shapes)]
    return parts[0::2], parts[1::2]


class JacobianNullSpaceStep:
    """One torch null_space step (masked loss, sgd, project, apply) with a given projection."""

    def __init__(self, params, data, *, keep, train, lr, dtype, device, project):
        dt = getattr(torch, dtype)

        def leaf(a):
            return torch.tensor(np.asarray(a), dtype=dt, device=device, requires_grad=True)

        L = core.n_layers(params)
        self.Ws = [leaf(params[f"W{l}"]) for l in range(1, L + 1)]
        self.bs = [leaf(params[f"b{l}"]) for l in range(1, L + 1)]
        self.x = torch.as_tensor(data.x, dtype=dt, device=device)
        self.y = torch.as_tensor(data.y, dtype=dt, device=device)
        self.mask = torch.as_tensor(core.output_mask(data.y.shape[1], train), dtype=dt,
                                    device=device)
        self.keep = keep
        self.opt = torch_optimizer("sgd", self.Ws + self.bs, lr)
        self.project = project

    def __call__(self):
        _, out = nullspace.forward(ops, self.Ws, self.bs, self.x)
        params = self.Ws + self.bs
        grads = torch.autograd.grad(((self.mask * (out - self.y)) ** 2).mean(), params)
        for p, g in zip(params, grads):
            p.grad = g
        with torch.no_grad():
            old = [p.clone() for p in params]
            self.opt.step()
            L = len(self.Ws)
            steps = [p - o for p, o in zip(params, old)]
            dWs, dbs = self.project(old[:L], old[L:], self.x, self.keep, steps[:L], steps[L:])
            for p, o, d in zip(params, old, dWs + dbs):
                p.copy_(o + d)


def projection_cases(params, data, *, keep, dtype, device, jacobian):
    """Return {name: callable} projecting a random step with the Gram form (and the Jacobian)."""
    dt = getattr(torch, dtype)
    L = core.n_layers(params)
    Ws = [torch.as_tensor(params[f"W{l}"], dtype=dt, device=device) for l in range(1, L + 1)]
    bs = [torch.as_tensor(params[f"b{l}"], dtype=dt, device=device) for l in range(1, L + 1)]
    x = torch.as_tensor(data.x, dtype=dt, device=device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    dWs = [1e-3 * torch.randn(W.shape, generator=gen, dtype=dt).to(device) for W in Ws]
    dbs = [1e-3 * torch.randn(b.shape, generator=gen, dtype=dt).to(device) for b in bs]
    cases = {"projection_gram": lambda: project_step(Ws, bs, x, keep, dWs, dbs)}
    if jacobian:
        cases["projection_jacobian"] = lambda: project_step_jacobian(Ws, bs, x, keep, dWs, dbs)
    return cases
