"""grow: function-preserving growth (in the spirit of Progressive Networks, Rusu et al., 2016).

Each hidden layer gets `grow` new units. The network is held as pieces, one variable each:
  hidden layer l:  old_W{l} (d_in, d_l), old_b{l}: the old units, frozen under `grow`;
                   new_W{l} (d_in + g_in, g), new_b{l}: the new units, trained (every input, old
                   and new); the new inputs' weights to the old units are a constant 0;
  last layer:      head_W{k} / head_b{k} per output: a trained output's head reads old and new
                   units; any other head reads the old units only (its new rows are a constant 0).
So the kept outputs depend only on frozen pieces: exact for every input under every optimizer
(a frozen piece never reaches the optimizer; the warm start, all_params, trains every piece).
New incoming weights are drawn N(0, GROW_STDDEV); new biases and outgoing weights start at 0, so
the grown network computes the same function. Layers are assembled over `ops` (concat, stack).
"""
from __future__ import annotations

import numpy as np

from .settings import GROW_SEED, GROW_STDDEV


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
    for k in range(W.shape[1]):
        column = np.concatenate([W[:, k], np.zeros(g_in)]) if k in train else W[:, k]
        out[f"head_W{k + 1}"] = (column, k in train)
        out[f"head_b{k + 1}"] = (b[k], k in train)
    return out


def grown_sizes(sizes, grow) -> tuple:
    """Return the layer widths after growth."""
    return (sizes[0],) + tuple(d + grow for d in sizes[1:-1]) + (sizes[-1],)


def assemble(ops, v, sizes, grow, train, like):
    """Return the grown layers (Ws, bs) from pieces v (name -> tensor)."""
    L = len(sizes) - 1
    Ws, bs, g_in = [], [], 0
    for l in range(1, L):
        old = v[f"old_W{l}"]
        if g_in:  # the new inputs' weights to the old units: a constant 0
            old = ops.concat([old, ops.const(np.zeros((g_in, sizes[l])), like)], 0)
        Ws.append(ops.concat([old, v[f"new_W{l}"]], 1))
        bs.append(ops.concat([v[f"old_b{l}"], v[f"new_b{l}"]], 0))
        g_in = grow
    zeros = ops.const(np.zeros(g_in), like)
    heads = [v[f"head_W{k + 1}"] if k in train else ops.concat([v[f"head_W{k + 1}"], zeros], 0)
             for k in range(sizes[-1])]
    Ws.append(ops.stack(heads, 1))
    bs.append(ops.stack([v[f"head_b{k + 1}"] for k in range(sizes[-1])], 0))
    return Ws, bs
