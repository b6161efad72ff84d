"""compensated_gradient: back-propagate G' = G - alpha on the kept outputs, not G.

Every promise is measured in both frameworks over 4 optimizers x weight decay {0, 0.01} x warm
start {0, 2}, on the toy set-up and on a 3-output net (two hidden layers) that keeps two; then
the SGD step against null_space's, TF1 against PyTorch, and reference inputs.
"""
import itertools
import warnings
from functools import lru_cache

import numpy as np
import pytest

import selective_update as su
from conftest import DATA, PARAMS
from selective_update.algorithms import compensated, nullspace
from selective_update.core import verdicts

STRATEGY = "compensated_gradient"
SET_UP = list(itertools.product(su.OPTIMIZERS, (0.0, 0.01), (0, 2)))
SET_UP_IDS = [f"{o}-wd{w}-warm{k}" for o, w, k in SET_UP]
DATA3 = su.Data(DATA.x, np.c_[DATA.y, DATA.y[:, :1]], DATA.x_eval,
                np.c_[DATA.y_eval, DATA.y_eval[:, :1]])
SETUPS = {
    "toy": dict(params=PARAMS, data=DATA, keep=(0,), train=(1,)),
    # three outputs, two hidden layers, two kept (test_beyond's DEEP): cond(K_kk) 3e9
    "deep": dict(params=su.init_params((3, 6, 5, 3), seed=1, stddev=0.5), data=DATA3,
                 keep=(0, 2), train=(1,)),
    # the same shape with larger weights: a better-conditioned Gram, cond(K_kk) 2e7
    "spread": dict(params=su.init_params((3, 5, 4, 3), seed=3, stddev=1.0), data=DATA3,
                   keep=(0, 2), train=(1,)),
}
REFERENCES = {"toy4": ("toy", DATA.x_eval[:4]), "deep16": ("deep", DATA.x_eval[:16])}


@lru_cache(maxsize=None)
def run(setup, framework, optimizer="sgd", weight_decay=0.0, warm=0, lr=0.1, steps=5,
        warm_start_lr=None, strategy=STRATEGY, ref=None):
    """Run one configuration once per session (ref: a REFERENCES name, protecting its inputs)."""
    if ref is not None:
        setup, x_ref = REFERENCES[ref]
    else:
        x_ref = None
    return su.run(strategy, framework, **SETUPS[setup], optimizer=optimizer, lr=lr, steps=steps,
                  weight_decay=weight_decay, warm_start_steps=warm, warm_start_lr=warm_start_lr,
                  reference=x_ref)


def halving(setup, framework, optimizer, weight_decay, warm, steps=1, strategy=STRATEGY,
            ref=None, where="drift_train"):
    """Return the drift after `steps` steps at lr 0.1 over the one at 0.05 (same warm start)."""
    one, half = (getattr(run(setup, framework, optimizer, weight_decay, warm, lr=lr, steps=steps,
                             warm_start_lr=0.1, strategy=strategy, ref=ref), where)[steps]
                 for lr in (0.1, 0.05))
    return one / half


# --- every promise, measured ----------------------------------------------------------------------

@pytest.mark.parametrize("optimizer,weight_decay,warm", SET_UP, ids=SET_UP_IDS)
@pytest.mark.parametrize("setup", ["toy", "deep"])
@pytest.mark.parametrize("framework", su.FRAMEWORKS)
def test_promise_holds_on_measured_numbers(framework, setup, optimizer, weight_decay, warm):
    r = run(setup, framework, optimizer, weight_decay, warm)
    promised = su.promise(STRATEGY, optimizer, weight_decay=weight_decay, warm_start_steps=warm)
    assert r.promise == promised
    one_step = halving(setup, framework, optimizer, weight_decay, warm)
    if promised == "first_order":  # sgd, or momentum from a fresh state, no decay
        # measured 4.00-4.01: the leak is second order; the issue asks >= 3.5
        assert one_step >= 3.5
        # and it stays second order step after step (the momentum buffer holds compensated
        # gradients only): 5 steps, measured 2.98-3.55
        assert halving(setup, framework, optimizer, weight_decay, warm, steps=5) >= 2.8
        verdict = verdicts.promise_holds(promised, r.drift_train, r.drift_eval,
                                         drift_train_half_lr=r.drift_train[1] / one_step)
        assert verdict.holds and "ratio" in verdict.measured
        if setup == "deep":  # held out, nothing is promised: the leak there is first order
            assert halving(setup, framework, optimizer, weight_decay, warm,
                           where="drift_eval") < 2.8
    else:  # Adam rescales G', decay adds wd * theta, old momentum adds old gradients
        assert promised == "none"
        assert r.drift_train.max() > 1e-6 and one_step < 2.8  # first order: measured 1.7-2.0
    assert r.train_loss[1] < r.train_loss[0]


@pytest.mark.parametrize("setup", ["toy", "deep"])
def test_without_the_compensation_the_leak_is_first_order(setup):
    # the same masked loss, G back-propagated as it is: the kept outputs move to first order
    assert halving(setup, "torch", "sgd", 0.0, 0, strategy="masked_loss") < 2.8
    assert halving(setup, "torch", "sgd", 0.0, 0) >= 3.5


# --- the SGD step is null_space's, and both frameworks agree ------------------------------------

@pytest.mark.parametrize("framework", su.FRAMEWORKS)
@pytest.mark.parametrize("setup,atol", [("deep", 1e-9), ("spread", 1e-9), ("toy", 1e-8)])
def test_sgd_step_equals_null_spaces_over_three_steps(framework, setup, atol):
    """The toy batch's Gram has cond 2.4e11: there each of the two solvers (this Cholesky,
    null_space's eigendecomposition) is up to 2.2e-9 from the exact steps after 3 steps
    (test_toy_steps_are_the_exact_projected_steps), and null_space differs by 2.7e-9 between
    TF1 and PyTorch; the two differ by up to 3.5e-9 here. The better-conditioned nets agree to
    3e-11 and 4e-13."""
    a = run(setup, framework, steps=3)
    b = run(setup, framework, steps=3, strategy="null_space")
    for field in ("outputs", "eval_outputs"):
        np.testing.assert_allclose(getattr(a, field), getattr(b, field), rtol=0, atol=atol)
    if setup != "toy":
        for name in a.params:
            np.testing.assert_allclose(a.params[name], b.params[name], rtol=0, atol=10 * atol)


def exact_projected_sgd(params, data, keep, train, lr, steps, digits=50):
    """Outputs on data.x and data.x_eval after each of `steps` projected SGD steps of a one-hidden-
    layer sigmoid MLP, in mpmath at `digits` digits: the masked loss's gradient g, then
    g - J_kᵀ (J_k J_kᵀ)⁻¹ J_k g with J_k the kept outputs' Jacobian on data.x."""
    mp = pytest.importorskip("mpmath")
    mp.mp.dps = digits
    names = ("W1", "b1", "W2", "b2")
    shapes = [np.atleast_2d(params[k]).shape for k in names]
    flat = [mp.mpf(float(v)) for k in names for v in np.ravel(params[k])]
    n, n_out = data.y.shape

    def unpack(flat):
        out, start = [], 0
        for rows, cols in shapes:
            out.append(mp.matrix([flat[start + r * cols:start + (r + 1) * cols]
                                  for r in range(rows)]))
            start += rows * cols
        return out

    def forward(flat, x):
        W1, b1, W2, b2 = unpack(flat)
        ones = mp.ones(len(x), 1)
        z = mp.matrix(x.tolist()) * W1 + ones * b1
        h = mp.matrix([[1 / (1 + mp.exp(-z[j, c])) for c in range(z.cols)]
                       for j in range(z.rows)])
        return h, h * W2 + ones * b2

    def jacobian(flat, h, o):  # d out[:, o] / d(W1, b1, W2, b2), one row per sample of data.x
        W2 = unpack(flat)[2]
        d_in, width = shapes[0]
        rows = []
        for j in range(n):
            s = [h[j, c] * (1 - h[j, c]) * W2[c, o] for c in range(width)]
            rows.append([data.x[j, i] * s[c] for i in range(d_in) for c in range(width)] + s
                        + [h[j, c] * (p == o) for c in range(width) for p in range(n_out)]
                        + [mp.mpf(p == o) for p in range(n_out)])
        return mp.matrix(rows)

    recorded = []
    for step in range(steps + 1):
        recorded.append([np.array(forward(flat, x)[1].tolist(), dtype=float)
                         for x in (data.x, data.x_eval)])
        if step == steps:
            break
        h, out = forward(flat, data.x)
        g = mp.zeros(len(flat), 1)
        for o in train:
            G = mp.matrix([2 * (out[j, o] - data.y[j, o]) / (n * n_out) for j in range(n)])
            g += jacobian(flat, h, o).T * G
        J = mp.matrix([list(jacobian(flat, h, k).tolist()[j]) for k in keep for j in range(n)])
        g = g - J.T * mp.lu_solve(J * J.T, J * g)
        flat = [v - lr * g[i] for i, v in enumerate(flat)]
    return [np.stack(r) for r in zip(*recorded)]


@pytest.mark.parametrize("framework", su.FRAMEWORKS)
def test_toy_steps_are_the_exact_projected_steps(framework):
    """On the toy batch (cond 2.4e11) three SGD steps of compensated_gradient end within 3e-9 of
    the exact projected steps computed in mpmath (measured 9e-10: the jitter's share refined
    away, COMPENSATION_REFINEMENTS); null_space's eigendecomposition lands 6e-10 to 2.2e-9
    from them."""
    toy = SETUPS["toy"]
    exact = exact_projected_sgd(toy["params"], toy["data"], toy["keep"], toy["train"],
                                lr=0.1, steps=3)
    result = run("toy", framework, steps=3)
    for got, want in zip((result.outputs, result.eval_outputs), exact):
        np.testing.assert_allclose(got, want, rtol=0, atol=3e-9)


@pytest.mark.parametrize("optimizer,weight_decay,warm", SET_UP, ids=SET_UP_IDS)
@pytest.mark.parametrize("setup", ["deep", "spread"])
def test_tf1_and_torch_agree_in_float64(setup, optimizer, weight_decay, warm):
    # sgd and momentum within 1e-9 (measured <= 6e-11 on deep); Adam divides by the square root
    # of tiny second moments in its first steps, measured 3.9e-9
    atol = 1e-9 if optimizer in ("sgd", "momentum") else 1e-7
    a, b = (run(setup, fw, optimizer, weight_decay, warm) for fw in su.FRAMEWORKS)
    for field in ("outputs", "eval_outputs"):
        np.testing.assert_allclose(getattr(a, field), getattr(b, field), rtol=0, atol=atol)


# --- the algorithm in TF1's graph (its unit tests: tests/algorithms/test_compensated.py) -------

def test_tf1_graph_computes_the_same_compensation():
    import torch

    from selective_update.tf1 import ops as tf_ops
    from selective_update.tf1.framework import tf, v1
    from selective_update.tf1.framework import session
    from selective_update.torch import ops as torch_ops

    params = SETUPS["spread"]["params"]
    G = np.random.default_rng(1).normal(size=(len(DATA.x), 3)) * [0, 1, 0]
    Ws, bs = [params[f"W{l}"] for l in (1, 2, 3)], [params[f"b{l}"] for l in (1, 2, 3)]

    def compute(ops, c):
        hs, _ = nullspace.forward(ops, [c(W) for W in Ws], [c(b) for b in bs], c(DATA.x))
        return compensated.compensate(ops, [c(W) for W in Ws], hs, c(G), (0, 2))

    expected = [t.numpy() for t in compute(torch_ops, torch.as_tensor)]
    with tf.Graph().as_default():
        graph_ops = compute(tf_ops, lambda a: v1.placeholder_with_default(a, np.shape(a)))
        with session(tf.compat.v1.get_default_graph()) as sess:
            got = sess.run(graph_ops)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-9 * np.abs(b).max())


# --- reference inputs -----------------------------------------------------------------------------

@pytest.mark.parametrize("ref", sorted(REFERENCES))
@pytest.mark.parametrize("optimizer,weight_decay,warm", [("sgd", 0.0, 0), ("sgd", 0.0, 2),
                                                         ("momentum", 0.0, 0), ("adam", 0.0, 0),
                                                         ("sgd", 0.01, 0)])
def test_reference_inputs_are_protected_to_first_order(ref, optimizer, weight_decay, warm):
    runs = [run(None, fw, optimizer, weight_decay, warm, ref=ref) for fw in su.FRAMEWORKS]
    promised = su.promise(STRATEGY, optimizer, weight_decay=weight_decay,
                          warm_start_steps=warm, reference=True)
    for fw, r in zip(su.FRAMEWORKS, runs):
        assert r.promise == promised and r.restore_residual is None
        ratio = halving(None, fw, optimizer, weight_decay, warm, ref=ref,
                        where="drift_reference")
        if promised == "reference_first_order":
            assert ratio >= 3.5  # measured 4.0
            assert verdicts.promise_holds(
                promised, r.drift_train, r.drift_eval, drift_reference=r.drift_reference,
                drift_reference_half_lr=r.drift_reference[1] / ratio).holds
        else:
            assert promised == "none" and ratio < 2.8
    # measured TF1 vs PyTorch: toy4 <= 5e-15, deep16 <= 2.2e-7 (that reference Gram's
    # eigenvalues reach 5.6e-15 of its largest, below the Cholesky jitter); Adam's first steps
    # divide tiny gradient components by their own size: 1.5e-12 and 5.1e-5
    atol = {"toy4": 1e-12, "deep16": 1e-6}[ref] * (100 if optimizer == "adam" else 1)
    np.testing.assert_allclose(runs[0].reference_outputs, runs[1].reference_outputs, rtol=0,
                               atol=atol)


def test_reference_step_equals_null_spaces_where_the_gram_resolves_it():
    # toy4: 4 constraints, a well-conditioned Gram: the two steps agree to rounding (1.2e-16)
    for fw in su.FRAMEWORKS:
        a = run(None, fw, ref="toy4", steps=3)
        b = run(None, fw, ref="toy4", steps=3, strategy="null_space")
        np.testing.assert_allclose(a.outputs, b.outputs, rtol=0, atol=1e-12)
        np.testing.assert_allclose(a.reference_outputs, b.reference_outputs, rtol=0, atol=1e-12)


@pytest.mark.parametrize("framework", su.FRAMEWORKS)
def test_more_constraints_than_parameters_warn_and_still_run(framework):
    with pytest.warns(su.TrivialNullSpaceWarning, match="null space"):
        r = su.run(STRATEGY, framework, params=PARAMS, data=DATA, steps=2,
                   reference=DATA.x_eval[:64])  # 64 constraints > 26 parameters
    assert np.isfinite(r.outputs).all() and r.drift_reference.max() < 1e-5
    with warnings.catch_warnings():
        warnings.simplefilter("error", su.TrivialNullSpaceWarning)
        su.run(STRATEGY, framework, params=PARAMS, data=DATA, steps=1)  # 8 < 26: no warning


@pytest.mark.parametrize("framework", su.FRAMEWORKS)
def test_same_call_twice_gives_identical_arrays(framework):
    runs = [su.run(STRATEGY, framework, **SETUPS["deep"], optimizer="adam", steps=3,
                   warm_start_steps=2, weight_decay=0.01) for _ in range(2)]
    for field in ("outputs", "eval_outputs", "loss", "train_loss"):
        assert np.array_equal(getattr(runs[0], field), getattr(runs[1], field))
    for name in runs[0].params:
        assert np.array_equal(runs[0].params[name], runs[1].params[name])


@pytest.mark.parametrize("loss", ["full", "masked", "compensated_gradient"])
def test_closed_form_loss_gradient_is_each_frameworks_own(loss):
    """strategy_step.loss_gradient (compensated_gradient's G) against torch.autograd and
    tf.gradients of strategy_step.loss, with a mask that keeps output 0 out of the loss."""
    import torch

    from selective_update.algorithms import strategy_step
    from selective_update.core.strategies import Strategy
    from selective_update.tf1 import ops as tf1_ops
    from selective_update.tf1.framework import tf
    from selective_update.torch import ops as torch_ops

    rng = np.random.default_rng(0)
    out, y, mask = rng.normal(size=(6, 3)), rng.normal(size=(6, 3)), np.array([0.0, 1.0, 1.0])
    s = Strategy(name="probe", summary="", source="", trains="all", loss=loss)
    closed = strategy_step.loss_gradient(torch_ops, s, torch.as_tensor(out), torch.as_tensor(y),
                                         torch.as_tensor(mask)).numpy()
    t_out = torch.as_tensor(out).requires_grad_()
    t_loss = strategy_step.loss(torch_ops, s, t_out, torch.as_tensor(y), torch.as_tensor(mask))
    np.testing.assert_allclose(closed, torch.autograd.grad(t_loss, t_out)[0].numpy(), rtol=1e-14,
                               atol=0)
    graph = tf.Graph()
    with graph.as_default():
        g_out, g_y, g_mask = (tf.constant(a) for a in (out, y, mask))
        by_graph = tf.compat.v1.gradients(strategy_step.loss(tf1_ops, s, g_out, g_y, g_mask),
                                          g_out)[0]
        closed_graph = strategy_step.loss_gradient(tf1_ops, s, g_out, g_y, g_mask)
        with tf.compat.v1.Session(graph=graph) as sess:
            a, b = sess.run([closed_graph, by_graph])
    np.testing.assert_allclose(a, b, rtol=1e-14, atol=0)
    np.testing.assert_allclose(a, closed, rtol=1e-14, atol=0)
    if loss != "full":
        assert not closed[:, 0].any() and closed[:, 1:].all()
