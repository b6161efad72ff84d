"""grow: function-preserving growth (in the spirit of Progressive Networks, Rusu et al., 2016).

Each hidden layer gets `grow` new units. The network is held as pieces, one variable each:
  hidden layer l:  old_W{l} (d_in, d_l), old_b{l}: the old units, frozen under `grow`;
                   new_W{l} (d_in + g_in, g), new_b{l}: the new units, trained (every input, old
                   and new); the new inputs' weights to the old units are a constant 0;
  last layer:      train_W (d + g, T), train_b: the trained outputs' heads read old and new
                   units; other_W (d, n_out - T), other_b: every other head reads the old units
                   only (its new rows are a constant 0), frozen; columns put back in output order.
So the kept outputs depend only on frozen pieces: exact for every input under every optimizer
(a frozen piece never reaches the optimizer; the warm start, all_params, trains every piece).
New incoming weights are drawn N(0, GROW_STDDEV); new biases and outgoing weights start at 0, so
the grown network computes the same function. Layers are assembled over `ops` (concat, gather).
"""
from __future__ import annotations

import numpy as np

from ..settings import GROW_SEED, GROW_STDDEV


def pieces(params, grow, train) -> dict:
    """Return {name: (initial numpy value, trained under grow)} in a fixed order."""
    L = sum(1 for k in params if k.startswith("W"))
    rng = np.random.default_rng(GROW_SEED)
    out, g_in = {}, 0
    for l in range(1, L):
        W, b = np.asarray(params[f"W{l}"]), np.asarray(params[f"b{l}"])
        out[f"old_W{l}"], out[f"old_b{l}"] = (W, False), (b, False)
        out[f"new_W{l}"] = (rng.normal(0.0, GROW_STDDEV, (W.shape[0] + g_in, grow)), True)
        out[f"new_b{l}"] = (np.zeros(grow), True)
        g_in = grow
    W, b = np.asarray(params[f"W{L}"]), np.asarray(params[f"b{L}"])
    trained, other = list(train), [k for k in range(W.shape[1]) if k not in train]
    out["train_W"] = (np.concatenate([W[:, trained], np.zeros((g_in, len(trained)))]), True)
    out["train_b"] = (b[trained], True)
    out["other_W"], out["other_b"] = (W[:, other], False), (b[other], False)
    return out


def column_order(n_out, train):
    """Return (trained block first?, permutation back to output order or None)."""
    other = [k for k in range(n_out) if k not in train]
    if (not other or max(other) < min(train)) and list(train) == sorted(train):
        return False, None  # [other, trained] is already in output order (e.g. the last one)
    order = list(train) + other
    return True, None if order == sorted(order) else [order.index(k) for k in range(n_out)]


def grown_sizes(sizes, grow) -> tuple:
    """Return the layer widths after growth."""
    return (sizes[0],) + tuple(d + grow for d in sizes[1:-1]) + (sizes[-1],)


def assemble(ops, v, sizes, grow, train, like, zeros=None):
    """Return the grown layers (Ws, bs) from pieces v (name -> tensor).

    zeros: a dict the caller keeps to reuse the constant-zero blocks (eager frameworks).
    """
    zeros = {} if zeros is None else zeros

    def zero(shape):
        if shape not in zeros:
            zeros[shape] = ops.const(np.zeros(shape), like)
        return zeros[shape]

    L = len(sizes) - 1
    Ws, bs, g_in = [], [], 0
    for l in range(1, L):
        old = v[f"old_W{l}"]
        if g_in:  # the new inputs' weights to the old units: a constant 0
            old = ops.concat([old, zero((g_in, sizes[l]))], 0)
        Ws.append(ops.concat([old, v[f"new_W{l}"]], 1))
        bs.append(ops.concat([v[f"old_b{l}"], v[f"new_b{l}"]], 0))
        g_in = grow
    n_out, T = sizes[-1], len(train)
    other = ops.concat([v["other_W"], zero((g_in, n_out - T))], 0)
    trained_first, order = column_order(n_out, train)
    if trained_first:
        W, b = ops.concat([v["train_W"], other], 1), ops.concat([v["train_b"], v["other_b"]], 0)
    else:
        W, b = ops.concat([other, v["train_W"]], 1), ops.concat([v["other_b"], v["train_b"]], 0)
    if order is not None:
        W, b = ops.gather(W, order, 1), ops.gather(b, order, 0)
    Ws.append(W)
    bs.append(b)
    return Ws, bs
