"""The one solver: pseudo-inverse, Cholesky and SVD solves of the study's Gram systems, over `ops`.

Every projection and Gauss-Newton step solves through these (nullspace, protected), in both
frameworks, so the eigenvalue cutoff, the jitter and the fallback are written once.
"""
from __future__ import annotations

from ..settings import CHOLESKY_JITTER


def pinv_cutoff(largest, n, eps):
    """Return the eigen- or singular value below which a direction counts as null."""
    return largest * n * eps


def pinv_solve(ops, A, R):
    """Return A^+ R for a symmetric positive semi-definite A (eigenvalue pseudo-inverse).

    R: a vector (n,) or a matrix (n, c).
    """
    w, V = ops.eigh(A)
    cutoff = pinv_cutoff(w[-1], A.shape[0], ops.eps(A))
    inv = ops.where(w > cutoff, 1.0 / ops.maximum(w, cutoff), ops.zeros_like(w))
    if len(R.shape) == 2:
        inv = ops.reshape(inv, (-1, 1))
    return ops.dot(V, inv * ops.dot(V, R, transpose_a=True))


def psd_factor(ops, A):
    """Factor A + jitter * mean(diag A) * I by Cholesky; keep A for the pseudo-inverse fallback.

    Returns (L, A, ok): ok says the factor is finite and complete.
    """
    n = A.shape[0]
    jitter = CHOLESKY_JITTER * ops.trace(A) / n
    L, ok = ops.cholesky(ops.add_diagonal(A, jitter))
    return L, A, ok


def psd_solve(ops, solver, R):
    """Solve with a psd_factor: by its Cholesky factor, or by A's pseudo-inverse where it failed."""
    L, A, ok = solver
    return ops.cond(ok, lambda: ops.cholesky_solve(L, R), lambda: pinv_solve(ops, A, R))


def psd_solve_refined(ops, solver, R, refinements):
    """Solve with a psd_factor, then refine by the same factor `refinements` times.

    Each refinement solves for the residual R - A X, removing what the jitter left in X (a
    factor jitter / (eigenvalue + jitter) per pass) at O(n^2) a pass; the pseudo-inverse where
    the factor failed.
    """
    L, A, ok = solver

    def by_cholesky():
        X = ops.cholesky_solve(L, R)
        for _ in range(refinements):
            X = X + ops.cholesky_solve(L, R - ops.matmul(A, X))
        return X

    return ops.cond(ok, by_cholesky, lambda: pinv_solve(ops, A, R))


def svd_factor(ops, J):
    """Return (U, 1/S with singular values below the pinv cutoff zeroed, V) of J."""
    U, S, V = ops.svd(J)
    cutoff = pinv_cutoff(S[0], max(J.shape), ops.eps(J))
    return U, ops.where(S > cutoff, 1.0 / ops.maximum(S, cutoff), ops.zeros_like(S)), V


def svd_solve(ops, solver, R):
    """Return J^+ R from an svd_factor (R: (m, c))."""
    U, inv, V = solver
    return ops.dot(V, ops.reshape(inv, (-1, 1)) * ops.dot(U, R, transpose_a=True))

