"""The bench's torch-only pieces: the materialized-Jacobian reference step and projection cases.

Built from the torch module's public pieces (make_optimizer, project_step[_jacobian]) and
nullspace.forward, so the reference does not depend on how the trainer's step is written.
"""
from __future__ import annotations

import numpy as np
import torch

from . import core, nullspace
from . import torch as su_torch
from .timing import KEEP, LR, TRAIN


def cuda_available() -> bool:
    """Say whether torch sees a CUDA device."""
    return torch.cuda.is_available()


def device_name() -> str:
    """Name the first CUDA device."""
    return torch.cuda.get_device_name(0)


class ReferenceNullSpaceStep:
    """One torch null_space step (masked loss, sgd, project, apply) with a given projection.

    Built from public pieces only (nullspace.forward, make_optimizer, project_step[_jacobian]),
    so the Jacobian reference does not depend on how the trainer's step is written.
    """

    def __init__(self, params, data, args, project):
        dt = getattr(torch, args.dtype)

        def leaf(a):
            return torch.tensor(np.asarray(a), dtype=dt, device=args.device, requires_grad=True)

        L = core.n_layers(params)
        self.Ws = [leaf(params[f"W{l}"]) for l in range(1, L + 1)]
        self.bs = [leaf(params[f"b{l}"]) for l in range(1, L + 1)]
        self.x = torch.as_tensor(data.x, dtype=dt, device=args.device)
        self.y = torch.as_tensor(data.y, dtype=dt, device=args.device)
        self.mask = torch.as_tensor(core.train_mask(data.y.shape[1], TRAIN), dtype=dt,
                                    device=args.device)
        self.opt = su_torch.make_optimizer("sgd", self.Ws + self.bs, LR, 0.0)
        self.forward = lambda: nullspace.forward(su_torch, self.Ws, self.bs, self.x)
        self.project = project

    def __call__(self):
        _, out = self.forward()
        params = self.Ws + self.bs
        grads = torch.autograd.grad(((self.mask * (out - self.y)) ** 2).mean(), params)
        for p, g in zip(params, grads):
            p.grad = g
        with torch.no_grad():
            old = [p.clone() for p in params]
            self.opt.step()
            L = len(self.Ws)
            steps = [p - o for p, o in zip(params, old)]
            dWs, dbs = self.project(old[:L], old[L:], self.x, KEEP, steps[:L], steps[L:])
            for p, o, d in zip(params, old, dWs + dbs):
                p.copy_(o + d)


def projection_cases(params, data, args, jacobian):
    """Return {name: callable} projecting a random step with the Gram form (and the Jacobian)."""
    dt = getattr(torch, args.dtype)
    L = core.n_layers(params)
    Ws = [torch.as_tensor(params[f"W{l}"], dtype=dt, device=args.device) for l in range(1, L + 1)]
    bs = [torch.as_tensor(params[f"b{l}"], dtype=dt, device=args.device) for l in range(1, L + 1)]
    x = torch.as_tensor(data.x, dtype=dt, device=args.device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    dWs = [1e-3 * torch.randn(W.shape, generator=gen, dtype=dt).to(args.device) for W in Ws]
    dbs = [1e-3 * torch.randn(b.shape, generator=gen, dtype=dt).to(args.device) for b in bs]
    cases = {"projection_gram": lambda: su_torch.project_step(Ws, bs, x, KEEP, dWs, dbs)}
    if jacobian:
        cases["projection_jacobian"] = \
            lambda: su_torch.project_step_jacobian(Ws, bs, x, KEEP, dWs, dbs)
    return cases


