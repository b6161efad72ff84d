"""The kept outputs' Jacobian at protected inputs, per sample, in the blocks that make J Jᵀ cheap.

Rows are (kept output k, protected input b), k-major: m = K * n of them. Columns are the
parameters the optimizer holds, in three kinds:
- an nn.Linear fed a batch of vectors (n, d_in): the study's layer-wise (Kronecker) form,
  J Jᵀ += (A Aᵀ + 1) ∘ (Δ Δᵀ) from its inputs A and the kept outputs' deltas Δ at its output
  (algorithms/nullspace.py for the MLP), never its rows: O(m² d_out + n² d_in);
- an nn.Linear fed sequences, an nn.Conv2d: explicit rows Σ_t Δ_t ⊗ a_t over positions t (a
  convolution's inputs unfolded into patches), cheap where parameters are few;
- anything else (norms, embeddings, attention's in_proj_weight): explicit per-sample gradients.
Deltas and per-sample gradients come from one torch.func pass: vmap over the samples of jacrev
over the kept outputs (K batched backward passes), with a zero "probe" added to each Linear and
Conv2d output so that its gradient there is Δ. J Jᵀ is formed and solved in float64 whatever
the model's dtype (float32 Grams lose the small eigenvalues a projection needs).
Every pass runs in eval mode with the math attention kernel (modules.evaluation).
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jacrev, vmap
from torch.nn.utils import parametrize

from ..settings import GRAM_BLOCKS, SAMPLE_CHUNK
from .kept_outputs import Wrapped
from .model_checks import evaluation, shared_with



class Layer:
    """A Linear or Conv2d whose held parameters get Kronecker blocks or rows from its deltas."""

    def __init__(self, module, name, weight, bias):
        self.module, self.name = module, name
        self.weight, self.bias = weight, bias  # indices into the held parameters, or None
        self.kind = None  # "kron" | "rows", from the capture pass
        self.out_shape = None


def conv_supported(module):
    """Say whether module is an nn.Conv2d whose inputs unfold into patches (F.unfold)."""
    return (isinstance(module, nn.Conv2d) and module.groups == 1
            and module.padding_mode == "zeros" and not isinstance(module.padding, str))


def _candidate(module):
    return isinstance(module, nn.Linear) or conv_supported(module)


class KeptJacobian:
    """J of the kept outputs at inputs with respect to `params` [(name, Parameter)], in blocks."""

    def __init__(self, model, keep, inputs, output_fn, params):
        self.model, self.keep, self.inputs = model, tuple(keep), inputs
        self.wrapper = Wrapped(model, output_fn)
        self.names, self.params = [n for n, _ in params], [p for _, p in params]
        self.index = torch.tensor(self.keep, device=inputs.device)
        self.m = len(self.keep) * len(inputs)
        position = {id(p): i for i, p in enumerate(self.params)}
        self.layers = []
        for name, module in model.named_modules():
            if not _candidate(module) or parametrize.is_parametrized(module):
                continue
            held = [position.get(id(getattr(module, a))) if getattr(module, a, None) is not None
                    else None for a in ("weight", "bias")]
            if all(i is None for i in held) or any(
                    shared_with(model, getattr(module, a), module)
                    for a in ("weight", "bias") if getattr(module, a, None) is not None):
                continue
            self.layers.append(Layer(module, name, *held))
        self._probes = None
        self._classify()

    @contextlib.contextmanager
    def _hooks(self, record):
        """Hooks on the layers: record inputs and calls (record) or add the probes (record None)."""
        def hook(layer):
            def fn(module, args, output):
                if record is not None:
                    record.setdefault(layer, []).append((args[0].detach(), output.shape))
                    return None
                return output + self._probes[layer]
            return fn
        handles = [layer.module.register_forward_hook(hook(layer)) for layer in self.layers]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _capture(self):
        """One batched forward pass: each layer's inputs and output shape, and its calls."""
        record = {}
        # Grad on: a fused fast path (TransformerEncoderLayer) skips its submodules without it.
        with evaluation(self.model), torch.enable_grad(), self._hooks(record):
            out = self.wrapper(self.inputs)
        return record, out

    def _classify(self):
        """Keep the layers called once per forward pass; their kind follows their inputs' rank."""
        record, _ = self._capture()
        kept = []
        for layer in self.layers:
            calls = record.get(layer, [])
            if len(calls) != 1:
                continue  # not called (fused away) or called twice: explicit per-sample rows
            x, shape = calls[0]
            layer.kind = "kron" if isinstance(layer.module, nn.Linear) and x.dim() == 2 else "rows"
            layer.out_shape = tuple(shape[1:])
            kept.append(layer)
        self.layers = kept
        covered = {i for layer in kept for i in (layer.weight, layer.bias) if i is not None}
        self.generic = [i for i in range(len(self.params)) if i not in covered]

    def _per_sample(self, generic, probes):
        """Return (per-sample gradients of the generic parameters, deltas at each layer)."""
        names = [f"model.{self.names[i]}" for i in self.generic]

        def kept_one(gen, prb, x):
            self._probes = dict(zip(self.layers, prb))
            out = functional_call(self.wrapper, dict(zip(names, gen)), (x.unsqueeze(0),),
                                  strict=False)
            return out[0].index_select(0, self.index)

        jac = vmap(jacrev(kept_one, argnums=(0, 1)), in_dims=(None, 0, 0),
                   chunk_size=SAMPLE_CHUNK)
        with self._hooks(None), torch.no_grad():  # the transforms differentiate inside
            try:
                return jac(tuple(generic), tuple(probes), self.inputs)
            finally:
                self._probes = None

    def linearize(self):
        """Return the Linearization at the parameters' current values."""
        record, out = self._capture()
        n, K = len(self.inputs), len(self.keep)
        probes = [torch.zeros((n,) + layer.out_shape, dtype=out.dtype, device=out.device)
                  for layer in self.layers]
        generic = [self.params[i].detach() for i in self.generic]
        with evaluation(self.model):
            gen_jac, deltas = self._per_sample(generic, probes)
        f64 = torch.float64
        kron, rows = [], []  # rows: (parameter index, (m, numel)), in the model's dtype
        for layer, delta in zip(self.layers, deltas):
            x = record[layer][0][0]
            delta = delta.transpose(0, 1)  # (K, n, *out)
            if layer.kind == "kron":
                kron.append((layer, x.to(f64), delta.to(f64)))
                continue
            if isinstance(layer.module, nn.Conv2d):
                c = layer.module
                x = F.unfold(x, c.kernel_size, c.dilation, c.padding, c.stride)  # (n, D, L)
                delta = delta.reshape(K, n, c.out_channels, -1)  # (K, n, c_out, L)
            else:  # a Linear on sequences: positions play the part of a convolution's
                x = x.reshape(n, -1, x.shape[-1]).transpose(1, 2)  # (n, d_in, T)
                delta = delta.reshape(K, n, -1, delta.shape[-1]).transpose(2, 3)  # (K,n,d_out,T)
            # Row (k, b) of the weight: delta[k, b] (d_out, T) @ x[b]ᵀ (T, d_in), one bmm over b
            out_dim = delta.shape[2]
            w_rows = torch.bmm(delta.transpose(0, 1).reshape(n, K * out_dim, -1),
                               x.transpose(1, 2)).reshape(n, K, -1).transpose(0, 1)
            if layer.weight is not None:
                rows.append((layer.weight, w_rows.reshape(self.m, -1)))
            if layer.bias is not None:
                rows.append((layer.bias, delta.sum(-1).reshape(self.m, -1)))
        for i, g in zip(self.generic, gen_jac):
            rows.append((i, g.transpose(0, 1).reshape(self.m, -1)))
        return Linearization(self, kron, rows)


def add_symmetric_gram(G, R, blocks=GRAM_BLOCKS):
    """Add R Rᵀ to G, multiplying only the blocks on and below the diagonal."""
    edges = torch.linspace(0, R.shape[0], blocks + 1).round().long().tolist()
    spans = [slice(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]
    for i, si in enumerate(spans):
        for sj in spans[:i + 1]:
            block = (R[si] @ R[sj].T).to(G.dtype)
            G[si, sj] += block
            if si != sj:
                G[sj, si] += block.T


class Linearization:
    """J at one point: J v, Jᵀ a and J Jᵀ, in float64.

    A float32 model's explicit rows stay float32 (R_low) until exact() asks for float64: J Jᵀ's
    part from them is then a float32 product (fast), and J v, Jᵀ a round like the model does.
    """

    def __init__(self, jacobian, kron, rows):
        self.jacobian, self.kron = jacobian, kron
        self.K, self.n = len(jacobian.keep), len(jacobian.inputs)
        self.m = self.K * self.n
        self.row_index = [i for i, _ in rows]
        R = torch.cat([r for _, r in rows], dim=1) if rows else None
        low = R is not None and R.dtype in (torch.float32, torch.float16, torch.bfloat16)
        self.R_low = R.float() if low else None  # float32 rows as computed; None: float64 model
        self.R = None if low else R
        self.offsets = [0]
        for _, r in rows:
            self.offsets.append(self.offsets[-1] + r.shape[1])

    @property
    def fast(self):
        """Whether J's explicit rows are float32 (not yet made exact)."""
        return self.R is None and self.R_low is not None

    def exact(self):
        """Use float64 rows from now on (J Jᵀ, J v and Jᵀ a)."""
        if self.fast:
            self.R = self.R_low.to(torch.float64)
        return self

    def _rows(self, like=None):
        """Return the explicit rows in float64, or float32 ones while fast."""
        return self.R_low if self.fast else self.R

    def gram(self):
        """Return J Jᵀ (m, m), float64 (the explicit rows' part a float32 product while fast)."""
        device = self.jacobian.inputs.device
        G = None
        K, n = self.K, self.n
        for layer, x, delta in self.kron:
            inputs = torch.zeros(n, n, dtype=torch.float64, device=device)
            if layer.weight is not None:
                inputs += x @ x.T
            if layer.bias is not None:
                inputs += 1.0
            term = torch.zeros(self.m, self.m, dtype=torch.float64, device=device)
            add_symmetric_gram(term, delta.reshape(self.m, -1))  # Δ Δᵀ, half the products
            term.view(K, n, K, n).mul_(inputs.view(1, n, 1, n))
            G = term if G is None else G.add_(term)
        if G is None:
            G = torch.zeros(self.m, self.m, dtype=torch.float64, device=device)
        if self.R_low is not None or self.R is not None:
            add_symmetric_gram(G, self._rows(G))
        return G

    def jv(self, v):
        """Return J v (m,) for v: a float64 tensor per held parameter."""
        total = torch.zeros(self.K, self.n, dtype=torch.float64, device=self.jacobian.inputs.device)
        for layer, x, delta in self.kron:
            y = 0.0
            if layer.weight is not None:
                y = x @ v[layer.weight].T
            if layer.bias is not None:
                y = y + v[layer.bias]
            total += torch.einsum("kbo,bo->kb", delta, y)
        total = total.reshape(-1)
        if self.row_index:
            R = self._rows(total)
            flat = torch.cat([v[i].reshape(-1) for i in self.row_index]).to(R.dtype)
            total = total + (R @ flat).to(torch.float64)
        return total

    def jtv(self, a):
        """Return Jᵀ a as a float64 tensor per held parameter (zeros where J has no column)."""
        params = self.jacobian.params
        out = [None] * len(params)
        for layer, x, delta in self.kron:
            M = torch.einsum("kb,kbo->bo", a.view(self.K, self.n), delta)
            if layer.weight is not None:
                out[layer.weight] = M.T @ x
            if layer.bias is not None:
                out[layer.bias] = M.sum(0)
        if self.row_index:
            R = self._rows(a)
            flat = (R.T @ a.to(R.dtype)).to(torch.float64)
            for i, lo, hi in zip(self.row_index, self.offsets[:-1], self.offsets[1:]):
                out[i] = flat[lo:hi].view(params[i].shape)
        return [t if t is not None else torch.zeros(p.shape, dtype=torch.float64,
                                                    device=p.device)
                for t, p in zip(out, params)]
