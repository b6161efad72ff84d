"""TF1's trainer for the study's loop (algorithms.training): one graph, a Session, feeds.

The run's sequence is algorithms.training's and a step's is strategy_step.take_step's, written
once for both frameworks: here take_step builds each strategy's step op once (placeholders,
Variables, tf.gradients, control dependencies), and every step is one Session.run of it.
tf.compat.v1 only, no Keras. The optimizers, with weight decay as torch applies it, are
tf1.optim's (v1_optimizer, apply_with_decay).
"""
from __future__ import annotations

import collections
import contextlib

from .. import core
from ..algorithms import memory, nullspace, strategy_step, training
from . import framework, ops
from .framework import session, tf, v1
from .network import Network, memory_gradients, start_holders
from .optim import apply_with_decay, v1_optimizer

NAME = "tf1"


class Graph:
    """One graph of a set of strategies sharing one network and optimizer: the step op of each."""

    ops = ops

    def __init__(self, config, strategies):
        """Build, for config's shapes, the placeholders (x, y, x_any, the reference inputs, lr,
        weight_decay, the strategies' options), the variables (fed their initial values by
        reset), the start values' holders, and take_step's op for each strategy; then finalize.

        Everything a run changes is fed, so runs of the same shapes share the graph (graph_for).
        """
        self.config, described = config, [core.STRATEGIES[s] for s in strategies]
        sizes, dt = core.layer_sizes(config.params), tf.as_dtype(config.dtype)
        self.graph, self._forwards = tf.Graph(), {}
        with self.graph.as_default():
            self.x = v1.placeholder(dt, (config.step_rows, sizes[0]), name="x")
            self.y = v1.placeholder(dt, (config.step_rows, sizes[-1]), name="y")
            self.x_any = v1.placeholder(dt, (None, sizes[0]), name="x_any")
            ref, targets = config.reference, config.reference_targets
            self.x_ref = None if ref is None else v1.placeholder(dt, ref.shape, name="x_ref")
            self.y_ref = None if targets is None else v1.placeholder(dt, targets.shape, "y_ref")
            self.lr = v1.placeholder(dt, (), name="lr")
            self.weight_decay = v1.placeholder(dt, (), name="weight_decay")
            self.options = {o.name: v1.placeholder(dt, (), o.name)
                            for s in described for o in s.options}
            self.net = Network(config, sizes, dt)
            self.hs_any, self.out_any = self.forward(self.x_any)
            names = strategy_step.start_names(described)
            self.start, self.loaders = start_holders(names, config, sizes, dt)
            self.memory = memory_gradients(self.net, config, sizes, dt) if "fisher" in names \
                else None
            memories = None if config.reference_tasks is None else memory.by_task(
                ops, self.x_ref, self.y_ref, config.reference_tasks)
            self.inputs = strategy_step.StepInputs(
                self.x, self.y, self.x_ref, self.y_ref, memories,
                minibatch=config.batch_size is not None, start=self.start, options=self.options)
            self.opt = v1_optimizer(config.optimizer, self.lr)
            self.fetches = {}
            for s in described:
                op, residual = strategy_step.take_step(self, s, self.inputs)
                self.fetches[s.name] = {"step": op, "residual": () if residual is None
                                        else residual}
            self.fed = tf.nest.flatten(self.inputs.cache)  # fed their values for a fixed batch
            held = [v for name in self.loaders for pair in self.start[name] for v in pair]
            self.load = {name: [v.initializer for pair in self.start[name] for v in pair]
                         for name in self.loaders}
            loaded = {v.name for v in held}
            self.init = v1.variables_initializer([v for v in v1.global_variables()
                                                  if v.name not in loaded])
            self.graph.finalize()
        self.sess = session(self.graph)

    # --- take_step's side: graph ops ------------------------------------------------------------
    def layers(self):
        return self.net.layers

    def forward(self, x, variables=None):
        if id(x) not in self._forwards:  # one forward pass per input tensor, shared by the ops
            self._forwards[id(x)] = nullspace.forward(ops, *self.net.layers, x,
                                                      self.config.activation)
        return self._forwards[id(x)]

    def gradients(self, ys, variables, grad_ys):
        return v1.gradients(ys, variables, grad_ys=grad_ys)

    def apply(self, grads, variables, after=None):
        applied = apply_with_decay(self.opt, self.config.optimizer, grads, variables, self.lr,
                                   self.weight_decay, list(after or ()) + list(grads))
        if after is None:
            return applied
        with tf.control_dependencies([applied]):
            return [v.read_value() for v in variables]

    def snapshot(self, variables, after=None):
        copies = [v1.Variable(tf.zeros(v.shape, v.dtype), trainable=False, use_resource=True,
                              name="before_step") for v in variables]
        with tf.control_dependencies(after):
            done = tf.group(*[c.assign(v.read_value()) for c, v in zip(copies, variables)])
        with tf.control_dependencies([done]):
            return [c.read_value() for c in copies]

    def assign(self, variables, values):
        return tf.group(*[v.assign(t) for v, t in zip(variables, values)])

    def no_grad(self):
        return contextlib.nullcontext()


class Trainer:
    """One run on a (cached) Graph: its parameters, learning rate and feeds."""

    ops = ops

    def __init__(self, config, strategies):
        self.config, self.g = config, graph_for(config, strategies)
        g = self.g
        g.sess.run(g.init, g.net.feed(config.params))  # the variables and optimizer slots afresh
        self.lr = config.lr
        fed = {g.weight_decay: config.weight_decay, g.x_ref: config.reference,
               g.y_ref: config.reference_targets,
               **{ph: getattr(config, name) for name, ph in g.options.items()}}
        self.constant = {ph: v for ph, v in fed.items() if ph is not None and v is not None}

    def prepare(self, batch):
        """Return the step's feed (with a fixed batch, the values kept while it stays)."""
        g = self.g
        feed = {**self.constant, g.x: batch.x, g.y: batch.y}
        if "distill_target" in g.start and batch.start:
            feed[g.start["distill_target"]] = batch.start["distill_target"]
        if batch.rows is None and g.fed:
            feed.update(zip(g.fed, g.sess.run(g.fed, feed)))
        return feed

    def step(self, strategy, prepared):
        done = self.g.sess.run(self.g.fetches[strategy], {**prepared, self.g.lr: self.lr})
        return None if isinstance(done["residual"], tuple) else float(done["residual"])

    def set_lr(self, lr):
        self.lr = lr

    def start(self, values):
        for name, loaders in self.g.loaders.items():
            if name in values:
                self.g.sess.run(self.g.load[name], {
                    ph: a for phs, arrays in zip(loaders, values[name])
                    for ph, a in zip(phs, arrays)})

    def loss_gradients(self, x, y):
        x_mem, y_mem, gradients = self.g.memory
        return self.g.sess.run(gradients, {x_mem: x, y_mem: y})

    def outputs(self, x):
        return self.g.sess.run(self.g.out_any, {self.g.x_any: x})

    def layer_inputs(self, x):
        return tuple(self.g.sess.run([self.g.hs_any, self.g.out_any], {self.g.x_any: x}))

    def numpy_params(self):
        Ws, bs = self.g.sess.run(self.g.net.layers)
        return {f"{p}{l}": a for l, pair in enumerate(zip(Ws, bs), start=1)
                for p, a in zip("Wb", pair)}

    def sync(self):
        """Session.run returns when its work is done."""


_GRAPHS = collections.OrderedDict()  # the graphs built last, by shapes (MAX_GRAPHS of them)
MAX_GRAPHS = 48


def graph_for(config, strategies) -> Graph:
    """Return a cached Graph for these strategies and shapes (building one costs ~0.3 s)."""
    tasks, ref = config.reference_tasks, config.reference
    key = (tuple(strategies), config.strategy, config.optimizer, core.layer_sizes(config.params),
           config.step_rows, config.batch_size is not None, config.keep, config.train,
           config.dtype, framework.THREADS, None if ref is None else ref.shape, config.grow,
           config.activation, config.loss, config.gem_margin,
           None if tasks is None else tuple(map(tuple, memory.groups(tasks))))
    if key not in _GRAPHS:
        _GRAPHS[key] = Graph(config, strategies)
        if len(_GRAPHS) > MAX_GRAPHS:  # the oldest's session and graph go
            _GRAPHS.popitem(last=False)[1].sess.close()
    _GRAPHS.move_to_end(key)
    return _GRAPHS[key]


RUNNER = training.Runner(NAME, Trainer, ops)

