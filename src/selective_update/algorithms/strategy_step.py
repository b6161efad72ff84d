"""A strategy's step, written once: its variables, its loss, its start and what follows the step.

Both runners interpret a core.strategies.Strategy through these functions, over `ops`: torch's
eagerly, once per step; tf1's while it builds the step op of its graph. What stays in each runner
is what the framework itself does: differentiate, feed, and apply its optimizer.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..core.nets import layer_sizes, output_mask
from . import nullspace, protected, subspace


def var_list(strategy, net, train) -> list:
    """Return the variables a strategy gives to the optimizer (its var_list).

    net: a runner's network, with `variables` (every variable, in a fixed order), `Ws`/`bs`
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


def loss(ops, strategy, out, y, mask, penalty=None):
    """Return the strategy's scalar loss at outputs `out` (output_gradient has none: None).

    mask: the 0/1 row of the trained outputs; penalty: distill's term (distill_penalty).
    compensated_gradient's is the masked loss: its gradient with respect to `out` is the G that
    algorithms.compensated turns into G'.
    """
    if strategy.loss == "output_gradient":
        return None
    error = out - y if strategy.loss == "full" else mask * (out - y)
    value = ops.reduce_mean(ops.square(error))
    return value + penalty if strategy.loss == "distill" else value


def loss_gradient(ops, strategy, out, y, mask):
    """Return the gradient of loss() with respect to `out`, in closed form: 2 e / out's size,
    e = mask * (out - y) (mask is 0/1, so mask * e = e; out - y for the full loss).

    compensated_gradient's G, without a backward pass through the loss (tests check it against
    each framework's own differentiation of loss()).
    """
    if strategy.loss not in ("full", "masked", "compensated_gradient"):
        raise ValueError(f"loss_gradient: no closed form for {strategy.name!r}'s loss")
    error = out - y if strategy.loss == "full" else mask * (out - y)
    return error * (2.0 / (int(out.shape[0]) * int(out.shape[1])))


def start_values(strategy, config, hs, out) -> dict:
    """What a strategy takes from its start (numpy), from the forward pass on the protected inputs.

    layer_subspace: per layer, the (U_W, u_b) basis of its inputs holding `energy`;
    distill: the kept outputs there, (K, n), the distillation target.
    """
    values = {}
    if strategy.subspace:
        values["bases"] = subspace.bases(hs, config.energy)
    if strategy.loss == "distill":
        values["distill_target"] = out[:, list(config.keep)].T.copy()
    return values


def rebases(strategy, config) -> bool:
    """Say whether a strategy takes its start values afresh at every step, on the step's
    mini-batch: layer_subspace with mini-batches and no reference protects each step's rows.

    (distill keeps its start values, taken on all of data.x, and holds each step's rows to them;
    null_space* project on the step's batch anyway.)
    """
    return strategy.subspace and config.batch_size is not None and config.reference is None


def protected_form(config):
    """Return the form (protected.form_for) in which a projection factors its protected inputs
    once per step: the reference set's, or with mini-batches and no reference each step's
    mini-batch's (the factored path, 3-10x faster than an eigenvalue solve per Gram). None: the
    fixed batch, projected by nullspace.py as before, bit for bit."""
    rows = len(config.reference) if config.reference is not None else config.batch_size
    if rows is None:
        return None
    return protected.form_for(layer_sizes(config.params), len(config.keep), rows)


def check_full_batch(config, where):
    """Refuse mini-batches where steps are taken one by one without a schedule (the bench)."""
    if config.batch_size is not None:
        raise ValueError(f"batch_size: got {config.batch_size!r}; allowed: None in {where} "
                         "(it times full-batch steps; su.run takes mini-batches)")


@dataclass
class AfterStep:
    """What the step's aftermath needs, in the runner's tensors.

    x: the step's batch (its mini-batch); hs, out: the gradient's forward pass on it (before
    the step);
    x_ref, form: the inputs a projection protects through protected.protected_step and their
    Jacobian's form (protected_form): the reference inputs, or each step's mini-batch; None:
    the fixed batch, through nullspace.py;
    bases, keep_mask: layer_subspace's per-layer bases and the kept columns' (1, n_out) mask.
    """

    keep: tuple
    tol: float
    max_steps: int
    sweeps: int
    x: object = None
    hs: object = None
    out: object = None
    x_ref: object = None
    form: str | None = None
    bases: object = None
    keep_mask: object = None


def keep_columns(n_out, keep):
    """Return the (1, n_out) 0/1 row of the kept outputs (layer_subspace's last-layer mask)."""
    return output_mask(n_out, keep).reshape(1, -1)


def after_step(ops, strategy, ctx, old_Ws, old_bs, new_Ws, new_bs):
    """Return (Ws, bs, residual) replacing the optimizer's step (old -> new) for the strategy.

    residual: the final Gauss-Newton residual of a corrected step, else None.
    """
    dWs = [n - o for n, o in zip(new_Ws, old_Ws)]
    dbs = [n - o for n, o in zip(new_bs, old_bs)]
    if strategy.subspace:  # the optimizer's step less its part along protected directions
        cWs, cbs = subspace.correction(ops, ctx.bases, dWs, dbs, ctx.keep_mask)
        return ([n - c for n, c in zip(new_Ws, cWs)], [n - c for n, c in zip(new_bs, cbs)],
                None)
    if ctx.x_ref is not None:
        return protected.protected_step(
            ops, old_Ws, old_bs, ctx.x_ref, ctx.keep, dWs, dbs, form=ctx.form, sweeps=ctx.sweeps,
            corrected=strategy.corrected, tol=ctx.tol, max_steps=ctx.max_steps)
    pWs, pbs = nullspace.project(ops, old_Ws, old_bs, ctx.x, ctx.keep, dWs, dbs, hs=ctx.hs)
    Ws = [o + d for o, d in zip(old_Ws, pWs)]
    bs = [o + d for o, d in zip(old_bs, pbs)]
    if not strategy.corrected:
        return Ws, bs, None
    seed = nullspace.kept_seed(ops, ctx.keep, ctx.x.shape[0], ctx.out.shape[1], ctx.x)
    target = ops.einsum("kbj,bj->kb", seed, ctx.out)  # the kept outputs before the step
    return nullspace.restore(ops, Ws, bs, ctx.x, ctx.keep, target, ctx.tol, ctx.max_steps)
