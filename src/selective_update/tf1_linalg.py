"""TF1 linear algebra for the `ops` namespace (re-exported by tf1): joins, cond, Gram solvers."""
from __future__ import annotations

import numpy as np

from . import nullspace
from .tf1_import import tf
from .settings import CHOLESKY_JITTER


def cond(pred, true_fn, false_fn):
    """Build a tf.cond (the torch port decides eagerly)."""
    return tf.cond(pred, true_fn, false_fn)


def gather(a, indices, axis):
    """Take the given indices along an axis."""
    return tf.gather(a, indices, axis=axis)


def concat(tensors, axis):
    """Join tensors along an axis."""
    return tf.concat(tensors, axis)


def permute(a, perm):
    """Reorder a tensor's axes."""
    return tf.transpose(a, perm)


def psd_factor(A):
    """Factor A + jitter * mean(diag A) * I by Cholesky; keep A for a pseudo-inverse."""
    n = A.shape[0]
    jitter = CHOLESKY_JITTER * tf.linalg.trace(A) / n
    L = tf.linalg.cholesky(A + jitter * tf.eye(n, dtype=A.dtype))
    return L, A, tf.reduce_all(tf.math.is_finite(L))  # TF's CPU Cholesky fails with NaNs


def psd_solve(solver, R):
    """Solve with a psd_factor: Cholesky, or the eigenvalue pseudo-inverse of A (R: (n, c))."""
    L, A, ok = solver

    def pinv():
        w, V = tf.linalg.eigh(A)
        cutoff = nullspace.pinv_cutoff(w[-1], A.shape[0], np.finfo(A.dtype.as_numpy_dtype).eps)
        inv = tf.where(w > cutoff, 1.0 / tf.maximum(w, cutoff), tf.zeros_like(w))
        return tf.matmul(V, inv[:, None] * tf.matmul(V, R, transpose_a=True))

    return tf.cond(ok, lambda: tf.linalg.cholesky_solve(L, R), pinv)


def svd_factor(J):
    """Return (U, 1/S with singular values below the pinv cutoff zeroed, V) of J."""
    S, U, V = tf.linalg.svd(J)
    cutoff = S[0] * max(J.shape) * np.finfo(J.dtype.as_numpy_dtype).eps
    return U, tf.where(S > cutoff, 1.0 / tf.maximum(S, cutoff), tf.zeros_like(S)), V


def svd_solve(solver, R):
    """Return J^+ R from an svd_factor."""
    U, inv, V = solver
    return tf.matmul(V, inv[:, None] * tf.matmul(U, R, transpose_a=True))
