"""TF1's runner (tf.compat.v1): interprets each strategy's description into one graph's step op.

What a strategy trains, its loss, its start and what follows its step are
algorithms.strategy_step's, written once for both frameworks; this module holds what TF1 itself
does: placeholders, Variables, tf.gradients, a Session and tf.compat.v1.train optimizers (no
Keras). Weight decay as torch applies it: for sgd/momentum/adam, weight_decay * var is added to the
gradient of every variable in the var_list (coupled L2); adamw decays var *= 1 - lr * weight_decay
before the Adam update (decoupled). The optimizers are tf1.optim's (v1_optimizer).
"""
from __future__ import annotations

import functools
import time

import numpy as np

from .. import core, settings
from ..algorithms import compensated, growth, nullspace, strategy_step, subspace
from ..core import options
from . import ops
from .framework import tf, v1
from .optim import v1_optimizer

NAME = "tf1"
THREADS = 0  # intra-op threads of new sessions; 0 lets TF choose (configure() pins it)


def session(graph):
    """Open a Session on graph: one inter-op thread, THREADS intra-op threads."""
    config = v1.ConfigProto(inter_op_parallelism_threads=1,
                            intra_op_parallelism_threads=THREADS)
    return v1.Session(graph=graph, config=config)


class Graph:
    """One TF1 graph for a set of strategies sharing one optimizer; params, lr and decay are fed."""

    def __init__(self, strategies, optimizer, sizes, n, keep, train, dtype, n_ref=None,
                 form=None, grow=None):
        self.optimizer_name, self.keep, self.train = optimizer, keep, train
        self.residuals = {}  # corrected strategies: the final Gauss-Newton residual of a step
        described = [core.STRATEGIES[s] for s in strategies]
        self.split = any(s.trains == "train_heads" for s in described)
        self.grow = grow  # new units per hidden layer (the grow strategy's graph)
        self.heads_W = self.heads_b = self.trained = None
        dt = tf.as_dtype(dtype)
        self.graph = tf.Graph()
        with self.graph.as_default():
            self.x = v1.placeholder(dt, (n, sizes[0]), name="x")
            self.y = v1.placeholder(dt, (n, sizes[-1]), name="y")
            self.x_any = v1.placeholder(dt, (None, sizes[0]), name="x_any")
            self.x_ref = None if n_ref is None else v1.placeholder(dt, (n_ref, sizes[0]), "x_ref")
            self.lr = v1.placeholder(dt, (), name="lr")
            self.weight_decay = v1.placeholder(dt, (), name="weight_decay")
            layers_W, layers_b = self._variables(sizes, dt, grow, train)
            hs, self.out = nullspace.forward(ops, layers_W, layers_b, self.x)
            self.hs = hs  # the loss's forward pass: projected steps reuse it (same values)
            self.hidden = hs[1]
            self.hs_any, self.out_any = nullspace.forward(ops, layers_W, layers_b, self.x_any)
            self.hs_ref = self.out_ref = None  # compensated_gradient's reference forward pass
            if n_ref is not None and any(s.loss == "compensated_gradient" for s in described):
                self.hs_ref, self.out_ref = nullspace.forward(ops, layers_W, layers_b,
                                                              self.x_ref)
            # compensated_gradient's x x^T + 1: fed its value while the batch stays (_feed)
            self.first_inputs, self.fed_inputs = None, []
            if any(s.loss == "compensated_gradient" for s in described):
                self.first_inputs = compensated.first_inputs(
                    ops, self.x, None if self.hs_ref is None else self.x_ref)
                self.fed_inputs = tf.nest.flatten(self.first_inputs)
            self.mask = tf.constant(core.output_mask(sizes[-1], train), dt)
            self.after = strategy_step.AfterStep(
                keep=keep, tol=settings.RESTORE_TOL[dtype],
                max_steps=settings.GAUSS_NEWTON_MAX_STEPS, sweeps=settings.PROJECTION_SWEEPS,
                x=self.x, hs=self.hs, out=self.out, form=form,
                x_ref=self.x if self.x_ref is None and form else self.x_ref)  # mini-batches
            self._start_inputs(described, sizes, dt, layers_W, layers_b)
            self.losses = {}
            for s in described:
                if s.loss not in self.losses:
                    self.losses[s.loss] = strategy_step.loss(ops, s, self.out, self.y, self.mask,
                                                             self.distill_penalty)
            self.G = tf.constant(core.output_gradient(n, sizes[-1], train), dt)
            self.opt = v1_optimizer(optimizer, self.lr)
            self.ops = {s.name: self._step_op(s) for s in described}
            loaded = {v.name for pair in self.after.bases or () for v in pair}
            self.init = v1.variables_initializer([v for v in v1.global_variables()
                                                  if v.name not in loaded])
            self.graph.finalize()
        self.sess = session(self.graph)

    def _variables(self, sizes, dt, grow, train):
        """Make the variables (fed their initial values) and return the layers they form."""
        L = len(sizes) - 1
        self.initial = {}

        def variable(name, shape):
            self.initial[name] = v1.placeholder(dt, shape, name=f"{name}_initial")
            return v1.Variable(self.initial[name], name=name, use_resource=True)

        if grow:  # growth.pieces, one variable each
            shapes = {f"{p}{l}": np.zeros(sizes[l - 1:l + 1] if p == "W" else sizes[l])
                      for l in range(1, L + 1) for p in "Wb"}
            parts = growth.pieces(shapes, grow, train)
            self.pieces = {k: variable(k, np.shape(v)) for k, (v, _) in parts.items()}
            self.trained = [self.pieces[k] for k, (_, t) in parts.items() if t]
            self.variables = list(self.pieces.values())
            self.layers = growth.assemble(ops, self.pieces, sizes, grow, train, self.x)
            return self.layers
        self.Ws = [variable(f"W{l}", sizes[l - 1:l + 1]) for l in range(1, L)]
        self.bs = [variable(f"b{l}", (sizes[l],)) for l in range(1, L)]
        if self.split:  # the seed's first approach: one variable per output unit, tf.stack
            self.heads_W = [variable(f"W_h_to_out{k + 1}", (sizes[-2],))
                            for k in range(sizes[-1])]
            self.heads_b = [variable(f"b_h_to_out{k + 1}", ()) for k in range(sizes[-1])]
            W_L, b_L = tf.stack(self.heads_W, axis=1), tf.stack(self.heads_b)
            self.variables = [t for p in zip(self.Ws, self.bs) for t in p] \
                + self.heads_W + self.heads_b
            return self.Ws + [W_L], self.bs + [b_L]
        self.Ws.append(variable(f"W{L}", sizes[-2:]))
        self.bs.append(variable(f"b{L}", (sizes[-1],)))
        self.variables = [t for p in zip(self.Ws, self.bs) for t in p]
        return self.Ws, self.bs

    def _start_inputs(self, described, sizes, dt, layers_W, layers_b):
        """Add what a strategy's start feeds: layer bases (variables), distillation targets."""
        x_prot = self.x if self.x_ref is None else self.x_ref
        self.distill_penalty = None
        if any(s.subspace for s in described):
            # bases live in variables, loaded once at the start (not fed every step)
            self.basis_inputs = [(v1.placeholder(dt, (d, None), f"U_W{l}"),
                                  v1.placeholder(dt, (1, None), f"u_b{l}"))
                                 for l, d in enumerate(sizes[:-1], start=1)]
            self.after.bases = [tuple(v1.Variable(ph, trainable=False, validate_shape=False,
                                                  shape=tf.TensorShape(ph.shape),
                                                  use_resource=True)
                                      for ph in pair) for pair in self.basis_inputs]
            self.load_bases = [var.initializer for pair in self.after.bases for var in pair]
            self.after.keep_mask = tf.constant(strategy_step.keep_columns(sizes[-1], self.keep),
                                               dt)
        if any(s.loss == "distill" for s in described):
            self.distill_target = v1.placeholder(dt, (len(self.keep), x_prot.shape[0]), "target")
            self.distill_weight = v1.placeholder(dt, (), "distill_weight")
            self.distill_penalty = subspace.distill_penalty(
                ops, layers_W, layers_b, x_prot, self.keep, self.distill_target,
                self.distill_weight)

    def start_feed(self, strategy, config, inputs=None):
        """Return what a strategy feeds from its start (now): layer bases or distill targets.

        inputs: where to take them (default: config.protected_inputs).
        """
        s, feed = core.STRATEGIES[strategy], {}
        if not s.starts:
            return feed
        inputs = config.protected_inputs if inputs is None else inputs
        hs, out = self.sess.run([self.hs_any, self.out_any], {self.x_any: inputs})
        values = strategy_step.start_values(s, config, hs, out)
        if "bases" in values:
            load = {}
            for (U_W, u_b), (a, b) in zip(self.basis_inputs, values["bases"]):
                load[U_W], load[u_b] = a, b
            self.sess.run(self.load_bases, load)
        if "distill_target" in values:
            feed[self.distill_target] = values["distill_target"]
            feed[self.distill_weight] = config.distill_weight
        return feed

    def _step_op(self, s):
        """Build the op of one step of strategy s."""
        var_list = strategy_step.var_list(s, self, self.train)
        if s.loss == "output_gradient":
            grads = v1.gradients(self.out, var_list, grad_ys=self.G)
        elif s.loss == "compensated_gradient":  # G of the masked loss, then G' in its place
            G = strategy_step.loss_gradient(ops, s, self.out, self.y, self.mask)
            G_prime = compensated.compensated_gradient(ops, self.Ws, self.hs, G, self.keep,
                                                       self.hs_ref, self.first_inputs)
            if self.x_ref is None:
                grads = v1.gradients(self.out, var_list, grad_ys=G_prime)
            else:  # the reference inputs join the backward pass with -alpha on kept outputs
                grads = v1.gradients([self.out, self.out_ref], var_list, grad_ys=[G, G_prime])
        else:
            grads = v1.gradients(self.losses[s.loss], var_list)
        decoupled = self.optimizer_name == "adamw"
        if not decoupled:
            grads = [g + self.weight_decay * v for g, v in zip(grads, var_list)]
        before = grads  # ops below run only once every gradient is computed
        if s.after != "none":
            snapshots = [v1.Variable(tf.zeros(v.shape, v.dtype), trainable=False,
                                     use_resource=True, name="before_step") for v in var_list]
            with tf.control_dependencies(before):
                before = [tf.group(*[sn.assign(v.read_value())
                                     for sn, v in zip(snapshots, var_list)])]
        if decoupled:
            with tf.control_dependencies(before):
                before = [tf.group(*[v.assign(v.read_value() * (1.0 - self.lr * self.weight_decay))
                                     for v in var_list])]
        with tf.control_dependencies(before):
            apply = self.opt.apply_gradients(list(zip(grads, var_list)))
        if s.after == "none":
            return apply
        with tf.control_dependencies([apply]):
            new = [v.read_value() for v in var_list]
            old = [sn.read_value() for sn in snapshots]
        # self.hs / self.out (in self.after): the gradients' forward pass, before apply.
        Ws, bs, residual = strategy_step.after_step(ops, s, self.after, old[0::2], old[1::2],
                                                    new[0::2], new[1::2])
        if residual is not None:
            self.residuals[s.name] = residual
        values = [t for p in zip(Ws, bs) for t in p]
        return tf.group(*[v.assign(t) for v, t in zip(var_list, values)])

    def reset(self, params):
        """Load params into the variables and reset every optimizer slot."""
        L = core.n_layers(params)
        if self.grow:
            parts = growth.pieces(params, self.grow, self.train)
            self.sess.run(self.init, {ph: parts[k][0] for k, ph in self.initial.items()})
            return
        feed = {}
        for name, ph in self.initial.items():
            if name.startswith("W_h_to_out"):
                feed[ph] = params[f"W{L}"][:, int(name[10:]) - 1]
            elif name.startswith("b_h_to_out"):
                feed[ph] = params[f"b{L}"][int(name[10:]) - 1]
            else:
                feed[ph] = params[name]
        self.sess.run(self.init, feed)

    def numpy_params(self):
        """Return the variables as a params dict of numpy arrays (grow: the grown layers)."""
        if self.grow:
            Ws, bs = self.sess.run(self.layers)
        else:
            values = self.sess.run({"Ws": self.Ws, "bs": self.bs,
                                    "heads": (self.heads_W, self.heads_b) if self.split else ()})
            Ws, bs = values["Ws"], values["bs"]
            if self.split:
                Ws.append(np.stack(values["heads"][0], axis=1))
                bs.append(np.stack(values["heads"][1]))
        return {f"{p}{l}": a for l, (W, b) in enumerate(zip(Ws, bs), start=1)
                for p, a in (("W", W), ("b", b))}


_GRAPHS = {}


def graph_for(strategies, config) -> Graph:
    """Return a cached Graph for these strategies and shapes (building a graph costs ~0.3 s)."""
    sizes = core.layer_sizes(config.params)
    ref, form = config.reference, strategy_step.protected_form(config)
    extra = {} if form is None else {"form": form}
    if ref is not None:
        extra["n_ref"] = len(ref)
    if any(core.STRATEGIES[s].trains == "grown" for s in strategies):
        extra["grow"] = config.grow
    n = config.step_rows
    key = (tuple(strategies), config.optimizer, sizes, n, config.keep, config.train,
           config.dtype, THREADS, tuple(sorted(extra.items())))
    if key not in _GRAPHS:
        _GRAPHS[key] = Graph(tuple(strategies), config.optimizer, sizes, n, config.keep,
                             config.train, config.dtype, **extra)
    return _GRAPHS[key]


def _feed(g, config):
    """Return the feed of one step: batch, targets, lr, decay and the reference inputs."""
    feed = {g.x: config.data.x, g.y: config.data.y, g.lr: config.lr,
            g.weight_decay: config.weight_decay}
    if g.x_ref is not None and not core.STRATEGIES[config.strategy].subspace:
        feed[g.x_ref] = config.reference  # layer_subspace used it at its start only
    if g.fed_inputs and config.batch_size is None:  # computed once for the fixed batch
        inputs = {t: feed[t] for t in (g.x, g.x_ref) if t is not None and t in feed}
        feed.update(zip(g.fed_inputs, g.sess.run(g.fed_inputs, inputs)))
    return feed


def configure(threads=None):
    """Make TF ops deterministic; pin the intra-op threads of new sessions when given."""
    global THREADS
    tf.config.experimental.enable_op_determinism()
    if threads:
        THREADS = threads


def make_steps(strategies, **arguments):
    """Return ({strategy: callable running its step op once}, sync); split_head and grow have
    their own graphs. arguments are run()'s; an option goes only to the strategies using it.
    """
    taken, kinds = {}, {}
    for s in strategies:
        kinds.setdefault(core.STRATEGIES[s].trains in ("train_heads", "grown")
                         and core.STRATEGIES[s].trains, []).append(s)
    for group in kinds.values():
        configs = {s: core.check_run(s, NAME, warn=False, **options.options_for(s, arguments))
                   for s in group}
        strategy_step.check_full_batch(configs[group[0]], "make_steps")
        g = graph_for(tuple(group), configs[group[0]])
        g.reset(configs[group[0]].params)
        for s in group:
            feed = {**_feed(g, configs[s]), **g.start_feed(s, configs[s])}
            taken[s] = functools.partial(g.sess.run, g.ops[s], feed)
    return taken, lambda: None


def project_step(Ws, bs, x, keep, dWs, dbs):
    """Project a step onto the null space of the kept outputs' Jacobian (layer-wise Gram form)."""
    return nullspace.project(ops, Ws, bs, x, keep, dWs, dbs)


def run(strategy, **arguments) -> core.RunResult:
    """Run warm-start steps (all_params), then `steps` steps of `strategy`, recording outputs.

    arguments: selective_update.run's keyword arguments (core.ARGUMENTS).
    """
    return train(core.check_run(strategy, NAME, **arguments))


def train(config) -> core.RunResult:
    """Train a checked core.RunConfig and record the outputs after every step."""
    strategy, data = config.strategy, config.data
    g = graph_for(dict.fromkeys(("all_params", strategy)), config)
    g.reset(config.params)
    feed = _feed(g, config)
    warm = config.warm_start_steps
    batches = config.batches(warm + config.steps)

    def step_feed(i):
        """The feed of step i: its mini-batch (and the distill targets of its rows)."""
        if batches is None:
            return feed
        rows = batches[i]
        fed = {**feed, g.x: data.x[rows], g.y: data.y[rows]}
        if config.reference is None and g.distill_penalty is not None and i >= warm:
            fed[g.distill_target] = feed[g.distill_target][:, rows]
        if strategy_step.rebases(core.STRATEGIES[strategy], config) and i >= warm:
            g.start_feed(strategy, config, inputs=data.x[rows])  # this mini-batch's bases
        return fed

    for i in range(warm):
        g.sess.run(g.ops["all_params"], {**step_feed(i), g.lr: config.warm_start_lr})
    feed.update(g.start_feed(strategy, config))
    inputs = [data.x, data.x_eval] + ([] if g.x_ref is None else [config.reference])

    def outputs():
        return [g.sess.run(g.out_any, {g.x_any: x}) for x in inputs]

    fetch = {"step": g.ops[strategy], "residual": g.residuals.get(strategy, ())}
    recorded, seconds, residuals = [outputs()], [], []
    for i in range(warm, warm + config.steps):
        start = time.perf_counter()
        residuals.append(g.sess.run(fetch, step_feed(i))["residual"])
        seconds.append(time.perf_counter() - start)
        recorded.append(outputs())
    ref = np.stack([r[2] for r in recorded]) if g.x_ref is not None else None
    residual = residuals if core.STRATEGIES[strategy].corrected else None
    return core.make_result(config, np.stack([r[0] for r in recorded]),
                            np.stack([r[1] for r in recorded]), g.numpy_params(), seconds,
                            ref, residual, None if batches is None else batches[warm:])
