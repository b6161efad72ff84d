"""A model's kept outputs at chosen inputs as a function of its parameters (audit, and the
checks of NullSpaceProjector): KeptOutputs evaluates them from a flat vector of chosen parameters
(torch.func.functional_call).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from ..validation import check_outputs, fail
from .model_checks import check_module


class Wrapped(nn.Module):
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
        self.wrapper = Wrapped(model, output_fn)
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
