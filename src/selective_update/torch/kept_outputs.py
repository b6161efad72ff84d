"""A model's kept outputs at chosen inputs as a function of its parameters (audit, and the
checks of NullSpaceProjector): KeptOutputs evaluates them from a flat vector of chosen parameters
(torch.func.functional_call).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from ..validation import check_outputs, fail
from .model_checks import check_initialised, check_module


def _count_bad(tensor):
    return int((~torch.isfinite(tensor)).sum())


def _pick(out, fields):
    """Say how to reach a tensor field of a model's output, for the error's example."""
    if not fields:
        return "[0]"
    return f"[{fields[0]!r}]" if isinstance(out, dict) else f".{fields[0]}"


def check_inputs(inputs):
    """Refuse protected inputs that are not a non-empty batch tensor, or hold NaN or inf."""
    if not isinstance(inputs, torch.Tensor) or inputs.dim() < 1 or not len(inputs):
        fail("inputs", type(inputs).__name__ if not isinstance(inputs, torch.Tensor)
             else f"a tensor of shape {tuple(inputs.shape)}", "a non-empty batch tensor")
    if inputs.is_floating_point() or inputs.is_complex():
        bad = ~torch.isfinite(inputs).reshape(len(inputs), -1).all(1)
        if bool(bad.any()):
            rows = bad.nonzero().flatten().tolist()
            fail("inputs", f"a tensor with NaN or inf in {len(rows)} of its {len(inputs)} rows "
                 f"(first: {rows[0]})", "finite inputs; drop those rows first: "
                 "inputs[inputs.flatten(1).isfinite().all(1)]")


class Wrapped(nn.Module):
    """Wrap model and output_fn so torch.func.functional_call can swap the model's parameters."""

    def __init__(self, model, output_fn):
        super().__init__()
        self.model, self.output_fn = model, output_fn

    def forward(self, x):
        return self.model(x) if self.output_fn is None else self.output_fn(self.model, x)


class KeptOutputs:
    """Evaluate the kept outputs at inputs as a function of chosen parameters (flattened)."""

    def __init__(self, model, keep, inputs, output_fn, names=None, helper="audit"):
        check_module("model", model)
        check_initialised("model", model, helper)
        if output_fn is not None and not callable(output_fn):
            fail("output_fn", type(output_fn).__name__, "None or a callable (model, inputs)")
        check_inputs(inputs)
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
        if not isinstance(out, torch.Tensor):
            fields = list(out) if isinstance(out, dict) else list(getattr(out, "__dict__", {}))
            fail("output_fn", f"None for a model returning {type(out).__name__}"
                 + (f" (fields {', '.join(map(str, fields[:4]))})" if fields else ""),
                 "a callable (model, inputs) returning the (n, n_out) tensor of outputs, e.g. "
                 f"output_fn=lambda m, x: m(x){_pick(out, fields)}")
        if out.dim() != 2 or out.shape[0] != inputs.shape[0]:
            fail("inputs", f"a tensor of shape {tuple(inputs.shape)} giving outputs of shape "
                 f"{tuple(out.shape)}", "a batch the model maps to outputs of shape (n, n_out)")
        if not bool(torch.isfinite(out).all()):
            fail("model", f"a model whose outputs at inputs hold {_count_bad(out)} NaN or inf",
                 "a model with finite outputs at the protected inputs (check its weights, e.g. "
                 "[n for n, p in model.named_parameters() if not p.isfinite().all()])")
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
