"""Small random sigmoid MLPs in float64 torch tensors, and the references the unit tests compare
the algorithms with: a dense Jacobian by torch.autograd.functional.jacobian over a plain torch
forward pass (not the package's); parameters flattened as [vec W1, b1, vec W2, b2, ...]."""
from __future__ import annotations

import numpy as np
import torch

import selective_update as su


def tensors(arrays):
    return [torch.tensor(np.asarray(a), dtype=torch.float64) for a in arrays]  # copies


def net(sizes, seed=0, stddev=1.0):
    """Return (Ws, bs) float64 tensors of a random MLP with these layer widths."""
    params = su.init_params(sizes, seed=seed, stddev=stddev)
    L = len(sizes) - 1
    return (tensors(params[f"W{l}"] for l in range(1, L + 1)),
            tensors(params[f"b{l}"] for l in range(1, L + 1)))


def inputs(n, d, seed=0):
    return torch.as_tensor(np.random.default_rng(seed).random((n, d)))


def step_like(Ws, bs, seed=1, scale=0.1):
    """Return a random step (dWs, dbs) shaped like the layers."""
    rng = np.random.default_rng(seed)
    return (tensors(rng.normal(0, scale, tuple(W.shape)) for W in Ws),
            tensors(rng.normal(0, scale, tuple(b.shape)) for b in bs))


def plain_forward(Ws, bs, x):
    """Return the outputs of a sigmoid MLP, written here without the package."""
    h = x
    for W, b in zip(Ws[:-1], bs[:-1]):
        h = torch.sigmoid(h @ W + b)
    return h @ Ws[-1] + bs[-1]


def flat(Ws, bs):
    """Return a step or the parameters as one numpy vector [vec W1, b1, vec W2, b2, ...]."""
    return np.concatenate([np.asarray(t.detach()).ravel() for pair in zip(Ws, bs) for t in pair])


def unflat(vector, Ws, bs):
    """Split a numpy vector back into (Ws, bs)-shaped tensors."""
    out_W, out_b, at = [], [], 0
    for W, b in zip(Ws, bs):
        out_W.append(torch.as_tensor(vector[at:at + W.numel()].reshape(tuple(W.shape))))
        at += W.numel()
        out_b.append(torch.as_tensor(vector[at:at + b.numel()].copy()))
        at += b.numel()
    return out_W, out_b


def kept_jacobian(Ws, bs, x, keep):
    """Return J (K * n, P) of the kept outputs at x, rows (k, b), columns as flat()."""
    L = len(Ws)

    def kept(*params):
        return plain_forward(list(params[:L]), list(params[L:]), x)[:, list(keep)].T

    blocks = torch.autograd.functional.jacobian(kept, (*Ws, *bs))
    m = len(keep) * x.shape[0]
    per_layer = [blocks[i].reshape(m, -1) for i in range(2 * L)]
    return torch.cat([t for l in range(L) for t in (per_layer[l], per_layer[L + l])],
                     dim=1).numpy()


def null_projection(J, v):
    """Return v - J^+ J v: the projection of v onto J's null space (numpy)."""
    return v - np.linalg.pinv(J) @ (J @ v)
