"""PyTorch's network: the study's MLP as leaf tensors, and its layers."""
from __future__ import annotations

import numpy as np
import torch

from .. import core
from ..algorithms import growth
from . import ops


class Net:
    """Hold an MLP's parameters as leaf tensors: one per layer's W and b ("plain"), one per
    output unit in the last layer ("split"), or growth.pieces with `grow` new units ("grown")."""

    def __init__(self, params, *, network="plain", grow=None, train=(), dtype="float64",
                 device="cpu"):
        L = core.n_layers(params)
        dt = getattr(torch, dtype)

        def leaf(a):
            return torch.tensor(np.asarray(a), dtype=dt, device=device, requires_grad=True)

        self.split, self.grow = network == "split", grow if network == "grown" else None
        self.heads_W = self.heads_b = self.trained = None
        if self.grow:
            self.sizes, self.train = core.layer_sizes(params), train
            parts = growth.pieces(params, grow, train)
            self.pieces = {name: leaf(value) for name, (value, _) in parts.items()}
            self.trained = [self.pieces[name] for name, (_, t) in parts.items() if t]
            self.zeros = {}  # growth.assemble's constant blocks, made once
            self.variables = list(self.pieces.values())
            return
        self.Ws = [leaf(params[f"W{l}"]) for l in range(1, L)]
        self.bs = [leaf(params[f"b{l}"]) for l in range(1, L)]
        W_L, b_L = params[f"W{L}"], params[f"b{L}"]
        if self.split:
            self.heads_W = [leaf(W_L[:, k]) for k in range(W_L.shape[1])]
            self.heads_b = [leaf(b_L[k]) for k in range(W_L.shape[1])]
        else:
            self.Ws.append(leaf(W_L))
            self.bs.append(leaf(b_L))
        self.variables = ([t for pair in zip(self.Ws, self.bs) for t in pair]
                          + (self.heads_W + self.heads_b if self.split else []))

    def layers(self):
        """Return (Ws, bs) with the output heads joined by torch.stack."""
        if self.grow:
            like = self.pieces["old_W1"]
            return growth.assemble(ops, self.pieces, self.sizes, self.grow, self.train, like,
                                   self.zeros)
        if not self.split:
            return self.Ws, self.bs
        return (self.Ws + [torch.stack(self.heads_W, dim=1)],
                self.bs + [torch.stack(self.heads_b)])
