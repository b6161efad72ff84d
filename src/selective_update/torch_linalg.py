"""Torch linear algebra for the `ops` namespace (re-exported by torch): joins, cond, solvers."""
from __future__ import annotations

import torch

from . import nullspace
from .settings import CHOLESKY_JITTER


def cond(pred, true_fn, false_fn):
    """Call true_fn if pred holds, else false_fn (eagerly; tf1 builds a tf.cond)."""
    return true_fn() if bool(pred) else false_fn()


def gather(a, indices, axis):
    """Take the given indices along an axis."""
    return torch.index_select(a, axis, torch.as_tensor(indices, device=a.device))


def concat(tensors, axis):
    """Join tensors along an axis."""
    return torch.cat(tensors, dim=axis)


def permute(a, perm):
    """Reorder a tensor's axes."""
    return a.permute(perm)


def psd_factor(A):
    """Factor A + jitter * mean(diag A) * I by Cholesky; keep A for a pseudo-inverse."""
    eye = torch.eye(A.shape[0], dtype=A.dtype, device=A.device)
    L, info = torch.linalg.cholesky_ex(A + (CHOLESKY_JITTER * torch.trace(A) / A.shape[0]) * eye)
    return (L, None) if int(info) == 0 and bool(torch.isfinite(L).all()) else (None, A)


def psd_solve(solver, R):
    """Solve with a psd_factor: Cholesky, or the eigenvalue pseudo-inverse of A (R: (n, c))."""
    L, A = solver
    if L is not None:
        return torch.cholesky_solve(R, L)
    w, V = torch.linalg.eigh(A)
    cutoff = nullspace.pinv_cutoff(w[-1], A.shape[0], torch.finfo(A.dtype).eps)
    inv = torch.where(w > cutoff, 1.0 / torch.clamp(w, min=cutoff), torch.zeros_like(w))
    return V @ (inv[:, None] * (V.T @ R))


def svd_factor(J):
    """Return (U, 1/S with singular values below the pinv cutoff zeroed, V) of J."""
    U, S, Vh = torch.linalg.svd(J, full_matrices=False)
    cutoff = S[0] * max(J.shape) * torch.finfo(J.dtype).eps
    return U, torch.where(S > cutoff, 1.0 / torch.clamp(S, min=cutoff), torch.zeros_like(S)), Vh.T


def svd_solve(solver, R):
    """Return J^+ R from an svd_factor."""
    U, inv, V = solver
    return V @ (inv[:, None] * (U.T @ R))
