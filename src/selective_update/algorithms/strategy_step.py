"""A strategy's step, written once: its variables, what it back-propagates, its start values and
what follows the optimizer's step.

take_step() is the step's whole sequence over a trainer's primitives (algorithms.training.Trainer):
forward pass, the framework's one autodiff call, snapshot, optimizer, correction, write back.
torch's trainer carries it out at every step; tf1's once per strategy, into its graph's step op.
Neither looks at a strategy's fields: what a field means is decided here.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..core.nets import layer_sizes, output_gradient, output_mask
from ..settings import GAUSS_NEWTON_MAX_STEPS, PROJECTION_SWEEPS, RESTORE_TOL
from . import compensated, memory, nullspace, protected, subspace

NETWORKS = {"train_heads": "split", "grown": "grown"}  # any other `trains`: "plain"


def network(strategy) -> str:
    """Return the network a strategy trains: "split" (one variable per output unit), "grown"
    (algorithms.growth's pieces) or "plain" (one variable per layer's W and b)."""
    return NETWORKS.get(strategy.trains, "plain")


@dataclass(frozen=True)
class StepInputs:
    """One step's inputs, in a trainer's tensors (torch: this step's values; tf1: placeholders,
    variables and the tensors its feed fills).

    reference: run(reference=)'s inputs or None, reference_targets a Memory's targets and
    memories its (x, y) per earlier task (memory.by_task);
    minibatch: each step trains on other rows of data.x (run(batch_size=)); start: the
    strategy's start values (start_values), per layer "bases", "fisher" and "anchored", and the
    step's "distill_target"; options: the run options used inside the step (distill_weight,
    ewc_strength); cache: values that depend on the inputs only, kept while they stay the same
    (the trainer hands the same dict to every step of a fixed batch).
    """

    x: object
    y: object
    reference: object = None
    reference_targets: object = None
    memories: object = None
    minibatch: bool = False
    start: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    cache: dict = field(default_factory=dict)

    @property
    def protected(self):
        """The inputs a projection factors through algorithms.protected: the reference inputs,
        or with mini-batches each step's own; None: the fixed batch, through nullspace.py."""
        if self.reference is not None:
            return self.reference
        return self.x if self.minibatch else None

    @property
    def distilled(self):
        """The inputs distill holds the kept outputs on: the reference inputs, else the batch."""
        return self.x if self.reference is None else self.reference

    def cached(self, name, compute):
        """Return cache[name], computing it first when it is not there."""
        if name not in self.cache:
            self.cache[name] = compute()
        return self.cache[name]


def var_list(strategy, net, train) -> list:
    """Return the variables a strategy gives to the optimizer (its var_list).

    net: a trainer's network, with `variables` (every variable, in a fixed order), `Ws`/`bs`
    (the layers held whole), `heads_W`/`heads_b` (one per output unit, when split) and
    `trained` (the grown network's trained pieces).
    """
    if strategy.trains == "all":
        return net.variables
    if strategy.trains == "last_layer":
        return [net.Ws[-1], net.bs[-1]]
    if strategy.trains == "grown":
        return net.trained
    return [net.heads_W[k] for k in train] + [net.heads_b[k] for k in train]


def loss(ops, strategy, out, y, mask, penalty=None, kind="mse", train=None):
    """Return the strategy's scalar loss at outputs `out` (output_gradient has none: None).

    mask: the 0/1 row of the trained outputs; penalty: distill's term (distill_penalty);
    kind: "mse", or "cross_entropy" whose masked loss takes the softmax over the `train` columns
    only (the kept outputs get no gradient, as mask * (out - y) gives them none).
    compensated_gradient's is the masked loss: its gradient with respect to `out` is the G that
    algorithms.compensated turns into G'.
    """
    if strategy.loss == "output_gradient":
        return None
    if kind == "mse":
        error = out - y if strategy.loss == "full" else mask * (out - y)
        value = ops.reduce_mean(ops.square(error))
    else:
        value = cross_entropy(ops, out, y, None if strategy.loss == "full" else train)
    return value + penalty if strategy.loss in ("distill", "ewc") else value


def full_loss(ops, out, y, kind="mse"):
    """Return the loss of every output against y: a memory's loss (gem's and ewc's)."""
    if kind == "mse":
        return ops.reduce_mean(ops.square(out - y))
    return cross_entropy(ops, out, y)


def cross_entropy(ops, out, y, columns=None):
    """Return the mean over samples of -sum_j y_j log softmax(out)_j, the rows of y as target
    distributions; columns: the softmax over those output columns only."""
    if columns is not None:
        out, y = ops.gather(out, columns, 1), ops.gather(y, columns, 1)
    log_p = out - ops.logsumexp(out, 1)
    return -ops.reduce_mean(ops.reduce_sum(y * log_p, 1))


def loss_gradient(ops, strategy, out, y, mask, kind="mse", train=None):
    """Return the gradient of loss() with respect to `out`, in closed form.

    mse: 2 e / out's size, e = mask * (out - y) (mask is 0/1, so mask * e = e; out - y for the
    full loss). cross_entropy: (s p - y) / n on the softmax's columns, p the softmax there and s
    the row sums of y there; 0 elsewhere.
    compensated_gradient's G, without a backward pass through the loss (tests check it against
    each framework's own differentiation of loss()).
    """
    if strategy.loss not in ("full", "masked", "compensated_gradient"):
        raise ValueError(f"loss_gradient: no closed form for {strategy.name!r}'s loss")
    n = int(out.shape[0])
    if kind == "mse":
        error = out - y if strategy.loss == "full" else mask * (out - y)
        return error * (2.0 / (n * int(out.shape[1])))
    columns = None if strategy.loss == "full" else list(train)
    z, t = (out, y) if columns is None else (ops.gather(out, columns, 1), ops.gather(y, columns, 1))
    p = ops.exp(z - ops.logsumexp(z, 1))
    G = (p * ops.reshape(ops.reduce_sum(t, 1), (-1, 1)) - t) / float(n)
    if columns is None:
        return G
    spread = np.zeros((len(columns), int(out.shape[1])))  # each column back to its output
    spread[np.arange(len(columns)), columns] = 1.0
    return ops.matmul(G, ops.const(spread, G))


def differentiate(t, strategy, hs, out, inputs):
    """Return (ys, grad_ys): what the step back-propagates. Both frameworks take the same triple
    (torch.autograd.grad(ys, xs, grad_outputs), tf.gradients(ys, xs, grad_ys)); grad_ys None:
    ys is the strategy's scalar loss.

    hs, out: the forward pass on inputs.x; t: the trainer (its ops, config, layers, forward).
    """
    ops, config = t.ops, t.config
    n_out = int(out.shape[1])
    if strategy.loss == "output_gradient":  # the question's G, averaged over the batch
        return [out], [ops.const(output_gradient(config.step_rows, n_out, config.train), out)]
    mask = ops.const(output_mask(n_out, config.train), out)
    if strategy.loss == "compensated_gradient":
        return compensated_targets(t, strategy, hs, out, inputs, mask)
    penalty = None
    if strategy.loss == "distill":
        Ws, bs = t.layers()
        penalty = subspace.distill_penalty(ops, Ws, bs, inputs.distilled, config.keep,
                                           inputs.start["distill_target"],
                                           inputs.options["distill_weight"], config.activation)
    if strategy.loss == "ewc":
        penalty = memory.ewc_penalty(ops, *t.layers(), inputs.start["fisher"],
                                     inputs.start["anchored"], inputs.options["ewc_strength"])
    return [loss(ops, strategy, out, inputs.y, mask, penalty, config.loss, config.train)], None


def compensated_targets(t, strategy, hs, out, inputs, mask):
    """Back-propagate G' in place of the masked loss's G; with reference inputs, their outputs
    join the backward pass with -alpha on the kept outputs (algorithms.compensated)."""
    ops, config = t.ops, t.config
    x_ref = inputs.reference
    hs_ref, out_ref = (None, None) if x_ref is None else t.forward(x_ref)
    with t.no_grad():
        G = loss_gradient(ops, strategy, out, inputs.y, mask, config.loss, config.train)
        first = inputs.cached("first_inputs",
                              lambda: compensated.first_inputs(ops, inputs.x, x_ref))
        G_prime = compensated.compensated_gradient(ops, t.layers()[0], hs, G, config.keep,
                                                   hs_ref, first, config.activation)
    return ([out], [G_prime]) if out_ref is None else ([out, out_ref], [G, G_prime])


def take_step(t, strategy, inputs):
    """Take one step of `strategy` over trainer t; return (what t.assign or t.apply returned, the
    final Gauss-Newton residual of a corrected step or None).

    The sequence: forward pass, one autodiff call, then with no correction the optimizer;
    else snapshot, optimizer, the correction of the step it took (after_step), write back.
    """
    variables = var_list(strategy, t.net, t.config.train)
    hs, out = t.forward(inputs.x, variables)
    ys, grad_ys = differentiate(t, strategy, hs, out, inputs)
    grads = t.gradients(ys, variables, grad_ys)
    if strategy.gradient == "gem_qp" and inputs.reference is not None:
        config = t.config
        grads = memory.gem_gradients(
            t, grads, variables, inputs, lambda o, y: full_loss(t.ops, o, y, config.loss),
            config.gem_margin)
    if strategy.after == "none":
        return t.apply(grads, variables), None
    with t.no_grad():
        old = t.snapshot(variables, after=grads)
        new = t.apply(grads, variables, after=old)
        Ws, bs, residual = after_step(t.ops, strategy, t.config, inputs, hs, out,
                                      (old[0::2], old[1::2]), (new[0::2], new[1::2]))
        return t.assign(variables, [v for pair in zip(Ws, bs) for v in pair]), residual


def start_values(strategy, config, hs, out, gradients=None, params=None) -> dict:
    """What a strategy takes from its start (numpy), from the forward pass on the protected inputs.

    layer_subspace: per layer, the (U_W, u_b) basis of its inputs holding `energy`;
    distill: the kept outputs there, (K, n), the distillation target;
    ewc: per layer (W, b) pairs of the earlier tasks' summed Fisher ("fisher") and Fisher-weighted
    anchors ("anchored"), the memory's own added from its mean-loss `gradients` at `params`.
    """
    values = {}
    if strategy.subspace:
        values["bases"] = subspace.bases(hs, config.energy)
    if strategy.loss == "distill":
        values["distill_target"] = out[:, list(config.keep)].T.copy()
    if strategy.loss == "ewc":
        terms = memory.fisher_start(gradients, params, config.carry)
        L = len(params) // 2
        for name, by_param in terms.items():
            values[name] = [(by_param[f"W{l}"], by_param[f"b{l}"]) for l in range(1, L + 1)]
    return values


def carried(strategy, values) -> dict | None:
    """Return what a strategy hands to the next run (RunResult.carry) from its start values."""
    if not strategy.carries:
        return None
    return {name: {f"{p}{l}": a for l, pair in enumerate(values[name], start=1)
                   for p, a in zip("Wb", pair)} for name in strategy.carries}


HELD = ("bases", "fisher", "anchored")  # start values held across steps, per layer (W, b) pairs


def start_names(strategies) -> set:
    """Return the start values any of these strategies takes (what a graph must hold)."""
    names = set()
    for s in strategies:
        names |= {"bases"} if s.subspace else set()
        names |= {"distill_target"} if s.loss == "distill" else set()
        names |= {"fisher", "anchored"} if s.loss == "ewc" else set()
    return names


def rebases(strategy, config) -> bool:
    """Say whether a strategy takes its start values afresh at every step, on the step's
    mini-batch: layer_subspace with mini-batches and no reference protects each step's rows.

    (distill keeps its start values, taken on all of data.x, and holds each step's rows to them;
    null_space* project on the step's batch anyway.)
    """
    return strategy.subspace and config.batch_size is not None and config.reference is None


def step_start(values, config, rows) -> dict:
    """Return the start values a step uses: distill's target on the step's rows when it trains
    on a mini-batch of data.x without a reference (else on every protected input)."""
    if "distill_target" not in values or rows is None or config.reference is not None:
        return values
    return {**values, "distill_target": values["distill_target"][:, rows]}


def protected_form(config):
    """Return the form (protected.form_for) in which a projection factors its protected inputs
    once per step: the reference set's, or with mini-batches and no reference each step's
    mini-batch's (the factored path, 3-10x faster than an eigenvalue solve per Gram). None: the
    fixed batch, projected by nullspace.py."""
    rows = len(config.reference) if config.reference is not None else config.batch_size
    if rows is None:
        return None
    return protected.form_for(layer_sizes(config.params), len(config.keep), rows)


def keep_columns(n_out, keep):
    """Return the (1, n_out) 0/1 row of the kept outputs (layer_subspace's last-layer mask)."""
    return output_mask(n_out, keep).reshape(1, -1)


def after_step(ops, strategy, config, inputs, hs, out, old, new):
    """Return (Ws, bs, residual) replacing the optimizer's step old -> new, each (Ws, bs).

    hs, out: the gradient's forward pass on inputs.x (before the step); residual: the final
    Gauss-Newton residual of a corrected step, else None.
    """
    (old_Ws, old_bs), (new_Ws, new_bs) = old, new
    dWs = [n - o for n, o in zip(new_Ws, old_Ws)]
    dbs = [n - o for n, o in zip(new_bs, old_bs)]
    keep, activation = config.keep, config.activation
    if strategy.subspace:  # the optimizer's step less its part along protected directions
        keep_mask = ops.const(keep_columns(out.shape[1], keep), out)
        cWs, cbs = subspace.correction(ops, inputs.start["bases"], dWs, dbs, keep_mask)
        return ([n - c for n, c in zip(new_Ws, cWs)], [n - c for n, c in zip(new_bs, cbs)],
                None)
    tol = RESTORE_TOL[config.dtype]
    if inputs.protected is not None:
        return protected.protected_step(
            ops, old_Ws, old_bs, inputs.protected, keep, dWs, dbs, form=protected_form(config),
            sweeps=PROJECTION_SWEEPS, corrected=strategy.corrected, tol=tol,
            max_steps=GAUSS_NEWTON_MAX_STEPS, activation=activation)
    x = inputs.x
    pWs, pbs = nullspace.project(ops, old_Ws, old_bs, x, keep, dWs, dbs, hs, activation)
    Ws = [o + d for o, d in zip(old_Ws, pWs)]
    bs = [o + d for o, d in zip(old_bs, pbs)]
    if not strategy.corrected:
        return Ws, bs, None
    seed = nullspace.kept_seed(ops, keep, x.shape[0], out.shape[1], x)
    target = ops.einsum("kbj,bj->kb", seed, out)  # the kept outputs before the step
    return nullspace.restore(ops, Ws, bs, x, keep, target, tol, GAUSS_NEWTON_MAX_STEPS,
                             activation)


def project_step(ops, Ws, bs, x, keep, dWs, dbs):
    """Project a step onto the null space of the kept outputs' Jacobian (layer-wise Gram form)."""
    return nullspace.project(ops, Ws, bs, x, keep, dWs, dbs)
