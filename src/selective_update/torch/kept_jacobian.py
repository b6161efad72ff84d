"""The kept outputs' Jacobian at protected inputs, per sample, in the blocks that make J Jᵀ cheap.

Rows are (protected input b, kept output k), input major: m = n * K of them (the order torch.func
returns them in, so no per-sample tensor is transposed). Columns are the parameters the optimizer
holds, in three kinds:
- an nn.Linear fed a batch of vectors (n, d_in): the study's layer-wise (Kronecker) form,
  J Jᵀ += (A Aᵀ + 1) ∘ (Δ Δᵀ) from its inputs A and the kept outputs' deltas Δ at its output
  (algorithms/nullspace.py for the MLP), never its rows: O(m² d_out + n² d_in);
- an nn.Linear fed sequences, an nn.Conv2d: rows Σ_t Δ_t ⊗ a_t over positions t (a convolution's
  inputs unfolded into patches). Where the rows are fewer numbers than the deltas, or more
  positions than kept outputs make J v cheaper from rows than from Δ and a (a convolution), they
  are formed once; else only Δ and a are kept and the rows are formed a block of columns at a time
  while J Jᵀ accumulates (a Transformer's Linear layers on short sequences): J is never held;
- anything else (norms, embeddings, attention's in_proj_weight): explicit per-sample gradients.
J v and Jᵀ a come from the same pieces (Δ, a, rows). Deltas and per-sample gradients come from a
torch.func pass over chunks of samples (vmap over the samples of jacrev over the kept outputs),
with a zero "probe" added to each Linear and Conv2d output so that its gradient there is Δ.
J Jᵀ is accumulated and solved in float64 whatever the model's dtype. Every pass runs in eval
mode with the math attention kernel (model_checks.evaluation).
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jacrev, vmap
from torch.nn.utils import parametrize

from ..settings import GRAM_BLOCKS, SAMPLE_CHUNK
from .kept_outputs import Wrapped
from .model_checks import evaluation, shared_with

CHUNK_BYTES = 64 * 2**20  # per-sample outputs held per chunk of the torch.func pass
GROUP_BYTES = 64 * 2**20  # rows formed at once while J Jᵀ accumulates
MIN_BLOCK = 256  # rows of a block of J Jᵀ's symmetric product
F64 = torch.float64


class Layer:
    """A Linear or Conv2d whose held parameters get Kronecker blocks or rows from its deltas."""

    def __init__(self, module, name, weight, bias):
        self.module, self.name = module, name
        self.weight, self.bias = weight, bias  # indices into the held parameters, or None
        self.kind = None  # "kron" (vectors) | "rows" (rows formed) | "stream" (Δ and a kept)
        self.out_shape = None
        self.positions = self.d_in = self.d_out = 0  # T, I, O of its rows Σ_t Δ_t ⊗ a_t


def conv_supported(module):
    """Say whether module is an nn.Conv2d whose inputs unfold into patches (F.unfold)."""
    return (isinstance(module, nn.Conv2d) and module.groups == 1
            and module.padding_mode == "zeros" and not isinstance(module.padding, str))


def _candidate(module):
    return isinstance(module, nn.Linear) or conv_supported(module)


def _positions(layer, x):
    """Return a layer's inputs as (n, T, d_in): one row per position (a conv's patches)."""
    if isinstance(layer.module, nn.Conv2d):
        c = layer.module
        return F.unfold(x, c.kernel_size, c.dilation, c.padding, c.stride).transpose(1, 2)
    return x.reshape(x.shape[0], -1, x.shape[-1])


def _deltas(layer, delta):
    """Return a layer's deltas (n, K, *out) as (n, K, T, d_out), positions matching _positions."""
    n, K = delta.shape[:2]
    if isinstance(layer.module, nn.Conv2d):
        return delta.reshape(n, K, layer.d_out, -1).transpose(2, 3)
    return delta.reshape(n, K, -1, delta.shape[-1])


def _rows(delta, a, dtype=None):
    """Return the weight rows Σ_t Δ_t ⊗ a_t (n * K, d_out * d_in) from Δ (n, K, T, O) and
    a (n, T, I)."""
    if dtype is not None:
        delta, a = delta.to(dtype), a.to(dtype)
    n, K, T, O = delta.shape
    out = torch.bmm(delta.transpose(2, 3).reshape(n, K * O, T), a)  # (n, K * O, I)
    return out.reshape(n * K, -1)


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

    def _capture(self, inputs=None):
        """One batched forward pass: each layer's inputs and output shape, and its calls."""
        record = {}
        # Grad on: a fused fast path (TransformerEncoderLayer) skips its submodules without it.
        with evaluation(self.model), torch.enable_grad(), self._hooks(record):
            out = self.wrapper(self.inputs if inputs is None else inputs)
        return record, out

    def _classify(self):
        """Keep the layers called once per forward pass; their kind follows their inputs' shape:
        vectors make Kronecker blocks; else rows, formed once where they are fewer numbers than
        the deltas, streamed from Δ and a where not."""
        record, _ = self._capture(self.inputs[:1])
        kept = []
        for layer in self.layers:
            calls = record.get(layer, [])
            if len(calls) != 1:
                continue  # not called (fused away) or called twice: explicit per-sample rows
            x, shape = calls[0]
            layer.out_shape = tuple(shape[1:])
            module = layer.module
            layer.d_out = module.out_channels if isinstance(module, nn.Conv2d) else shape[-1]
            a = _positions(layer, x)
            layer.positions, layer.d_in = a.shape[1], a.shape[2]
            K = len(self.keep)
            if isinstance(module, nn.Linear) and x.dim() == 2:
                layer.kind = "kron"
            elif layer.d_in <= layer.positions or layer.positions > K:
                layer.kind = "rows"  # fewer numbers than the deltas, or cheaper J v than them
            else:
                layer.kind = "stream"
            kept.append(layer)
        self.layers = kept
        covered = {i for layer in kept for i in (layer.weight, layer.bias) if i is not None}
        self.generic = [i for i in range(len(self.params)) if i not in covered]

    def sizes(self):
        """Return the numbers that set a step's cost: {kron, rows, generic: explicit columns,
        stream: streamed columns, held: numbers held per row, per_sample: numbers per sample of
        the torch.func pass}."""
        K = len(self.keep)
        out = dict(kron=0, rows=0, stream=0, generic=0, held=0, per_sample=0)
        for layer in self.layers:
            cols = layer.d_out * layer.d_in * (layer.weight is not None) + layer.d_out * (
                layer.bias is not None)
            out["kron" if layer.kind == "kron" else layer.kind] += cols
            delta = layer.positions * layer.d_out
            out["per_sample"] += K * math.prod(layer.out_shape)
            out["held"] += cols if layer.kind == "rows" else delta
        for i in self.generic:
            out["generic"] += self.params[i].numel()
        out["held"] += out["generic"]
        out["per_sample"] += K * out["generic"]
        return out

    def _chunk(self):
        """Samples per chunk of the torch.func pass: its outputs within CHUNK_BYTES."""
        per_sample = max(1, self.sizes()["per_sample"]) * self.params[0].element_size()
        return max(1, min(SAMPLE_CHUNK, CHUNK_BYTES // per_sample))

    def _per_sample(self, generic, probes, inputs):
        """Return (per-sample gradients of the generic parameters, deltas at each layer), each
        (n, K, *shape), for a chunk of inputs."""
        names = [f"model.{self.names[i]}" for i in self.generic]

        def kept_one(gen, prb, x):
            self._probes = dict(zip(self.layers, prb))
            out = functional_call(self.wrapper, dict(zip(names, gen)), (x.unsqueeze(0),),
                                  strict=False)
            return out[0].index_select(0, self.index)

        jac = vmap(jacrev(kept_one, argnums=(0, 1)), in_dims=(None, 0, 0))
        with self._hooks(None), torch.no_grad():  # the transforms differentiate inside
            try:
                return jac(tuple(generic), tuple(probes), inputs)
            finally:
                self._probes = None

    def linearize(self, inputs=None):
        """Return the Linearization at the parameters' current values (at `inputs`: a subset of
        the protected inputs, for a dry run; default all of them)."""
        inputs = self.inputs if inputs is None else inputs
        record, out = self._capture(inputs)
        n, K = len(inputs), len(self.keep)
        dtype, device = out.dtype, out.device
        generic = [self.params[i].detach() for i in self.generic]
        acts = {layer: _positions(layer, record[layer][0][0]) for layer in self.layers}
        held = {}  # per layer: (n, K, T, O) deltas, or (n * K, cols) rows; per generic: rows
        for layer in self.layers:
            shape = (n, K, layer.positions, layer.d_out)
            if layer.kind == "rows" and layer.weight is not None:
                held[layer] = torch.empty(n * K, layer.d_out * layer.d_in, dtype=dtype,
                                          device=device)
            if layer.kind != "rows" or layer.bias is not None:
                held[(layer, "delta")] = torch.empty(shape if layer.kind != "rows" else
                                                     (n, K, layer.d_out), dtype=dtype,
                                                     device=device)
        gen_rows = [torch.empty((n, K) + p.shape, dtype=dtype, device=device) for p in generic]
        step = self._chunk()
        with evaluation(self.model):
            for lo in range(0, n, step):
                hi = min(n, lo + step)
                probes = [torch.zeros((hi - lo,) + layer.out_shape, dtype=dtype, device=device)
                          for layer in self.layers]
                gen_jac, deltas = self._per_sample(generic, probes, inputs[lo:hi])
                for target, g in zip(gen_rows, gen_jac):
                    target[lo:hi] = g
                for layer, delta in zip(self.layers, deltas):
                    delta = _deltas(layer, delta)  # (chunk, K, T, O)
                    if layer.kind != "rows":
                        held[(layer, "delta")][lo:hi] = delta
                        continue
                    if layer.weight is not None:
                        held[layer][lo * K:hi * K] = _rows(delta, acts[layer][lo:hi])
                    if layer.bias is not None:
                        held[(layer, "delta")][lo:hi] = delta.sum(2)
                del gen_jac, deltas
        kron, stream, rows = [], [], []
        for layer in self.layers:
            if layer.kind == "kron":
                kron.append((layer, acts[layer][:, 0].to(F64),
                             held[(layer, "delta")][:, :, 0].to(F64)))
            elif layer.kind == "stream":
                stream.append((layer, acts[layer], held[(layer, "delta")]))
            else:
                if layer.weight is not None:
                    rows.append((layer.weight, held[layer]))
                if layer.bias is not None:
                    rows.append((layer.bias, held[(layer, "delta")].reshape(n * K, -1)))
        rows += [(i, g.reshape(n * K, -1)) for i, g in zip(self.generic, gen_rows)]
        lin = Linearization(self, n, kron, stream, rows)
        lin.outputs = out.detach().to(F64)  # every output at inputs, where J was taken
        lin.kept = lin.outputs.index_select(1, self.index).reshape(-1)  # input major
        return lin


def add_symmetric_gram(G, R, dtype):
    """Add R Rᵀ to G, multiplying in `dtype` only the blocks on and below the diagonal (at most
    GRAM_BLOCKS of them a side, each of at least MIN_BLOCK rows: small products cost more in
    calls than they save)."""
    blocks = max(1, min(GRAM_BLOCKS, R.shape[0] // MIN_BLOCK))
    if blocks == 1:
        G += (R.to(dtype) @ R.to(dtype).T).to(G.dtype)
        return
    edges = torch.linspace(0, R.shape[0], blocks + 1).round().long().tolist()
    spans = [slice(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]
    for i, si in enumerate(spans):
        left = R[si].to(dtype)
        for sj in spans[:i + 1]:
            block = (left @ R[sj].to(dtype).T).to(G.dtype)
            G[si, sj] += block
            if si != sj:
                G[sj, si] += block.T


class Linearization:
    """J at one point: J v, Jᵀ a and J Jᵀ, in float64.

    A float32 model's explicit and streamed rows stay float32 until exact() asks for float64:
    J Jᵀ's part from them is then a float32 product (fast), and J v, Jᵀ a round like the model
    does.
    """

    def __init__(self, jacobian, n, kron, stream, rows):
        self.jacobian, self.kron, self.stream, self.rows = jacobian, kron, stream, rows
        self.K, self.n = len(jacobian.keep), n
        self.m = self.K * self.n
        low = [t.dtype for _, _, t in stream] + [r.dtype for _, r in rows]
        self.fast = bool(low) and all(d != F64 for d in low)  # float32 rows, not yet exact

    def exact(self):
        """Use float64 rows from now on (J Jᵀ, J v and Jᵀ a)."""
        self.fast = False
        return self

    def _dtype(self):
        return torch.float32 if self.fast else F64

    def gram(self):
        """Return J Jᵀ (m, m), float64 (the rows' part a float32 product while fast)."""
        device = self.jacobian.inputs.device
        G = torch.zeros(self.m, self.m, dtype=F64, device=device)
        K, n = self.K, self.n
        for layer, x, delta in self.kron:
            inputs = torch.zeros(n, n, dtype=F64, device=device)
            if layer.weight is not None:
                inputs += x @ x.T
            if layer.bias is not None:
                inputs += 1.0
            term = torch.zeros(self.m, self.m, dtype=F64, device=device)
            add_symmetric_gram(term, delta.reshape(self.m, -1), F64)  # Δ Δᵀ, half the products
            term.view(n, K, n, K).mul_(inputs.view(n, 1, n, 1))
            G.add_(term)
            del term
        dtype = self._dtype()
        for layer, a, delta in self.stream:
            if layer.weight is not None:
                width = max(1, GROUP_BYTES // (self.m * layer.d_in * 8))
                for lo in range(0, layer.d_out, width):
                    add_symmetric_gram(G, _rows(delta[..., lo:lo + width], a, dtype), dtype)
            if layer.bias is not None:
                add_symmetric_gram(G, delta.sum(2).reshape(self.m, -1), dtype)
        for _, R in self.rows:
            add_symmetric_gram(G, R, dtype)
        return G

    def jv(self, v):
        """Return J v (m,) for v: a float64 tensor per held parameter."""
        total = torch.zeros(self.n, self.K, dtype=F64, device=self.jacobian.inputs.device)
        for layer, x, delta in self.kron:
            y = x @ v[layer.weight].T if layer.weight is not None else 0.0
            if layer.bias is not None:
                y = y + v[layer.bias]
            total += torch.einsum("bko,bo->bk", delta, y)
        dtype = self._dtype()
        for layer, a, delta in self.stream:
            delta = delta.to(dtype)
            y = 0.0
            if layer.weight is not None:
                y = a.to(dtype) @ v[layer.weight].reshape(layer.d_out, -1).to(dtype).T
            if layer.bias is not None:
                y = y + v[layer.bias].to(dtype)
            total += torch.einsum("bkto,bto->bk", delta, y).to(F64)
        for i, R in self.rows:
            total += (R.to(dtype) @ v[i].reshape(-1).to(dtype)).to(F64).view(self.n, self.K)
        return total.reshape(-1)

    def jtv(self, a):
        """Return Jᵀ a as a float64 tensor per held parameter (zeros where J has no column)."""
        params = self.jacobian.params
        out = [None] * len(params)
        a = a.view(self.n, self.K)
        for layer, x, delta in self.kron:
            M = torch.einsum("bk,bko->bo", a, delta)
            if layer.weight is not None:
                out[layer.weight] = M.T @ x
            if layer.bias is not None:
                out[layer.bias] = M.sum(0)
        dtype = self._dtype()
        low = a.to(dtype)
        for layer, acts, delta in self.stream:
            M = torch.einsum("bk,bkto->bto", low, delta.to(dtype))
            if layer.weight is not None:
                out[layer.weight] = (M.reshape(-1, layer.d_out).T
                                     @ acts.to(dtype).reshape(-1, layer.d_in)).to(F64).view(
                                         params[layer.weight].shape)
            if layer.bias is not None:
                out[layer.bias] = M.sum((0, 1)).to(F64)
        for i, R in self.rows:
            out[i] = (R.to(dtype).T @ low.reshape(-1)).to(F64).view(params[i].shape)
        return [t if t is not None else torch.zeros(p.shape, dtype=F64, device=p.device)
                for t, p in zip(out, params)]
