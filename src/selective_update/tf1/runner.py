"""TF1's runner (tf.compat.v1): placeholders, Variables, a Session, tf.compat.v1.train optimizers.

No Keras. Optimizers match the torch port: sgd; momentum 0.9 (MomentumOptimizer = torch SGD with
momentum); adam (0.9, 0.999, eps 1e-8) -- stock TF1 AdamOptimizer adds eps to sqrt(v) *after*
folding the bias correction into the step size ("epsilon hat"), which differs from torch wherever
|g| is near eps (measured on the toy: up to 2e-4 in the outputs after 5 steps), so
`TorchEpsAdamOptimizer` passes eps * sqrt(1 - beta2^t) each step, torch's placement
(`make_optimizer(..., stock_adam=True)` keeps the stock one); adamw = AdamOptimizer after torch's
decoupled decay var *= 1 - lr * weight_decay. For sgd/momentum/adam, weight_decay adds
weight_decay * var to the gradient of every variable in the var_list (torch's coupled L2).
"""
from __future__ import annotations

import functools
import time

import numpy as np

from .. import core, settings
from ..algorithms import growth, nullspace, protected, subspace
from ..core import options
from ..settings import PROJECTION_SWEEPS
from . import ops
from .framework import tf, v1
from .optim import make_optimizer

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
        self.form = form  # the reference Jacobian's form (protected.form_for)
        self.residuals = {}  # corrected strategies: the final Gauss-Newton residual of a step
        self.split = any(core.STRATEGIES[s].trains == "train_heads" for s in strategies)
        self.grow = grow  # new units per hidden layer (the grow strategy's graph)
        self.tol = settings.RESTORE_TOL[dtype]
        dt = tf.as_dtype(dtype)
        L = len(sizes) - 1
        self.graph = tf.Graph()
        with self.graph.as_default():
            self.x = v1.placeholder(dt, (n, sizes[0]), name="x")
            self.y = v1.placeholder(dt, (n, sizes[-1]), name="y")
            self.x_any = v1.placeholder(dt, (None, sizes[0]), name="x_any")
            self.x_ref = None if n_ref is None else v1.placeholder(dt, (n_ref, sizes[0]), "x_ref")
            self.lr = v1.placeholder(dt, (), name="lr")
            self.weight_decay = v1.placeholder(dt, (), name="weight_decay")
            self.initial = {}

            def variable(name, shape):
                self.initial[name] = v1.placeholder(dt, shape, name=f"{name}_initial")
                return v1.Variable(self.initial[name], name=name, use_resource=True)

            self.Ws = [variable(f"W{l}", sizes[l - 1:l + 1]) for l in range(1, L) if not grow]
            self.bs = [variable(f"b{l}", (sizes[l],)) for l in range(1, L) if not grow]
            if grow:  # growth.pieces, one variable each
                shapes = {f"{p}{l}": np.zeros(sizes[l - 1:l + 1] if p == "W" else sizes[l])
                          for l in range(1, L + 1) for p in "Wb"}
                parts = growth.pieces(shapes, grow, train)
                self.pieces = {k: variable(k, np.shape(v)) for k, (v, _) in parts.items()}
                self.trained = [self.pieces[k] for k, (_, t) in parts.items() if t]
                self.variables = list(self.pieces.values())
                layers_W, layers_b = growth.assemble(ops, self.pieces, sizes, grow, train, self.x)
                self.layers = (layers_W, layers_b)
            elif self.split:  # the seed's first approach: one variable per output unit, tf.stack
                self.heads_W = [variable(f"W_h_to_out{k + 1}", (sizes[-2],))
                                for k in range(sizes[-1])]
                self.heads_b = [variable(f"b_h_to_out{k + 1}", ()) for k in range(sizes[-1])]
                W_L, b_L = tf.stack(self.heads_W, axis=1), tf.stack(self.heads_b)
                self.variables = [t for p in zip(self.Ws, self.bs) for t in p] \
                    + self.heads_W + self.heads_b
            else:
                self.Ws.append(variable(f"W{L}", sizes[-2:]))
                self.bs.append(variable(f"b{L}", (sizes[-1],)))
                W_L, b_L = self.Ws[-1], self.bs[-1]
                self.variables = [t for p in zip(self.Ws, self.bs) for t in p]
            if not grow:
                layers_W, layers_b = self.Ws[:L - 1] + [W_L], self.bs[:L - 1] + [b_L]
            hs, self.out = nullspace.forward(ops, layers_W, layers_b, self.x)
            self.hs = hs  # the loss's forward pass: projected steps reuse it (same values)
            self.hidden = hs[1]
            self.hs_any, self.out_any = nullspace.forward(ops, layers_W, layers_b, self.x_any)
            mask = tf.constant(core.train_mask(sizes[-1], train), dt)
            self.losses = {"full": tf.reduce_mean(tf.square(self.out - self.y)),
                           "masked": tf.reduce_mean(tf.square(mask * (self.out - self.y)))}
            self._start_inputs(strategies, sizes, dt, layers_W, layers_b)
            self.G = tf.constant(core.output_gradient(n, sizes[-1], train), dt)
            self.opt = make_optimizer(optimizer, self.lr)
            self.ops = {s: self._step_op(s) for s in strategies}
            loaded = {v.name for pair in getattr(self, "bases", ()) for v in pair}
            self.init = v1.variables_initializer([v for v in v1.global_variables()
                                                  if v.name not in loaded])
            self.graph.finalize()
        self.sess = session(self.graph)

    def _start_inputs(self, strategies, sizes, dt, layers_W, layers_b):
        """Add the placeholders fed from a strategy's start: layer bases, distill targets."""
        x_prot = self.x if self.x_ref is None else self.x_ref
        if any(core.STRATEGIES[s].subspace for s in strategies):
            # bases live in variables, loaded once at the start (not fed every step)
            self.basis_inputs = [(v1.placeholder(dt, (d, None), f"U_W{l}"),
                                  v1.placeholder(dt, (1, None), f"u_b{l}"))
                                 for l, d in enumerate(sizes[:-1], start=1)]
            self.bases = [tuple(v1.Variable(ph, trainable=False, validate_shape=False,
                                            shape=tf.TensorShape(ph.shape), use_resource=True)
                                for ph in pair) for pair in self.basis_inputs]
            self.load_bases = [var.initializer for pair in self.bases for var in pair]
            self.keep_mask = tf.constant(subspace.keep_mask(sizes[-1], self.keep), dt)
        if any(core.STRATEGIES[s].loss == "distill" for s in strategies):
            self.distill_target = v1.placeholder(dt, (len(self.keep), x_prot.shape[0]), "target")
            self.distill_weight = v1.placeholder(dt, (), "distill_weight")
            self.losses["distill"] = self.losses["masked"] + subspace.distill_penalty(
                ops, layers_W, layers_b, x_prot, self.keep, self.distill_target,
                self.distill_weight)

    def start_feed(self, strategy, cfg):
        """Return what a strategy feeds from its start (now): layer bases or distill targets."""
        s, feed = core.STRATEGIES[strategy], {}
        if not (s.subspace or s.loss == "distill"):
            return feed
        hs, out = self.sess.run([self.hs_any, self.out_any],
                                {self.x_any: core.protected_inputs(cfg)})
        if s.subspace:
            load = {}
            for (U_W, u_b), (a, b) in zip(self.basis_inputs, subspace.bases(hs, cfg["energy"])):
                load[U_W], load[u_b] = a, b
            self.sess.run(self.load_bases, load)
        if s.loss == "distill":
            feed[self.distill_target] = out[:, list(self.keep)].T
            feed[self.distill_weight] = cfg["distill_weight"]
        return feed

    def var_list(self, strategy):
        """List the variables a strategy gives to the optimizer."""
        trains = core.STRATEGIES[strategy].trains
        if trains == "all":
            return self.variables
        if trains == "last_layer":
            return [self.Ws[-1], self.bs[-1]]
        if trains == "grown":
            return self.trained
        return [self.heads_W[k] for k in self.train] + [self.heads_b[k] for k in self.train]

    def _step_op(self, strategy):
        s = core.STRATEGIES[strategy]
        var_list = self.var_list(strategy)
        if s.loss == "output_gradient":
            grads = v1.gradients(self.out, var_list, grad_ys=self.G)
        else:
            grads = v1.gradients(self.losses[s.loss], var_list)
        decoupled = self.optimizer_name == "adamw"
        if not decoupled:
            grads = [g + self.weight_decay * v for g, v in zip(grads, var_list)]
        before = grads  # ops below run only once every gradient is computed
        if s.projected or s.subspace:
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
        if not (s.projected or s.subspace):
            return apply
        with tf.control_dependencies([apply]):
            new = [v.read_value() for v in var_list]
            old = [sn.read_value() for sn in snapshots]
        old_Ws, old_bs = old[0::2], old[1::2]
        dWs = [n - o for n, o in zip(new[0::2], old_Ws)]
        dbs = [n - o for n, o in zip(new[1::2], old_bs)]
        if s.subspace:  # the optimizer's step less its part along protected directions
            cWs, cbs = subspace.correction(ops, self.bases, dWs, dbs, self.keep_mask)
            return self._assign(strategy, var_list, [n - c for n, c in zip(new[0::2], cWs)],
                                [n - c for n, c in zip(new[1::2], cbs)])
        if self.x_ref is not None:
            Ws, bs, err = protected.protected_step(
                ops, old_Ws, old_bs, self.x_ref, self.keep, dWs, dbs, form=self.form,
                sweeps=PROJECTION_SWEEPS, corrected=s.corrected, tol=self.tol,
                max_steps=settings.GAUSS_NEWTON_MAX_STEPS)
            return self._assign(strategy, var_list, Ws, bs, err)
        # self.hs / self.out: the gradients' forward pass, evaluated before apply in this run.
        dWs, dbs = nullspace.project(ops, old_Ws, old_bs, self.x, self.keep, dWs, dbs, hs=self.hs)
        Ws = [o + d for o, d in zip(old_Ws, dWs)]
        bs = [o + d for o, d in zip(old_bs, dbs)]
        if s.corrected:
            seed = nullspace.kept_seed(ops, self.keep, self.x.shape[0], self.out.shape[1], self.x)
            target = ops.einsum("kbj,bj->kb", seed, self.out)
            Ws, bs, err = nullspace.restore(ops, Ws, bs, self.x, self.keep, target, self.tol,
                                            settings.GAUSS_NEWTON_MAX_STEPS)
            self.residuals[strategy] = err
        values = [t for p in zip(Ws, bs) for t in p]
        return tf.group(*[v.assign(t) for v, t in zip(var_list, values)])

    def _assign(self, strategy, var_list, Ws, bs, err=None):
        """Return the op assigning new (Ws, bs); record the final residual when there is one."""
        if err is not None:
            self.residuals[strategy] = err
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
            return {f"{p}{l}": a for l, (W, b) in enumerate(zip(Ws, bs), start=1)
                    for p, a in (("W", W), ("b", b))}
        values = self.sess.run({"Ws": self.Ws, "bs": self.bs,
                                "heads": (self.heads_W, self.heads_b) if self.split else ()})
        Ws, bs = values["Ws"], values["bs"]
        if self.split:
            Ws.append(np.stack(values["heads"][0], axis=1))
            bs.append(np.stack(values["heads"][1]))
        return {f"{p}{l}": a for l, (W, b) in enumerate(zip(Ws, bs), start=1)
                for p, a in (("W", W), ("b", b))}


_GRAPHS = {}


def graph_for(strategies, cfg) -> Graph:
    """Return a cached Graph for these strategies and shapes (building a graph costs ~0.3 s)."""
    sizes = core.layer_sizes(cfg["params"])
    ref = cfg.get("reference")
    extra = {} if ref is None else {"n_ref": len(ref),
                                    "form": protected.form_for(sizes, len(cfg["keep"]), len(ref))}
    if any(core.STRATEGIES[s].trains == "grown" for s in strategies):
        extra["grow"] = cfg["grow"]
    key = (tuple(strategies), cfg["optimizer"], sizes, len(cfg["data"].x), cfg["keep"],
           cfg["train"], cfg["dtype"], THREADS, tuple(sorted(extra.items())))
    if key not in _GRAPHS:
        _GRAPHS[key] = Graph(tuple(strategies), cfg["optimizer"], sizes, len(cfg["data"].x),
                             cfg["keep"], cfg["train"], cfg["dtype"], **extra)
    return _GRAPHS[key]


def _feed(g, cfg):
    """Return the feed of one step: batch, targets, lr, decay and the reference inputs."""
    feed = {g.x: cfg["data"].x, g.y: cfg["data"].y, g.lr: cfg["lr"],
            g.weight_decay: cfg["weight_decay"]}
    if g.x_ref is not None and not core.STRATEGIES[cfg["strategy"]].subspace:
        feed[g.x_ref] = cfg["reference"]  # layer_subspace used it at its start only
    return feed


def configure(threads=None):
    """Make TF ops deterministic; pin the intra-op threads of new sessions when given."""
    global THREADS
    tf.config.experimental.enable_op_determinism()
    if threads:
        THREADS = threads


def make_steps(strategies, **run_kwargs):
    """Return ({strategy: callable running its step op once}, sync); split_head and grow have
    their own graphs. run_kwargs are run()'s; an option goes only to the strategies using it.
    """
    steps, kinds = {}, {}
    for s in strategies:
        kinds.setdefault(core.STRATEGIES[s].trains in ("train_heads", "grown")
                         and core.STRATEGIES[s].trains, []).append(s)
    for group in kinds.values():
        cfgs = {s: core.check_run(s, NAME, warn=False, **options.options_for(s, run_kwargs))
                for s in group}
        g = graph_for(tuple(group), cfgs[group[0]])
        g.reset(cfgs[group[0]]["params"])
        for s in group:
            feed = {**_feed(g, cfgs[s]), **g.start_feed(s, cfgs[s])}
            steps[s] = functools.partial(g.sess.run, g.ops[s], feed)
    return steps, lambda: None


def project_step(Ws, bs, x, keep, dWs, dbs):
    """Project a step onto the null space of the kept outputs' Jacobian (layer-wise Gram form)."""
    return nullspace.project(ops, Ws, bs, x, keep, dWs, dbs)


def run(strategy, *, params, data, keep=(0,), train=(1,), optimizer="sgd", lr=0.1, steps=1,
        weight_decay=0.0, warm_start_steps=0, dtype="float64", device="cpu",
        warm_start_lr=None, **options) -> core.RunResult:
    """Run warm-start steps (all_params), then `steps` steps of `strategy`, recording outputs.

    options: reference, energy, grow, distill_weight (see selective_update.run).
    """
    cfg = core.check_run(strategy, NAME, params=params, data=data, keep=keep, train=train,
                         optimizer=optimizer, lr=lr, steps=steps, weight_decay=weight_decay,
                         warm_start_steps=warm_start_steps, dtype=dtype, device=device,
                         warm_start_lr=warm_start_lr, **options)
    g = graph_for(dict.fromkeys(("all_params", strategy)), cfg)
    g.reset(params)
    feed = _feed(g, cfg)
    for _ in range(cfg["warm_start_steps"]):
        g.sess.run(g.ops["all_params"], {**feed, g.lr: cfg["warm_start_lr"]})
    feed.update(g.start_feed(strategy, cfg))
    inputs = [data.x, data.x_eval] + ([] if g.x_ref is None else [cfg["reference"]])

    def outputs():
        return [g.sess.run(g.out_any, {g.x_any: x}) for x in inputs]

    fetch = {"step": g.ops[strategy], "residual": g.residuals.get(strategy, ())}
    recorded, seconds, residuals = [outputs()], [], []
    for _ in range(cfg["steps"]):
        start = time.perf_counter()
        residuals.append(g.sess.run(fetch, feed)["residual"])
        seconds.append(time.perf_counter() - start)
        recorded.append(outputs())
    ref = np.stack([r[2] for r in recorded]) if g.x_ref is not None else None
    residual = residuals if core.STRATEGIES[strategy].corrected else None
    return core.make_result(cfg, np.stack([r[0] for r in recorded]),
                            np.stack([r[1] for r in recorded]), g.numpy_params(), seconds,
                            ref, residual)
