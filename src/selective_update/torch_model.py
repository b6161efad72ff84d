"""Keep chosen outputs of your own PyTorch model fixed: split_head, NullSpaceProjector, audit.

- `split_head(model, head, train)`: the TF1 answer's approach (a) for any nn.Module. Exact for
  every input, optimizer, weight decay and warm start.
- `NullSpaceProjector(model, keep, inputs).attach(optimizer)`: every parameter trains; each step
  the optimizer actually took is projected onto the null space of the kept outputs' Jacobian at
  `inputs` (first order; `corrected=True` restores them there with Gauss-Newton steps).
- `audit(model, optimizer, keep, inputs, step)`: run your training step and say which parameter
  feeding the kept outputs moved, and what moved it where its gradient was zero.
"""
from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, jvp, vjp, vmap
from torch.nn.utils import parametrize

from .core import RestoreWarning
from .settings import GAUSS_NEWTON_MAX_STEPS, RESTORE_TOL
from .validation import check_int, check_outputs, fail

CHUNK_ELEMENTS = 2 ** 22  # tangents built at once when forming a Gram matrix (memory bound)


# --- split_head: approach (a) ----------------------------------------------------------------

class KeepRows(nn.Module):
    """Parametrization: a frozen copy of the tensor, except `train` rows read from the original."""

    def __init__(self, value, train):
        super().__init__()
        mask = torch.zeros(value.shape[0], dtype=torch.bool, device=value.device)
        mask[list(train)] = True
        self.register_buffer("frozen", value.detach().clone())  # persistent: loads with the model
        self.register_buffer("mask", mask.reshape((-1,) + (1,) * (value.dim() - 1)),
                             persistent=False)
        self.train_rows = tuple(train)

    def forward(self, original):
        # The kept rows come bitwise from `frozen`: whatever an optimizer does to the original's
        # kept rows (decay, momentum, Adam moments) never reaches the layer.
        return torch.where(self.mask, original, self.frozen)


def _split_rows(module):
    """Return the KeepRows on module.weight, or None."""
    if not parametrize.is_parametrized(module, "weight"):
        return None
    return next((p for p in module.parametrizations.weight if isinstance(p, KeepRows)), None)


def _state_dict_post_hook(module, state_dict, prefix, local_metadata):
    """Write the split layer under its plain keys (weight, bias), as an unsplit copy expects."""
    for name in ("weight", "bias"):
        if parametrize.is_parametrized(module, name):
            for key in [k for k in state_dict if k.startswith(f"{prefix}parametrizations.{name}.")]:
                del state_dict[key]
            state_dict[prefix + name] = getattr(module, name).detach()


def _load_pre_hook(module, state_dict, prefix, *args):
    """Read plain keys (weight, bias) into the split layer: original and frozen copy alike."""
    for name in ("weight", "bias"):
        if parametrize.is_parametrized(module, name) and prefix + name in state_dict:
            value = state_dict.pop(prefix + name)
            state_dict[f"{prefix}parametrizations.{name}.original"] = value
            state_dict[f"{prefix}parametrizations.{name}.0.frozen"] = value


def _describe(module):
    """Name a module in one line: its class, and its sizes for a Linear."""
    if isinstance(module, nn.Linear):
        return f"Linear(in_features={module.in_features}, out_features={module.out_features})"
    return type(module).__name__


def _check_module(name, model):
    if not isinstance(model, nn.Module):
        fail(name, type(model).__name__, "a torch.nn.Module")


def split_head(model, head, train) -> list:
    """Let only the `train` rows of the nn.Linear `head` change; freeze everything else in model.

    Each of head.weight and head.bias gets a parametrization (torch.nn.utils.parametrize) that
    reads the kept rows from a frozen buffer, so they stay bitwise fixed whatever an optimizer
    does; every other parameter of model gets requires_grad=False and grad=None, which every
    torch.optim optimizer skips (no step, no decay, no state update). Pass model.parameters() or
    the returned list to any optimizer, built before or after this call. model.state_dict() keeps
    the plain keys and shapes (head.weight, head.bias), so it loads into an unmodified copy
    (save through state_dict(): torch refuses to pickle a parametrized module whole).
    Buffers that a forward pass updates (BatchNorm statistics) are not parameters: put those
    layers in eval mode. Returns [head's trained weight parameter, bias parameter].
    """
    _check_module("model", model)
    if not isinstance(head, nn.Linear):
        fail("head", _describe(head), "an nn.Linear inside model")
    if not any(m is head for m in model.modules()):
        fail("head", _describe(head), "an nn.Linear inside model (this one is not in it)")
    if _split_rows(head) is not None:
        fail("head", _describe(head), "a layer not split yet (split_head split this one already)")
    if parametrize.is_parametrized(head):
        fail("head", _describe(head), "an nn.Linear without other parametrizations")
    train = check_outputs("train", train, head.out_features)
    # Everything validated: from here on the model changes.
    for p in model.parameters():
        p.requires_grad_(False)
        p.grad = None  # a stale gradient would still be stepped by an existing optimizer
    trained = []
    for name in ("weight", "bias"):
        value = getattr(head, name)
        if value is None:
            continue
        # No right_inverse: the original stays the same Parameter object with the same shape,
        # so an optimizer built before the call (and its warm-start state) still fits it.
        parametrize.register_parametrization(head, name, KeepRows(value, train))
        original = getattr(head.parametrizations, name).original
        original.requires_grad_(True)
        trained.append(original)
    head.register_state_dict_post_hook(_state_dict_post_hook)
    head.register_load_state_dict_pre_hook(_load_pre_hook)
    return trained


# --- model outputs as a function of a flat parameter vector ----------------------------------

class _Outputs(nn.Module):
    """Wrap model and output_fn so torch.func.functional_call can swap the model's parameters."""

    def __init__(self, model, output_fn):
        super().__init__()
        self.model, self.output_fn = model, output_fn

    def forward(self, x):
        return self.model(x) if self.output_fn is None else self.output_fn(self.model, x)


class _KeptOutputs:
    """Evaluate the kept outputs at inputs as a function of chosen parameters (flattened)."""

    def __init__(self, model, keep, inputs, output_fn, names=None):
        _check_module("model", model)
        if output_fn is not None and not callable(output_fn):
            fail("output_fn", type(output_fn).__name__, "None or a callable (model, inputs)")
        if not isinstance(inputs, torch.Tensor) or inputs.dim() < 1 or not len(inputs):
            fail("inputs", type(inputs).__name__ if not isinstance(inputs, torch.Tensor)
                 else f"a tensor of shape {tuple(inputs.shape)}", "a non-empty batch tensor")
        self.wrapper = _Outputs(model, output_fn)
        self.inputs = inputs
        every = dict(model.named_parameters())
        self.names = list(every) if names is None else names
        self.params = [every[n] for n in self.names]
        self.shapes = [p.shape for p in self.params]
        self.sizes = [p.numel() for p in self.params]
        try:
            with torch.no_grad():
                out = self.outputs(self.flat())
        except Exception as error:  # noqa: BLE001  (any failure means the shapes do not fit)
            first = str(error).splitlines()[0] if str(error) else type(error).__name__
            fail("inputs", f"a tensor of shape {tuple(inputs.shape)}",
                 f"a batch that model{' (through output_fn)' if output_fn else ''} maps to "
                 f"(n, n_out) outputs ({type(error).__name__}: {first})")
        if out.dim() != 2 or out.shape[0] != inputs.shape[0]:
            fail("inputs", f"a tensor of shape {tuple(inputs.shape)} giving outputs of shape "
                 f"{tuple(out.shape)}", "a batch the model maps to outputs of shape (n, n_out)")
        self.n_out = out.shape[1]
        self.keep = check_outputs("keep", keep, self.n_out)
        self.index = torch.tensor(self.keep, device=out.device)

    def flat(self):
        """Return the chosen parameters' current values as one detached vector."""
        return torch.cat([p.detach().reshape(-1) for p in self.params])

    def unflat(self, theta):
        """Split a flat vector into {name: tensor} in the parameters' shapes."""
        parts = torch.split(theta, self.sizes)
        return {n: t.view(s) for n, t, s in zip(self.names, parts, self.shapes)}

    def write(self, theta):
        """Copy a flat vector into the parameters."""
        with torch.no_grad():
            for p, t in zip(self.params, self.unflat(theta).values()):
                p.copy_(t)

    def outputs(self, theta):
        """Return every output (n, n_out) at theta; buffers are copies (BatchNorm stays put)."""
        model = self.wrapper.model
        state = {f"model.{n}": t for n, t in self.unflat(theta).items()}
        state.update({f"model.{n}": b.clone() for n, b in model.named_buffers()})
        return functional_call(self.wrapper, state, (self.inputs,))

    def __call__(self, theta):
        """Return the kept outputs at theta as one vector (kept output major)."""
        return self.outputs(theta).index_select(1, self.index).T.reshape(-1)


class _Linearized:
    """The kept outputs' Jacobian J at theta, used only through J v, J^T a and J^+ r."""

    def __init__(self, f, theta):
        self.f, self.theta = f, theta
        with torch.enable_grad():
            self.value, self._vjp = vjp(f, theta)
        self.m, self.P = self.value.numel(), theta.numel()
        self._solver = None

    def jv(self, v):
        """Return J v."""
        with torch.enable_grad():
            return jvp(self.f, (self.theta,), (v,))[1]

    def jtv(self, a):
        """Return J^T a."""
        with torch.enable_grad():
            return self._vjp(a)[0]

    def _columns(self, first, second, size):
        """Return the matrix whose rows are second(first(e_i)), built a chunk of e_i at a time."""
        chunk = max(1, CHUNK_ELEMENTS // max(self.m, self.P))
        eye = torch.eye(size, dtype=self.theta.dtype, device=self.theta.device)
        with torch.enable_grad():
            return torch.cat([vmap(second)(vmap(first)(eye[i:i + chunk]))
                              for i in range(0, size, chunk)])

    def pinv(self, r):
        """Return J^+ r: the smallest parameter change that moves the kept outputs by r."""
        if self._solver is None:
            # Gram form J J^T (m x m) while m <= P, else parameter form J^T J (P x P): J itself
            # (m x P) is never held, only `chunk` of its rows or columns at a time.
            gram_form = self.m <= self.P
            if gram_form:
                G = self._columns(self.jtv, self.jv, self.m)
            else:
                G = self._columns(self.jv, self.jtv, self.P)
            w, V = torch.linalg.eigh((G + G.T) / 2)
            cutoff = w[-1].clamp(min=0) * G.shape[0] * torch.finfo(G.dtype).eps
            inv = torch.where(w > cutoff, 1.0 / w.clamp(min=cutoff), torch.zeros_like(w))
            self._solver = (gram_form, V, inv)
        gram_form, V, inv = self._solver
        if gram_form:
            return self.jtv(V @ (inv * (V.T @ r)))
        return V @ (inv * (V.T @ self.jtv(r)))


# --- NullSpaceProjector -------------------------------------------------------------------------

class NullSpaceProjector:
    """Project each optimizer step onto the null space of the kept outputs' Jacobian at inputs.

    The step projected is the one the optimizer took (after momentum, Adam and weight decay),
    seen through optimizer step hooks. Only parameters of model that the optimizer holds are
    projected; the Jacobian is never materialized (see _Linearized: Gram form J J^T built from
    torch.func vjp/jvp products while kept x n <= parameters, else the parameter form J^T J).
    corrected=True then takes Gauss-Newton steps until the kept outputs at inputs are back
    within RESTORE_TOL of their values at attach() (at most GAUSS_NEWTON_MAX_STEPS; warns if not).
    The forward pass must be deterministic (dropout off, BatchNorm in eval mode).
    """

    def __init__(self, model, keep, inputs, *, corrected=False, output_fn=None):
        if not isinstance(corrected, bool):
            fail("corrected", corrected, "True or False")
        self._probe = _KeptOutputs(model, keep, inputs, output_fn)  # validates; changes nothing
        self.model, self.keep, self.inputs = model, self._probe.keep, inputs
        self.corrected, self.output_fn = corrected, output_fn
        self.optimizer, self.last = None, {}
        self._f = self._handles = self._before = self._target = None

    def attach(self, optimizer):
        """Project every later optimizer.step() of this optimizer; return self."""
        if not isinstance(optimizer, torch.optim.Optimizer):
            fail("optimizer", type(optimizer).__name__, "a torch.optim.Optimizer")
        if self.optimizer is not None:
            fail("optimizer", type(optimizer).__name__,
                 "an optimizer, once: this projector is attached already (detach() first)")
        if getattr(optimizer, "_null_space_projector", None) is not None:
            fail("optimizer", type(optimizer).__name__,
                 "an optimizer without a projector (another one is attached to it)")
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        names = [n for n, p in self.model.named_parameters() if id(p) in held]
        if not names:
            fail("optimizer", type(optimizer).__name__, "an optimizer holding model's parameters")
        self._f = _KeptOutputs(self.model, self.keep, self.inputs, self.output_fn, names)
        self._target = self._f(self._f.flat()).detach()
        self._handles = [optimizer.register_step_pre_hook(self._snapshot),
                         optimizer.register_step_post_hook(self._project)]
        self.optimizer = optimizer
        optimizer._null_space_projector = self
        return self

    def detach(self):
        """Stop projecting: remove the hooks from the optimizer."""
        if self.optimizer is not None:
            for handle in self._handles:
                handle.remove()
            self.optimizer._null_space_projector = None
        self.optimizer = self._handles = self._before = None

    def _snapshot(self, optimizer, args, kwargs):
        self._before = self._f.flat().clone()

    def _project(self, optimizer, args, kwargs):
        old = self._before
        lin = _Linearized(self._f, old)
        step = self._f.flat() - old
        theta = old + (step - lin.pinv(lin.jv(step)))
        steps, residual = 0, None
        if self.corrected:
            theta, steps, residual = self._restore(theta, lin)
        self._f.write(theta)
        self.last = {"gauss_newton_steps": steps, "residual": residual}

    def _restore(self, theta, lin):
        """Take Gauss-Newton steps until the kept outputs at inputs are back at their target.

        The step's own linearization is reused (a chord step: one vjp, no new Gram) while the
        residual keeps falling 10x per step; otherwise the next step re-linearizes.
        """
        tol = RESTORE_TOL.get(str(theta.dtype).removeprefix("torch."), 1e-5)
        with torch.no_grad():
            r = self._f(theta) - self._target
        err, steps = float(r.abs().max()), 0
        while err > tol and steps < GAUSS_NEWTON_MAX_STEPS:
            theta = theta - lin.pinv(r)
            with torch.no_grad():
                r = self._f(theta) - self._target
            err, previous, steps = float(r.abs().max()), err, steps + 1
            if err > 0.1 * previous:
                lin = _Linearized(self._f, theta)
        if err > tol:
            warnings.warn(f"NullSpaceProjector: kept outputs still {err:.3g} from their target "
                          f"after {steps} Gauss-Newton steps (tolerance {tol:g})",
                          RestoreWarning, stacklevel=3)
        return theta, steps, err


# --- audit ------------------------------------------------------------------------------------

class Audit(NamedTuple):
    """What audit measured: one row per parameter feeding the kept outputs, and their drift."""

    table: object  # pandas.DataFrame indexed by parameter name
    drift: np.ndarray  # (steps + 1,) max |change| of the kept outputs at inputs since the start


def _feeding_masks(f):
    """Return, per parameter, the entries the kept outputs at inputs depend on."""
    lin = _Linearized(f, f.flat())
    generator = torch.Generator(device="cpu").manual_seed(0)
    total = torch.zeros_like(lin.theta)
    for _ in range(2):  # a random cotangent hits an exact zero with probability 0
        u = torch.randn(lin.m, generator=generator, dtype=lin.theta.dtype).to(lin.theta.device)
        total = total + lin.jtv(u).abs()
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
    f = _KeptOutputs(model, keep, inputs, output_fn)
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
