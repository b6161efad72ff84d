"""The compensating output gradient: back-propagate G' = G - alpha on the kept outputs, not G.

Written once over the `ops` contract (as nullspace.py); the solve is algorithms.solve's.
G (n, n_out) is the loss gradient with respect to the outputs. One backward pass of G' gives
J^T G - J_k^T alpha, whose first-order change of the kept outputs on the batch is
J_k J^T G - K_kk alpha, with the kept outputs' Gram K_kk = J_k J_k^T (m x m, m = K * n). So
  K_kk alpha = J_k J^T G
makes it zero, and a plain SGD step with G' is null_space's projected SGD step. Both sides come
from the layer-wise form, without the gradient or a forward-mode product:
  K_kk      = sum_l (H H^T + 1) o (D D^T)              (nullspace.gram)
  J_k J^T G = sum_l rowsum(D o ((H H^T + 1) C))        (C_l: G back-propagated to layer l)
where H are layer l's inputs and D the kept outputs' deltas there. At the last layer the kept
deltas are one-hot on the kept columns, so a G that is zero there adds only to K_kk.
Cost: the Grams (n^2 times the layer widths), an m x m Cholesky solve, one backward pass of G'.
"""
from __future__ import annotations

from ..settings import COMPENSATION_REFINEMENTS
from . import nullspace, solve


def gradient_change(ops, inputs, deltas, carried):
    """Return J_k J^T G (K, n): the kept outputs' change along the gradient of G, layer-wise.

    inputs: nullspace.layer_inputs per layer; deltas: the kept outputs' (K, n, d_l);
    carried: G back-propagated, (1, n, d_l) per layer (nullspace.kept_deltas with seed G).
    """
    total = None
    for h_gram, D, C in zip(inputs, deltas, carried):
        term = ops.einsum("kbj,bj->kb", D, ops.matmul(h_gram, C[0]))
        total = term if total is None else total + term
    return total


def compensate(ops, Ws, hs, G, keep):
    """Return (G', alpha): G' = G - alpha on the kept columns, alpha (K, n) per kept output.

    Ws: the layers' weights; hs: the layer inputs [x, h1, ...] of the forward pass that gave the
    outputs; G: (n, n_out). K_kk alpha = J_k J^T G is solved by a Cholesky factor of K_kk
    (solve.psd_factor's jitter, then COMPENSATION_REFINEMENTS refinements; the pseudo-inverse
    where the factor fails).
    """
    n, n_out = G.shape[0], G.shape[1]
    seed = nullspace.kept_seed(ops, keep, n, n_out, G)
    deltas = nullspace.kept_deltas(ops, Ws, hs, seed)
    carried = nullspace.kept_deltas(ops, Ws, hs, ops.reshape(G, (1, n, n_out)))
    inputs = [nullspace.layer_inputs(ops, h) for h in hs]
    K_kk = nullspace.gram(ops, hs, deltas, inputs)
    rhs = ops.reshape(gradient_change(ops, inputs, deltas, carried), (len(keep) * n, 1))
    alpha = solve.psd_solve_refined(ops, solve.psd_factor(ops, K_kk), rhs,
                                    COMPENSATION_REFINEMENTS)
    alpha = ops.reshape(alpha, (len(keep), n))
    return G - ops.einsum("kb,kbj->bj", alpha, seed), alpha


def compensated_gradient(ops, Ws, hs, G, keep):
    """Return G' (n, n_out): the output gradient to back-propagate in place of G (compensate)."""
    return compensate(ops, Ws, hs, G, keep)[0]
