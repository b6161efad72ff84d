"""A model's kept outputs at chosen inputs as a function of its parameters, and its linearization.

NullSpaceProjector and audit use these: KeptOutputs evaluates the kept outputs from a flat vector
of chosen parameters (torch.func.functional_call), Linearized their Jacobian through products.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, jvp, vjp, vmap

from ..validation import check_outputs, fail

CHUNK_ELEMENTS = 2 ** 22  # tangents built at once when forming a Gram matrix (memory bound)


def describe(module):
    """Name a module in one line: its class, and its sizes for a Linear."""
    if isinstance(module, nn.Linear):
        return f"Linear(in_features={module.in_features}, out_features={module.out_features})"
    return type(module).__name__


def check_module(name, model):
    if not isinstance(model, nn.Module):
        fail(name, type(model).__name__, "a torch.nn.Module")


class _Outputs(nn.Module):
    """Wrap model and output_fn so torch.func.functional_call can swap the model's parameters."""

    def __init__(self, model, output_fn):
        super().__init__()
        self.model, self.output_fn = model, output_fn

    def forward(self, x):
        return self.model(x) if self.output_fn is None else self.output_fn(self.model, x)


class KeptOutputs:
    """Evaluate the kept outputs at inputs as a function of chosen parameters (flattened)."""

    def __init__(self, model, keep, inputs, output_fn, names=None):
        check_module("model", model)
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
        except Exception as error:  # any failure means the shapes do not fit
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


class Linearized:
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
