"""layer_subspace (GPM, Adam-NSCL) and distill (Learning without Forgetting), written once.

layer_subspace: at the start of the strategy's own steps, take each layer's inputs on the
protected inputs with a 1 appended for the bias, H = [h, 1] (n, d+1), and keep the top right
singular directions U (d+1, r) that hold `energy` of the squared singular values (energy=1.0: all
above the rank cutoff). Every step of the optimizer (after momentum, Adam and decay, unlike GPM's
gradient projection) is projected: dW~ <- (I - U U^T) dW~ for hidden layers and for the kept
columns of the last layer; the trained columns stay free. With energy=1.0, H dW~ = 0 on the
protected inputs, so each layer's output there, and by induction the kept outputs, stay put to
rounding under any optimizer. The bases are numpy (computed once); the projection runs on `ops`.
"""
from __future__ import annotations

import numpy as np


def basis(h, energy, bias=True) -> np.ndarray:
    """Return U (d+1, r): the top right singular directions of [h, 1] holding `energy`.

    bias=False: of h alone, U (d, r), for a layer without a bias.
    """
    H = np.asarray(h, dtype=np.float64)
    if bias:
        H = np.concatenate([H, np.ones((len(h), 1))], axis=1)
    _, s, Vt = np.linalg.svd(H, full_matrices=False)
    rank = int((s > s[0] * max(H.shape) * np.finfo(np.float64).eps).sum())
    if energy >= 1.0:
        r = rank
    else:
        share = np.cumsum(s ** 2) / (s ** 2).sum()
        r = min(rank, int(np.searchsorted(share, energy)) + 1)
    return Vt[:r].T


def bases(layer_inputs, energy) -> list:
    """Return per layer (U_W (d, r), u_b (1, r)): basis() split into weight and bias rows."""
    out = []
    for h in layer_inputs:
        U = basis(h, energy)
        out.append((np.ascontiguousarray(U[:-1]), np.ascontiguousarray(U[-1:])))
    return out


def correction(ops, split_bases, dWs, dbs, keep_mask):
    """Return the part (cWs, cbs) of a step along each layer's protected input directions.

    The projected step is (dW - cW, db - cb); last layer: kept columns only. split_bases: per
    layer (U_W, u_b) tensors; keep_mask: (1, n_out) tensor, 1 on kept outputs.
    """
    L = len(dWs)
    cWs, cbs = [], []
    for l, ((U_W, u_b), dW, db) in enumerate(zip(split_bases, dWs, dbs), start=1):
        # C = U^T [dW; db] (the bias row by broadcasting); the correction U C, split back.
        C = ops.matmul(ops.transpose(U_W), dW) + ops.transpose(u_b) * db
        cW, cb = ops.matmul(U_W, C), ops.reshape(ops.matmul(u_b, C), (-1,))
        if l == L:  # the trained (and other) columns of the last layer stay free
            cW, cb = cW * keep_mask, cb * ops.reshape(keep_mask, (-1,))
        cWs.append(cW)
        cbs.append(cb)
    return cWs, cbs



def distill_penalty(ops, Ws, bs, x, keep, target, weight, activation="sigmoid"):
    """Return weight * mean squared change of the kept outputs at x from target (K, n)."""
    from . import nullspace

    change = nullspace.kept_outputs(ops, Ws, bs, x, keep, activation) - target
    return weight * ops.reduce_sum(ops.reshape(change * change, (-1,)), 0) / float(
        target.shape[0] * target.shape[1])
