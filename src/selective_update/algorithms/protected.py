"""Null-space steps that protect chosen inputs: the kept outputs' Jacobian over those inputs.

Written once over the `ops` contract (as nullspace.py); the factorizations are algorithms.solve's.
The constraints are m = K * n_ref (kept outputs x protected inputs), P the parameters, ordered
[vec W1, b1, vec W2, b2, ...] (row-major).
One of three forms is factored, chosen from the shapes alone (so both frameworks agree):
  jacobian (m * P <= DENSE_JACOBIAN_MAX): J itself, by SVD. Resolves singular values down to
      eps * max, so an ill-conditioned reference set is still protected to rounding.
  gram (m <= P):   J J^T = sum_l (H H^T + 1) o (D D^T)                               (m x m)
  params (m > P):  J^T J, block (l, l') = sum_b (h_l h_l'^T)[b] kron (D_l^T D_l')[b]     (P x P)
      with h = [h, 1]; summing over the K kept outputs first makes this far cheaper than J.
gram and params are solved by a Cholesky factor of A + jitter * mean(diag A) * I (an eigenvalue
pseudo-inverse when that factor is not finite). They square J's condition number: directions
with squared singular values below ~jitter * max are left free, a leak of about
sqrt(jitter * max) * |step| per step. One factorization before the step serves the projection
and the Gauss-Newton corrections while they converge fast. The batch path (reference=None) stays in
nullspace.py.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import nullspace, solve
from ..settings import CHORD_RATE, DENSE_JACOBIAN_MAX


class Factor(NamedTuple):
    """Hold the kept outputs' Jacobian at one point: layer inputs, deltas and a solver."""

    form: str  # "jacobian" | "gram" | "params"
    hs: list
    deltas: list
    solver: object  # what solve.psd_factor or solve.svd_factor returned


def form_for(sizes, n_keep, n_ref) -> str:
    """Return the form for these layer widths: 'jacobian' when small, else the smaller Gram."""
    P = sum((a + 1) * b for a, b in zip(sizes[:-1], sizes[1:]))
    m = n_keep * n_ref
    if m * P <= DENSE_JACOBIAN_MAX:
        return "jacobian"
    return "gram" if m <= P else "params"


def jacobian(ops, hs, deltas):
    """Return J (K * n, P) of the kept outputs: row (k, b), layer l: [h_l, 1][b] kron D_l[k, b]."""
    K, n = deltas[0].shape[0], deltas[0].shape[1]
    blocks = []
    for h, D in zip(hs, deltas):
        hb = _with_ones(ops, h)
        rows = ops.einsum("bi,kbp->kbip", hb, D)
        blocks.append(ops.reshape(rows, (K * n, hb.shape[1] * D.shape[2])))
    return ops.concat(blocks, 1)


def _with_ones(ops, h):
    return ops.concat([h, ops.const(np.ones((h.shape[0], 1)), h)], 1)


def param_gram(ops, hs, deltas):
    """Return J^T J (P, P) of the kept outputs, summing over the K kept outputs per input first."""
    ones = [_with_ones(ops, h) for h in hs]
    n = ones[0].shape[0]
    blocks = {}
    for l, (hl, Dl) in enumerate(zip(ones, deltas)):
        for j in range(l, len(hs)):
            hj, Dj = ones[j], deltas[j]
            a, c, o, p = hl.shape[1], hj.shape[1], Dl.shape[2], Dj.shape[2]
            outer = ops.reshape(ops.einsum("bi,bj->bij", hl, hj), (n, a * c))
            S = ops.reshape(ops.einsum("kbp,kbq->bpq", Dl, Dj), (n, o * p))
            block = ops.reshape(ops.matmul(ops.transpose(outer), S), (a, c, o, p))
            blocks[l, j] = ops.reshape(ops.permute(block, (0, 2, 1, 3)), (a * o, c * p))
    L = len(hs)
    rows = [ops.concat([blocks[l, j] if j >= l else ops.transpose(blocks[j, l])
                        for j in range(L)], 1) for l in range(L)]
    return ops.concat(rows, 0)


def factor(ops, Ws, bs, x, keep, form, hs=None, activation="sigmoid"):
    """Factor the kept outputs' Jacobian at (Ws, bs) over inputs x in the given form."""
    if hs is None:
        hs, _ = nullspace.forward(ops, Ws, bs, x, activation)
    seed = nullspace.kept_seed(ops, keep, x.shape[0], Ws[-1].shape[1], x)
    deltas = nullspace.kept_deltas(ops, Ws, hs, seed, activation)
    if form == "jacobian":
        return Factor(form, hs, deltas, solve.svd_factor(ops, jacobian(ops, hs, deltas)))
    A = nullspace.gram(ops, hs, deltas) if form == "gram" else param_gram(ops, hs, deltas)
    return Factor(form, hs, deltas, solve.psd_factor(ops, A))


def flatten(ops, dWs, dbs):
    """Return a step as one column (P, 1): [vec W1, b1, vec W2, b2, ...]."""
    parts = [ops.reshape(t, (-1,)) for pair in zip(dWs, dbs) for t in pair]
    return ops.reshape(ops.concat(parts, 0), (-1, 1))


def unflatten(ops, flat, F):
    """Split a column (P, 1) back into per-layer (dWs, dbs) of the factored network."""
    dWs, dbs, at = [], [], 0
    for h, D in zip(F.hs, F.deltas):
        a, b = h.shape[1], D.shape[2]
        dWs.append(ops.reshape(flat[at:at + a * b], (a, b)))
        dbs.append(ops.reshape(flat[at + a * b:at + (a + 1) * b], (b,)))
        at += (a + 1) * b
    return dWs, dbs


def least_norm(ops, F, residual):
    """Return the smallest step (dWs, dbs) whose first-order change of the kept outputs is residual.

    residual: (K, n). Gram form: J^T (J J^T)^+ r; parameter form: (J^T J)^+ J^T r.
    """
    K, n = residual.shape[0], residual.shape[1]
    if F.form == "jacobian":  # J^+ r = V S^+ U^T r
        flat = solve.svd_solve(ops, F.solver, ops.reshape(residual, (K * n, 1)))
        return unflatten(ops, flat, F)
    if F.form == "gram":
        alpha = solve.psd_solve(ops, F.solver, ops.reshape(residual, (K * n, 1)))
        return nullspace.vjp(ops, F.hs, F.deltas, ops.reshape(alpha, (K, n)))
    dWs, dbs = nullspace.vjp(ops, F.hs, F.deltas, residual)
    return unflatten(ops, solve.psd_solve(ops, F.solver, flatten(ops, dWs, dbs)), F)


def project(ops, F, dWs, dbs, sweeps):
    """Project a step onto the null space of the factored Jacobian (sweeps passes)."""
    for _ in range(sweeps):
        cWs, cbs = least_norm(ops, F, nullspace.jvp(ops, F.hs, F.deltas, dWs, dbs))
        dWs = [d - c for d, c in zip(dWs, cWs)]
        dbs = [d - c for d, c in zip(dbs, cbs)]
    return dWs, dbs


def restore(ops, Ws, bs, x, keep, target, tol, max_steps, form, F=None, activation="sigmoid"):
    """Take Gauss-Newton steps until the kept outputs at x are within tol of target (K, n).

    F: a factored Jacobian to start from (default: factor at (Ws, bs)). It is reused (a chord
    Gauss-Newton) while each step shrinks the residual at least CHORD_RATE-fold, and factored
    afresh where one did not (large Adam steps). Returns (Ws, bs, final max |residual|).
    """
    L = len(Ws)

    def residual_at(Ws, bs):
        residual = nullspace.kept_outputs(ops, Ws, bs, x, keep, activation) - target
        return ops.reduce_max(abs(residual)), residual

    def refactor(Ws, bs):
        return tuple(factor(ops, Ws, bs, x, keep, form, activation=activation)[1:])

    def cond(i, err, residual, *rest):
        return (i < max_steps) & (err > tol)

    def body(i, err, residual, *rest):
        layers, state = rest[:2 * L], rest[2 * L]
        cWs, cbs = least_norm(ops, Factor(form, *state), residual)
        Ws = [W - c for W, c in zip(layers[:L], cWs)]
        bs = [b - c for b, c in zip(layers[L:], cbs)]
        new_err, residual = residual_at(Ws, bs)
        state = ops.cond(new_err > CHORD_RATE * err, lambda: refactor(Ws, bs), lambda: state)
        return (i + 1, new_err, residual, *Ws, *bs, state)

    err, residual = residual_at(Ws, bs)
    state = refactor(Ws, bs) if F is None else tuple(F[1:])
    _, err, _, *rest = ops.while_loop(cond, body, (0, err, residual, *Ws, *bs, state))
    return list(rest[:L]), list(rest[L:2 * L]), err


def protected_step(ops, Ws, bs, x, keep, dWs, dbs, *, form, sweeps, corrected, tol, max_steps,
                   activation="sigmoid"):
    """Return the new (Ws, bs) and the final residual (or None) of a reference-protected step.

    (Ws, bs): the parameters before the step; (dWs, dbs): the optimizer's proposed step. The
    Jacobian factored before the step serves the projection and the corrections (see restore).
    """
    hs, out = nullspace.forward(ops, Ws, bs, x, activation)
    F = factor(ops, Ws, bs, x, keep, form, hs=hs, activation=activation)
    pWs, pbs = project(ops, F, dWs, dbs, sweeps)
    new_Ws = [W + d for W, d in zip(Ws, pWs)]
    new_bs = [b + d for b, d in zip(bs, pbs)]
    if not corrected:
        return new_Ws, new_bs, None
    seed = nullspace.kept_seed(ops, keep, x.shape[0], Ws[-1].shape[1], x)
    target = ops.einsum("kbj,bj->kb", seed, out)  # the kept outputs before the step
    return restore(ops, new_Ws, new_bs, x, keep, target, tol, max_steps, form, F, activation)
