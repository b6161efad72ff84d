"""TF1's network: the variables of the study's MLP (fed their initial values) and its layers."""
from __future__ import annotations

import numpy as np

from .. import core
from ..algorithms import growth, nullspace, strategy_step
from . import ops
from .framework import tf, v1


class Network:
    """Hold an MLP's variables: one per layer's W and b ("plain"), one per output unit in the
    last layer ("split", the seed's first approach, joined by tf.stack), or growth.pieces
    ("grown"); each is fed its initial value (feed), so a graph serves any params of its shapes."""

    def __init__(self, config, sizes, dt):
        L, train = len(sizes) - 1, config.train
        self.train = train
        self.initial, self.heads_W, self.heads_b, self.trained = {}, None, None, None
        network = strategy_step.network(core.STRATEGIES[config.strategy])
        self.grow = config.grow if network == "grown" else None

        def variable(name, shape):
            self.initial[name] = v1.placeholder(dt, shape, name=f"{name}_initial")
            return v1.Variable(self.initial[name], name=name, use_resource=True)

        if self.grow:  # growth.pieces, one variable each
            shapes = {f"{p}{l}": np.zeros(sizes[l - 1:l + 1] if p == "W" else sizes[l])
                      for l in range(1, L + 1) for p in "Wb"}
            parts = growth.pieces(shapes, self.grow, train)
            pieces = {k: variable(k, np.shape(v)) for k, (v, _) in parts.items()}
            self.trained = [pieces[k] for k, (_, t) in parts.items() if t]
            self.variables = list(pieces.values())
            like = self.initial["old_W1"]
            self.layers = growth.assemble(ops, pieces, sizes, self.grow, train, like)
            return
        self.Ws = [variable(f"W{l}", sizes[l - 1:l + 1]) for l in range(1, L)]
        self.bs = [variable(f"b{l}", (sizes[l],)) for l in range(1, L)]
        if network == "split":  # the seed's first approach: one variable per output unit, tf.stack
            self.heads_W = [variable(f"W_h_to_out{k + 1}", (sizes[-2],)) for k in range(sizes[-1])]
            self.heads_b = [variable(f"b_h_to_out{k + 1}", ()) for k in range(sizes[-1])]
            self.variables = [t for p in zip(self.Ws, self.bs) for t in p] + self.heads_W \
                + self.heads_b
            self.layers = (self.Ws + [tf.stack(self.heads_W, axis=1)],
                           self.bs + [tf.stack(self.heads_b)])
            return
        self.Ws.append(variable(f"W{L}", sizes[-2:]))
        self.bs.append(variable(f"b{L}", (sizes[-1],)))
        self.variables = [t for p in zip(self.Ws, self.bs) for t in p]
        self.layers = (self.Ws, self.bs)

    def feed(self, params):
        """Return the initial values' feed for params (grow: the grown pieces)."""
        if self.grow:
            parts = growth.pieces(params, self.grow, self.train)
            return {ph: parts[k][0] for k, ph in self.initial.items()}
        L, feed = core.n_layers(params), {}
        for name, ph in self.initial.items():
            if name.startswith(("W_h_to_out", "b_h_to_out")):
                k = int(name[10:]) - 1
                feed[ph] = params[f"W{L}"][:, k] if name[0] == "W" else params[f"b{L}"][k]
            else:
                feed[ph] = params[name]
        return feed


def start_holders(names, config, sizes, dt) -> tuple:
    """Return what holds the start values `names` (strategy_step.start_names) in a graph, and the
    placeholders that load those held across steps (strategy_step.HELD, per layer (W, b) pairs:
    variables loaded at the start, not fed every step); the distillation target is fed."""
    start, loaders = {}, {}
    shapes = {"bases": lambda d_in, d_out: ((d_in, None), (1, None)),
              "fisher": lambda d_in, d_out: ((d_in, d_out), (d_out,)),
              "anchored": lambda d_in, d_out: ((d_in, d_out), (d_out,))}
    for name in strategy_step.HELD:
        if name in names:
            loaders[name] = [tuple(v1.placeholder(dt, shape, f"{name}_{p}{l}")
                                   for p, shape in zip("Wb", shapes[name](d_in, d_out)))
                             for l, (d_in, d_out) in enumerate(zip(sizes[:-1], sizes[1:]),
                                                               start=1)]
            start[name] = [tuple(v1.Variable(ph, trainable=False, validate_shape=False,
                                             shape=tf.TensorShape(ph.shape), use_resource=True)
                                 for ph in pair) for pair in loaders[name]]
    if "distill_target" in names:
        rows = config.step_rows if config.reference is None else len(config.reference)
        start["distill_target"] = v1.placeholder(dt, (len(config.keep), rows), "target")
    return start, loaders


def memory_gradients(net, config, sizes, dt) -> tuple:
    """Return placeholders (x, y) and the gradient of the mean loss of every output there, by
    parameter name (W1, b1, ...): ewc's Fisher at its start."""
    x = v1.placeholder(dt, (None, sizes[0]), name="x_mem")
    y = v1.placeholder(dt, (None, sizes[-1]), name="y_mem")
    Ws, bs = net.layers
    _, out = nullspace.forward(ops, Ws, bs, x, config.activation)
    gradients = v1.gradients(strategy_step.full_loss(ops, out, y, config.loss), list(Ws) + list(bs))
    names = [f"{p}{l}" for p in "Wb" for l in range(1, len(sizes))]
    return x, y, dict(zip(names, gradients))
