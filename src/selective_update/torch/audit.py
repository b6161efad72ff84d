"""audit: run your training step and say which parameter feeding the kept outputs moved, and what
moved it where its gradient was zero."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from ..validation import check_int, fail
from .kept_outputs import KeptOutputs

class Audit(NamedTuple):
    """What audit measured: one row per parameter feeding the kept outputs, and their drift."""

    table: object  # pandas.DataFrame indexed by parameter name
    drift: np.ndarray  # (steps + 1,) max |change| of the kept outputs at inputs since the start


def _feeding_masks(f):
    """Return, per parameter, the entries the kept outputs at inputs depend on."""
    theta = f.flat()
    with torch.enable_grad():
        value, jtv = torch.func.vjp(f, theta)  # Jᵀ u, one backward pass per call
        generator = torch.Generator(device="cpu").manual_seed(0)
        total = torch.zeros_like(theta)
        for _ in range(2):  # a random cotangent hits an exact zero with probability 0
            u = torch.randn(value.numel(), generator=generator, dtype=theta.dtype)
            total = total + jtv(u.to(theta.device))[0].abs()
    return [m != 0 for m in f.unflat(total).values()]


def _on(mask, tensor):
    return tensor.detach()[mask] if tensor is not None else None


def _max_abs(values):
    return float(values.abs().max()) if values is not None and values.numel() else 0.0


def audit(model, optimizer, keep, inputs, step, steps=5, *, output_fn=None) -> Audit:
    """Run step() `steps` times and report, per parameter feeding the kept outputs, what moved it.

    step: your training step (zero_grad, forward, loss, backward, optimizer.step()). The table
    restricts each parameter to the entries the kept outputs at inputs depend on; "moved_by"
    names the gradient, and, where an entry moved although its gradient was zero or None, the
    optimizer setting that did it: weight decay, a momentum buffer, Adam moments.
    """
    import pandas as pd

    if not isinstance(optimizer, torch.optim.Optimizer):
        fail("optimizer", type(optimizer).__name__, "a torch.optim.Optimizer")
    if not callable(step):
        fail("step", type(step).__name__, "a callable taking no arguments (your training step)")
    steps = check_int("steps", steps, 1)
    f = KeptOutputs(model, keep, inputs, output_fn)
    masks = _feeding_masks(f)
    rows = [i for i, m in enumerate(masks) if bool(m.any())]
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    start, kept0 = [f.params[i].detach().clone() for i in rows], f(f.flat()).detach()
    stats = {i: dict(grad_norm=0.0, grad_none=True, without_grad=0.0, momentum=0.0, adam=0.0)
             for i in rows}
    seen = {}

    def pre_hook(opt, args, kwargs):  # what the optimizer sees right before it steps
        for i in rows:
            p, mask = f.params[i], masks[i]
            state = opt.state.get(p, {})
            seen[i] = (p.grad.detach().clone() if p.grad is not None else None,
                       _max_abs(_on(mask, state.get("momentum_buffer"))),
                       _max_abs(_on(mask, state.get("exp_avg"))))

    handle = optimizer.register_step_pre_hook(pre_hook)
    drift = [0.0]
    try:
        for _ in range(steps):
            seen.clear()
            before = [f.params[i].detach().clone() for i in rows]
            step()
            for i, old in zip(rows, before):
                mask, s = masks[i], stats[i]
                grad, momentum, adam = seen.get(i, (None, 0.0, 0.0))
                moved = (f.params[i].detach() - old)[mask]
                if grad is not None:
                    s["grad_none"] = False
                    s["grad_norm"] = max(s["grad_norm"], float(grad[mask].norm()))
                    moved = moved[grad[mask] == 0]
                s["without_grad"] = max(s["without_grad"], _max_abs(moved))
                s["momentum"], s["adam"] = max(s["momentum"], momentum), max(s["adam"], adam)
            with torch.no_grad():
                drift.append(float((f(f.flat()) - kept0).abs().max()))
    finally:
        handle.remove()
    table = []
    for i, old in zip(rows, start):
        p, mask, s = f.params[i], masks[i], stats[i]
        group = group_of.get(id(p))
        decay = float(group.get("weight_decay", 0.0)) if group else 0.0
        change = _max_abs((p.detach() - old)[mask])
        causes = ["gradient"] if s["grad_norm"] > 0 else []
        if s["without_grad"] > 0:
            found = [c for c, on in (("weight decay", decay > 0),
                                     ("momentum buffer", s["momentum"] > 0),
                                     ("Adam moments", s["adam"] > 0)) if on]
            causes += found or ["code outside the optimizer's update"]
        table.append({
            "parameter": f.names[i], "shape": tuple(p.shape), "feeding": int(mask.sum()),
            "in_optimizer": group is not None, "grad_norm": None if s["grad_none"]
            else s["grad_norm"], "moved": change > 0, "max_change": change,
            "moved_where_grad_zero": s["without_grad"], "weight_decay": decay,
            "momentum_buffer": s["momentum"], "adam_moment": s["adam"],
            "moved_by": ", ".join(causes) if change > 0 else "-"})
    return Audit(pd.DataFrame(table).set_index("parameter"), np.asarray(drift))
