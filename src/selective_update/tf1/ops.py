"""TF1's side of the `ops` contract (algorithms.ops.Ops): the math in algorithms/ runs on it.

Graph counterparts of the torch ops: while_loop and cond build tf.while_loop and tf.cond.
"""
from __future__ import annotations

import numpy as np

from .framework import tf


def sigmoid(a):
    """Apply the logistic sigmoid."""
    return tf.sigmoid(a)


def relu(a):
    """Apply max(a, 0)."""
    return tf.nn.relu(a)


def positive(a):
    """Return 1.0 where a > 0, else 0.0, in a's dtype."""
    return tf.cast(a > 0, a.dtype)


def exp(a):
    """Exponentiate elementwise."""
    return tf.exp(a)


def square(a):
    """Square elementwise."""
    return tf.square(a)


def maximum(a, b):
    """Take the elementwise maximum."""
    return tf.maximum(a, b)


def where(condition, a, b):
    """Pick a where condition holds, else b."""
    return tf.where(condition, a, b)


def zeros_like(a):
    """Make zeros shaped like a."""
    return tf.zeros_like(a)


def transpose(a):
    """Transpose a 2-D tensor."""
    return tf.transpose(a)


def reshape(a, shape):
    """Reshape a tensor."""
    return tf.reshape(a, shape)


def permute(a, perm):
    """Reorder a tensor's axes."""
    return tf.transpose(a, perm)


def concat(tensors, axis):
    """Join tensors along an axis."""
    return tf.concat(tensors, axis)


def gather(a, indices, axis):
    """Take the given indices along an axis."""
    return tf.gather(a, indices, axis=axis)


def const(array, like):
    """Make a constant tensor with the dtype of `like`."""
    return tf.constant(array, dtype=like.dtype)


def eps(like):
    """Return the machine epsilon of like's dtype."""
    return np.finfo(like.dtype.as_numpy_dtype).eps


def reduce_sum(a, axis):
    """Sum a tensor over one axis."""
    return tf.reduce_sum(a, axis=axis)


def logsumexp(a, axis):
    """Return log(sum(exp(a))) over one axis, the axis kept (size 1)."""
    return tf.reduce_logsumexp(a, axis=axis, keepdims=True)


def reduce_max(a):
    """Return the largest element of a tensor."""
    return tf.reduce_max(a)


def reduce_mean(a):
    """Return the mean of every element of a tensor."""
    return tf.reduce_mean(a)


def trace(a):
    """Sum the diagonal of a square matrix."""
    return tf.linalg.trace(a)


def add_diagonal(a, value):
    """Return a square matrix with value added to its diagonal (a + value * I, no dense I)."""
    return tf.linalg.set_diag(a, tf.linalg.diag_part(a) + value)


def matmul(a, b):
    """Multiply matrices."""
    return tf.matmul(a, b)


def dot(a, b, transpose_a=False):
    """Return (a or a^T) @ b for a matrix a and a vector or matrix b."""
    if b.shape.rank == 1:
        return tf.linalg.matvec(a, b, transpose_a=transpose_a)
    return tf.matmul(a, b, transpose_a=transpose_a)


def einsum(equation, *operands):
    """Evaluate an einsum."""
    return tf.einsum(equation, *operands)


def eigh(a):
    """Return the ascending eigenvalues and the eigenvectors of a symmetric matrix."""
    return tf.linalg.eigh(a)


def svd(a):
    """Return the thin (U, S, V) of a matrix: a = U diag(S) V^T."""
    S, U, V = tf.linalg.svd(a)
    return U, S, V


def cholesky(a):
    """Return (lower Cholesky factor, whether it is finite); TF's CPU Cholesky fails with NaNs."""
    L = tf.linalg.cholesky(a)
    return L, tf.reduce_all(tf.math.is_finite(L))


def cholesky_solve(factor, b):
    """Solve L L^T x = b for the factor L."""
    return tf.linalg.cholesky_solve(factor, b)


def numpy_call(fn, args, like):
    """Return fn(*args as numpy arrays) as a tensor typed like `like`: a tf.numpy_function."""
    out = tf.numpy_function(lambda *a: np.asarray(fn(*a), dtype=like.dtype.as_numpy_dtype),
                            list(args), like.dtype)
    out.set_shape(like.shape)
    return out


def while_loop(test, body, loop_vars):
    """Build a tf.while_loop (the torch port runs the same loop eagerly)."""
    return tf.while_loop(test, body, loop_vars)


def cond(pred, true_fn, false_fn):
    """Build a tf.cond (the torch port decides eagerly)."""
    return tf.cond(pred, true_fn, false_fn)
