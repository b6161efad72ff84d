"""Null-space step for an MLP without materializing the Jacobian (layer-wise Gram form).

Written once over the `ops` contract (algorithms.ops.Ops; tf1/ops.py and torch/ops.py fill it),
in d2l's style; Gram systems are solved by algorithms.solve.

For kept output k and sample b, d out[b, k] / d W_l = h_{l-1}[b] outer D_l[k, b], where D_l are the
kept outputs' deltas back-propagated to layer l. Hence, with m = K*B constraints:
  Gram   J J^T = sum_l (H H^T + 1) o (D D^T)     O(m^2 (d_in + d_out)) per layer
  J v    = sum_l rowsum(D_l o (H_{l-1} dW_l + db_l))
  J^T a  = (H_{l-1}^T M_l, colsum M_l),  M_l = sum_k a_k D_l[k]
"""
from __future__ import annotations

import numpy as np

from .solve import pinv_solve


ACTIVATIONS = ("sigmoid", "relu")  # of the hidden layers; the output layer is linear


def activate(ops, a, activation="sigmoid"):
    """Apply a hidden layer's activation."""
    return ops.sigmoid(a) if activation == "sigmoid" else ops.relu(a)


def slope(ops, h, activation="sigmoid"):
    """Return the activation's derivative at each unit, from the unit's output h."""
    return h * (1.0 - h) if activation == "sigmoid" else ops.positive(h)


def forward(ops, Ws, bs, x, activation="sigmoid"):
    """Return the layer inputs [x, h1, ..., h_{L-1}] and the outputs of an MLP."""
    hs = [x]
    for W, b in zip(Ws[:-1], bs[:-1]):
        hs.append(activate(ops, ops.matmul(hs[-1], W) + b, activation))
    return hs, ops.matmul(hs[-1], Ws[-1]) + bs[-1]


def kept_seed(ops, keep, n, n_out, like):
    """Return the one-hot deltas (K, n, n_out) of the kept outputs at the linear output layer."""
    seed = np.zeros((len(keep), n, n_out))
    for k, j in enumerate(keep):
        seed[k, :, j] = 1.0
    return ops.const(seed, like)


def kept_deltas(ops, Ws, hs, seed, activation="sigmoid"):
    """Back-propagate the kept outputs to every layer: a list of (K, n, d_l), first layer first."""
    deltas = [seed]
    for l in range(len(Ws) - 1, 0, -1):
        deltas.insert(0, ops.einsum("kbj,ij->kbi", deltas[0], Ws[l])
                      * slope(ops, hs[l], activation))
    return deltas


def input_products(ops, h, h_against):
    """Return h h_against^T + 1: a layer's share of the Gram that depends on its inputs only."""
    return ops.matmul(h, ops.transpose(h_against)) + 1.0


def gram(ops, hs, deltas, against=None, hs_against=None, first_inputs=None):
    """Return J J^T (m, m) of the kept outputs over the batch, m = K * n.

    against: other deltas (K', n', d_l) per layer, back-propagated over the inputs whose layer
    inputs are hs_against (default: hs); then J J_against^T (m, K' * n') is returned
    (compensated.py: the kept outputs against themselves and against the gradient's G).
    first_inputs: input_products of the first layer, when the caller keeps them (fixed inputs).
    """
    total = None
    for l, (h, D, h_against, A) in enumerate(zip(hs, deltas,
                                                 hs if hs_against is None else hs_against,
                                                 deltas if against is None else against)):
        K, n, K_against, n_against = D.shape[0], D.shape[1], A.shape[0], A.shape[1]
        inputs = (first_inputs if l == 0 and first_inputs is not None
                  else input_products(ops, h, h_against))
        term = ops.einsum("kbj,lcj->kblc", D, A) * ops.reshape(inputs, (1, n, 1, n_against))
        total = term if total is None else total + term
    return ops.reshape(total, (K * n, K_against * n_against))


def jvp(ops, hs, deltas, dWs, dbs):
    """Return J v (K, n): the first-order change of the kept outputs for a step (dWs, dbs)."""
    total = None
    for h, D, dW, db in zip(hs, deltas, dWs, dbs):
        term = ops.einsum("kbj,bj->kb", D, ops.matmul(h, dW) + db)
        total = term if total is None else total + term
    return total


def vjp(ops, hs, deltas, alpha):
    """Return J^T alpha as per-layer (dW, db) lists, alpha (K, n)."""
    dWs, dbs = [], []
    for h, D in zip(hs, deltas):
        M = ops.einsum("kb,kbj->bj", alpha, D)
        dWs.append(ops.matmul(ops.transpose(h), M))
        dbs.append(ops.reduce_sum(M, 0))
    return dWs, dbs


def _least_norm_correction(ops, hs, deltas, residual):
    """Return J^T (J J^T)^+ residual: the least step that changes the kept outputs by residual."""
    K, n = deltas[0].shape[0], deltas[0].shape[1]
    alpha = pinv_solve(ops, gram(ops, hs, deltas), ops.reshape(residual, (K * n,)))
    return vjp(ops, hs, deltas, ops.reshape(alpha, (K, n)))


def correction(ops, Ws, bs, x, keep, dWs, dbs, hs=None, activation="sigmoid"):
    """Return J^T (J J^T)^+ J (dWs, dbs): the part of a step that moves the kept outputs at x.

    `hs`: the layer inputs [x, h1, ...] at (Ws, bs) when the caller already has them (the
    gradient's forward pass); the forward pass is then skipped.
    """
    if hs is None:
        hs, _ = forward(ops, Ws, bs, x, activation)
    seed = kept_seed(ops, keep, x.shape[0], Ws[-1].shape[1], x)
    deltas = kept_deltas(ops, Ws, hs, seed, activation)
    return _least_norm_correction(ops, hs, deltas, jvp(ops, hs, deltas, dWs, dbs))


def project(ops, Ws, bs, x, keep, dWs, dbs, hs=None, activation="sigmoid"):
    """Project a proposed step (dWs, dbs) onto the null space of the kept outputs' Jacobian at x."""
    cWs, cbs = correction(ops, Ws, bs, x, keep, dWs, dbs, hs, activation)
    return [d - c for d, c in zip(dWs, cWs)], [d - c for d, c in zip(dbs, cbs)]


def kept_outputs(ops, Ws, bs, x, keep, activation="sigmoid"):
    """Return the kept outputs (K, n) at x."""
    _, out = forward(ops, Ws, bs, x, activation)
    seed = kept_seed(ops, keep, x.shape[0], out.shape[1], x)
    return ops.einsum("kbj,bj->kb", seed, out)


def _kept_residual(ops, Ws, bs, x, keep, target, activation):
    """Return the layer inputs at (Ws, bs) and the kept outputs' residual (K, n) from target."""
    hs, out = forward(ops, Ws, bs, x, activation)
    seed = kept_seed(ops, keep, x.shape[0], out.shape[1], x)
    return hs, ops.einsum("kbj,bj->kb", seed, out) - target


def gauss_newton(ops, Ws, bs, x, keep, target, hs=None, residual=None, activation="sigmoid"):
    """Take one Gauss-Newton step that moves the kept outputs at x back to target (K, n).

    `hs`, `residual`: the forward pass at (Ws, bs) when the caller has it (restore does).
    """
    if hs is None:
        hs, residual = _kept_residual(ops, Ws, bs, x, keep, target, activation)
    seed = kept_seed(ops, keep, x.shape[0], Ws[-1].shape[1], x)
    deltas = kept_deltas(ops, Ws, hs, seed, activation)
    cWs, cbs = _least_norm_correction(ops, hs, deltas, residual)
    return [W - c for W, c in zip(Ws, cWs)], [b - c for b, c in zip(bs, cbs)]


def restore(ops, Ws, bs, x, keep, target, tol, max_steps, activation="sigmoid"):
    """Take Gauss-Newton steps until the kept outputs at x are within tol of target (K, n).

    One forward pass per step: the pass that measures the error also feeds the next step.
    """
    L = len(Ws)

    def state(Ws, bs):
        hs, residual = _kept_residual(ops, Ws, bs, x, keep, target, activation)
        return ops.reduce_max(abs(residual)), residual, hs[1:]

    def cond(i, err, residual, *rest):
        return (i < max_steps) & (err > tol)

    def body(i, err, residual, *rest):
        hidden, layers = list(rest[:L - 1]), rest[L - 1:]
        Ws, bs = gauss_newton(ops, list(layers[:L]), list(layers[L:]), x, keep, target,
                              hs=[x] + hidden, residual=residual, activation=activation)
        err, residual, hidden = state(Ws, bs)
        return (i + 1, err, residual, *hidden, *Ws, *bs)

    err, residual, hidden = state(Ws, bs)
    _, err, _, *rest = ops.while_loop(cond, body, (0, err, residual, *hidden, *Ws, *bs))
    layers = rest[L - 1:]
    return list(layers[:L]), list(layers[L:]), err

