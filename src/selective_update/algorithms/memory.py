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


def by_task(ops, x, y, tasks) -> list:
    """Return a Memory's (x, y) of each earlier task, tasks in order (split once per run)."""
    return [(ops.gather(x, list(rows), 0), ops.gather(y, list(rows), 0))
            for rows in groups(tasks)]


def gem_gradients(t, grads, variables, inputs, loss_at, margin):
    """Return the step's gradients after GEM's projection against each earlier task's memory
    gradient (inputs.memories: by_task). loss_at(out, y): the run's loss on every output."""
    ops = t.ops
    memories = []
    for x, y in inputs.memories:
        _, out = t.forward(x, variables)
        memories.append(flatten(ops, t.gradients([loss_at(out, y)], variables, None)))
    with t.no_grad():
        g = flatten(ops, grads)
        M = ops.concat([ops.reshape(m, (1, -1)) for m in memories], 0)
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
