"""ewc and gem, written once over `ops`: the earlier tasks' memories, with their targets, keep
their loss (GEM's MNIST Rotations rows, as its authors' code computes them).

gem (facebookresearch/GradientEpisodicMemory, model/gem.py): at every step, the gradient of the
loss on each earlier task's memory (one backward pass each), g_k; when the step's gradient g
has <g, g_k> < 0 for some k, it is replaced by g + v M (M: the g_k as rows) with v the solution
of the dual QP  min 1/2 v^T (M M^T + eps I) v + (M g)^T v  s.t. v >= margin, solved by
quadprog as project2cone2 does. The optimizer then takes the step.

ewc (model/ewc.py): when a task starts, the Fisher of the task before it is the square of the
gradient of the mean loss on its memory, at the parameters then (theta*); the loss adds
strength * sum over earlier tasks of F (theta - theta*)^2. The earlier tasks' terms are carried
from run to run as A = sum F and C = sum F theta* (the same gradient, 2 strength (A theta - C)).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

GEM_EPS = 1e-3  # project2cone2's ridge on M M^T


def gem_project(g, memories, margin, eps=GEM_EPS):
    """GEM's project2cone2 on numpy: g (P,), memories (T, P); return g unchanged when no memory
    loss rises to first order (<g, g_k> >= 0 for every k), else g + v M from the dual QP."""
    import quadprog

    M, g64 = np.asarray(memories, dtype=np.float64), np.asarray(g, dtype=np.float64)
    if not (M @ g64 < 0).any():
        return g
    t = M.shape[0]
    P = M @ M.T
    P = 0.5 * (P + P.T) + np.eye(t) * eps
    v = quadprog.solve_qp(P, -(M @ g64), np.eye(t), np.zeros(t) + margin)[0]
    return v @ M + g64


def groups(tasks) -> list:
    """Return the rows of each earlier task in a Memory's task column, tasks in order."""
    tasks = np.asarray(tasks)
    return [np.flatnonzero(tasks == k) for k in np.unique(tasks)]


def flatten(ops, tensors):
    """Return tensors as one vector, in order."""
    return ops.concat([ops.reshape(a, (-1,)) for a in tensors], 0)


def unflatten(ops, flat, like):
    """Split a vector back into tensors shaped like `like`."""
    out, at = [], 0
    for a in like:
        size = int(np.prod(a.shape))
        out.append(ops.reshape(flat[at:at + size], tuple(int(d) for d in a.shape)))
        at += size
    return out


class Memories(NamedTuple):
    """A Memory split by earlier task, once per run: (x, y) of each task in order, and, when
    every task holds as many examples (GEM's memories do), all of them stacked (T, m, ...)."""

    parts: list
    stacked: tuple | None


def by_task(ops, x, y, tasks) -> Memories:
    """Split a Memory's inputs x and targets y (tensors) by its tasks (numpy)."""
    rows = groups(tasks)
    parts = [(ops.gather(x, list(r), 0), ops.gather(y, list(r), 0)) for r in rows]
    if len({len(r) for r in rows}) != 1:
        return Memories(parts, None)
    order, shape = list(np.concatenate(rows)), (len(rows), len(rows[0]))
    return Memories(parts, tuple(ops.reshape(ops.gather(a, order, 0), shape + (int(a.shape[1]),))
                                 for a in (x, y)))


def task_gradients(ops, Ws, bs, xs, ys, kind="mse", activation="sigmoid"):
    """Return the gradient of each task's mean loss (every output) on its memory, as rows (T,
    P) ordered [vec W1, b1, vec W2, b2, ...]: one forward and one backward pass over every
    memory at once (layer-wise, no autodiff), each task's share summed apart by a batched
    product. xs (T, m, n_in), ys (T, m, n_out)."""
    from . import nullspace

    T, m = int(xs.shape[0]), int(xs.shape[1])
    hs, out = nullspace.forward(ops, Ws, bs, ops.reshape(xs, (T * m, -1)), activation)
    y = ops.reshape(ys, (T * m, -1))
    if kind == "mse":  # d/d out of the mean over m x n_out squared errors
        delta = (out - y) * (2.0 / (m * int(out.shape[1])))
    else:  # of the mean over m rows of -sum y log softmax(out)
        p = ops.exp(out - ops.logsumexp(out, 1))
        delta = (p * ops.reshape(ops.reduce_sum(y, 1), (-1, 1)) - y) / float(m)
    deltas = [delta]
    for l in range(len(Ws) - 1, 0, -1):
        deltas.insert(0, ops.matmul(deltas[0], ops.transpose(Ws[l]))
                      * nullspace.slope(ops, hs[l], activation))
    rows = []
    for h, D in zip(hs, deltas):
        H, Dt = ops.reshape(h, (T, m, -1)), ops.reshape(D, (T, m, -1))
        rows += [ops.reshape(ops.einsum("tbi,tbj->tij", H, Dt), (T, -1)),
                 ops.reduce_sum(Dt, 1)]
    return ops.concat(rows, 1)


def gem_gradients(t, grads, variables, inputs, loss_at, margin):
    """Return the step's gradients after GEM's projection against each earlier task's memory
    gradient (inputs.memories: by_task). loss_at(out, y): the run's loss on every output.

    With memories of one size and a network held as its layers (variables W1, b1, W2, ...), the
    memory gradients come from task_gradients; else one backward pass per task, as GEM's code.
    """
    ops, config = t.ops, t.config
    Ws, bs = t.layers()
    stacked = inputs.memories.stacked
    with t.no_grad():
        if stacked is not None and list(variables) == [v for p in zip(Ws, bs) for v in p]:
            M = task_gradients(ops, Ws, bs, *stacked, config.loss, config.activation)
        else:
            M = None
    if M is None:
        memories = []
        for x, y in inputs.memories.parts:
            _, out = t.forward(x, variables)
            memories.append(flatten(ops, t.gradients([loss_at(out, y)], variables, None)))
        M = ops.concat([ops.reshape(g, (1, -1)) for g in memories], 0)
    with t.no_grad():
        g = flatten(ops, grads)
        projected = ops.numpy_call(lambda a, b: gem_project(a, b, margin), [g, M], g)
        return unflatten(ops, projected, grads)


def fisher_start(gradients, params, carry=None) -> dict:
    """Return ewc's terms after adding the task just ended (numpy): the Fisher F = g^2 of the
    memory's mean-loss gradients `gradients` at `params` (theta*), added to those carried:
    {"fisher": A + F, "anchored": C + F theta*}, each a dict like params."""
    A = {k: np.zeros_like(np.asarray(v, dtype=np.float64)) for k, v in params.items()}
    C = {k: np.zeros_like(a) for k, a in A.items()}
    if carry is not None:
        A = {k: np.array(v, dtype=np.float64) for k, v in carry["fisher"].items()}
        C = {k: np.array(v, dtype=np.float64) for k, v in carry["anchored"].items()}
    if gradients is not None:
        for k, g in gradients.items():
            F = np.square(np.asarray(g, dtype=np.float64))
            A[k] = A[k] + F
            C[k] = C[k] + F * np.asarray(params[k], dtype=np.float64)
    return {"fisher": A, "anchored": C}


def ewc_penalty(ops, Ws, bs, fisher, anchored, strength):
    """Return strength * sum (A theta^2 - 2 C theta) over the layers (gradient 2 strength
    (A theta - C)); fisher, anchored: per layer (A_W, A_b), (C_W, C_b) tensors."""
    total = None
    for (W, b), (A_W, A_b), (C_W, C_b) in zip(zip(Ws, bs), fisher, anchored):
        for p, A, C in ((W, A_W, C_W), (b, A_b, C_b)):
            term = ops.reduce_sum(ops.reshape(A * p * p - 2.0 * C * p, (-1,)), 0)
            total = term if total is None else total + term
    return strength * total
