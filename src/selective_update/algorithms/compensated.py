"""The compensating output gradient: back-propagate G' = G - alpha on the kept outputs, not G.

Written once over the `ops` contract (as nullspace.py); the solve is algorithms.solve's.
G (n, n_out) is the loss gradient with respect to the outputs. One backward pass of G' gives
J^T G - J_k^T alpha, whose first-order change of the kept outputs on the batch is
J_k J^T G - K_kk alpha, with the kept outputs' Gram K_kk = J_k J_k^T (m x m, m = K * n). So
  K_kk alpha = J_k J^T G
makes it zero, and a plain SGD step with G' is null_space's projected SGD step. Both sides come
from the layer-wise form (nullspace.gram), without the gradient or a forward-mode product:
  K_kk      = sum_l (H H^T + 1) o (D D^T)
  J_k J^T G = sum_l rowsum((H H^T + 1) o (D C^T))
where H are layer l's inputs, D the kept outputs' deltas there and C the deltas of G (G
back-propagated to layer l, with D in one pass). At the last layer the kept deltas are one-hot
on the kept columns, so a G that is zero there adds only to K_kk.
Protected inputs other than the batch (reference=): the same with D, H and alpha on those
inputs (H_p H^T + 1 in the cross term); they join the backward pass with -alpha on their kept
outputs and zero elsewhere.
Cost: the Grams (n^2 times the layer widths), an m x m Cholesky solve, one backward pass of G'.
The first layer's share, x x^T + 1, depends on the inputs only: a runner that trains on a fixed
batch computes it once (first_inputs) and saves the largest Gram product of every later step.
"""
from __future__ import annotations

from ..settings import COMPENSATION_REFINEMENTS
from . import nullspace, solve


def first_inputs(ops, x, x_protected=None):
    """Return the first layer's input products for compensate (they depend on the inputs only):
    x x^T + 1 on the batch; with protected inputs, the pair (x_p x_p^T + 1, x_p x^T + 1)."""
    if x_protected is None:
        return nullspace.input_products(ops, x, x)
    return (nullspace.input_products(ops, x_protected, x_protected),
            nullspace.input_products(ops, x_protected, x))


def compensate(ops, Ws, hs, G, keep, hs_protected=None, inputs=None, activation="sigmoid"):
    """Return (G', alpha): what to back-propagate so the kept outputs hold to first order.

    Ws: the layers' weights; hs: the layer inputs [x, h1, ...] of the forward pass that gave the
    outputs; G: (n, n_out). hs_protected: the layer inputs on the protected inputs (n_p rows),
    None for the batch itself. Returns alpha (K, n_p) and G': on the batch, G - alpha on the kept
    columns (n, n_out); else -alpha on the kept columns (n_p, n_out), the protected outputs'
    gradient, back-propagated together with G. K_kk alpha = J_k J^T G is solved by a Cholesky
    factor of K_kk (solve.psd_factor's jitter, then COMPENSATION_REFINEMENTS refinements; the
    pseudo-inverse where the factor fails). inputs: first_inputs of these inputs, kept by a
    caller whose inputs do not change (None: computed here, the same values).
    """
    n, n_out = G.shape[0], G.shape[1]
    G_seed = ops.reshape(G, (1, n, n_out))
    K = len(keep)
    if hs_protected is None:
        rows = n
        m = K * rows
        seed = nullspace.kept_seed(ops, keep, n, n_out, G)
        # the kept outputs' deltas and G's, back-propagated together: (K + 1, n, d_l) per layer
        both = nullspace.kept_deltas(ops, Ws, hs, ops.concat([seed, G_seed], 0), activation)
        grams = nullspace.gram(ops, hs, [D[:K] for D in both], against=both,
                               first_inputs=inputs)  # [K_kk | K_kG]
        K_kk, cross = grams[:, :m], grams[:, m:]
    else:
        rows = hs_protected[0].shape[0]
        m = K * rows
        seed = nullspace.kept_seed(ops, keep, rows, n_out, G)
        deltas = nullspace.kept_deltas(ops, Ws, hs_protected, seed, activation)
        carried = nullspace.kept_deltas(ops, Ws, hs, G_seed, activation)
        kk_inputs, cross_inputs = (None, None) if inputs is None else inputs
        K_kk = nullspace.gram(ops, hs_protected, deltas, first_inputs=kk_inputs)
        cross = nullspace.gram(ops, hs_protected, deltas, against=carried, hs_against=hs,
                               first_inputs=cross_inputs)
    rhs = ops.reshape(ops.reduce_sum(cross, 1), (m, 1))  # J_k J^T G
    alpha = solve.psd_solve_refined(ops, solve.psd_factor(ops, K_kk), rhs,
                                    COMPENSATION_REFINEMENTS)
    alpha = ops.reshape(alpha, (K, rows))
    correction = ops.einsum("kb,kbj->bj", alpha, seed)
    return (G - correction if hs_protected is None else -correction), alpha


def compensated_gradient(ops, Ws, hs, G, keep, hs_protected=None, inputs=None,
                         activation="sigmoid"):
    """Return G' only (compensate): the output gradient(s) to back-propagate in place of G."""
    return compensate(ops, Ws, hs, G, keep, hs_protected, inputs, activation)[0]
