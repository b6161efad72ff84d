"""algorithms.protected over torch's ops in float64: the three forms against a dense Jacobian
(autograd's) and numpy's pseudo-inverse, and against one another."""
import numpy as np
import pytest
import torch

import selective_update as su
from selective_update.algorithms import nullspace, protected
from selective_update.core.nets import n_params
from selective_update.settings import CHOLESKY_JITTER
from selective_update.torch import ops
from small_nets import flat, inputs, kept_jacobian, net, null_projection, plain_forward, step_like

FORMS = ("jacobian", "gram", "params")
# (layer widths, kept outputs, protected inputs): fewer constraints than parameters (10 < 59, the
# gram form's domain; cond(J) 1e3), and more (32 > 24, the params form's; J has rank 20, its free
# directions the trained head's, cond 7e4). The jacobian form serves both.
WIDE = ((3, 5, 4, 3), (0, 2), 5)
TALL = ((3, 3, 3), (0, 2), 16)
DOMAINS = [(*WIDE, form) for form in ("jacobian", "gram")] + [(*TALL, form) for form in FORMS]


def problem(sizes, keep, n, seed=0):
    Ws, bs = net(sizes, seed=seed)
    x = inputs(n, sizes[0], seed=seed + 10)
    return Ws, bs, x, kept_jacobian(Ws, bs, x, keep)


@pytest.mark.parametrize("sizes,n_keep,n_ref", [((3, 4, 2), 1, 8), ((64, 16, 10), 9, 32),
                                                ((64, 16, 10), 9, 200), ((3, 6, 5, 3), 2, 16),
                                                ((3, 4, 2), 2, 13)])  # m = P = 26: gram
def test_form_for_picks_each_form_by_the_shapes(sizes, n_keep, n_ref, monkeypatch):
    P, m = n_params(su.init_params(sizes)), n_keep * n_ref
    expected = ("jacobian" if m * P <= protected.DENSE_JACOBIAN_MAX
                else "gram" if m <= P else "params")
    assert protected.form_for(sizes, n_keep, n_ref) == expected
    # with the dense limit just below m * P, the smaller Gram: m x m or P x P
    monkeypatch.setattr(protected, "DENSE_JACOBIAN_MAX", m * P - 1)
    assert protected.form_for(sizes, n_keep, n_ref) == ("gram" if m <= P else "params")
    monkeypatch.setattr(protected, "DENSE_JACOBIAN_MAX", m * P)
    assert protected.form_for(sizes, n_keep, n_ref) == "jacobian"


def test_form_for_covers_all_three_at_the_settings_limit():
    assert {protected.form_for((64, 16, 10), 9, n) for n in (2, 32, 200)} == set(FORMS)


@pytest.mark.parametrize("sizes,keep,n", [WIDE, TALL])
def test_jacobian_and_param_gram_are_the_explicit_ones(sizes, keep, n):
    Ws, bs, x, J = problem(sizes, keep, n)
    F = protected.factor(ops, Ws, bs, x, keep, "jacobian")
    np.testing.assert_allclose(protected.jacobian(ops, F.hs, F.deltas).numpy(), J, rtol=0,
                               atol=1e-13)
    np.testing.assert_allclose(protected.param_gram(ops, F.hs, F.deltas).numpy(), J.T @ J,
                               rtol=0, atol=1e-12 * np.abs(J.T @ J).max())


def test_flatten_is_the_jacobians_column_order_and_unflatten_undoes_it():
    sizes, keep, n = WIDE
    Ws, bs, x, J = problem(sizes, keep, n)
    dWs, dbs = step_like(Ws, bs)
    column = protected.flatten(ops, dWs, dbs)
    assert column.shape == (J.shape[1], 1)
    np.testing.assert_array_equal(column.numpy().ravel(), flat(dWs, dbs))
    F = protected.factor(ops, Ws, bs, x, keep, "gram")
    back = protected.unflatten(ops, column, F)
    np.testing.assert_array_equal(flat(*back), flat(dWs, dbs))


@pytest.mark.parametrize("sizes,keep,n,form", DOMAINS)
def test_least_norm_is_the_pseudo_inverse(sizes, keep, n, form):
    """jacobian: J^+ r to rounding; gram and params: their jitter (CHOLESKY_JITTER * mean
    eigenvalue) shrinks each direction by jitter / (s^2 + jitter), most at the smallest s."""
    Ws, bs, x, J = problem(sizes, keep, n)
    r = J @ np.random.default_rng(3).normal(size=J.shape[1]) * 1e-2  # a change a step can make
    F = protected.factor(ops, Ws, bs, x, keep, form)
    assert F.form == form
    got = flat(*protected.least_norm(ops, F, torch.as_tensor(r.reshape(len(keep), n))))
    expected = np.linalg.pinv(J) @ r
    s2 = np.linalg.svd(J, compute_uv=False) ** 2
    jitter = CHOLESKY_JITTER * s2.sum() / (J.shape[0] if form == "gram" else J.shape[1])
    shrink = 0.0 if form == "jacobian" else jitter / (s2[s2 > 1e-20].min() + jitter)
    error = np.linalg.norm(got - expected)
    assert error <= (2 * shrink + 1e-9) * np.linalg.norm(expected), (error, shrink)


@pytest.mark.parametrize("sizes,keep,n", [WIDE, TALL])
def test_all_three_forms_give_the_same_projection(sizes, keep, n):
    Ws, bs, x, J = problem(sizes, keep, n)
    dWs, dbs = step_like(Ws, bs)
    expected = null_projection(J, flat(dWs, dbs))
    assert np.abs(J @ flat(dWs, dbs)).max() > 1e-2 and np.abs(expected).max() > 1e-2
    for form in FORMS:
        p = flat(*protected.project(ops, protected.factor(ops, Ws, bs, x, keep, form), dWs, dbs,
                                    sweeps=2))
        assert np.abs(J @ p).max() < 1e-10, form
        if (sizes, keep, n, form) in DOMAINS:
            np.testing.assert_allclose(p, expected, rtol=0, atol=1e-7, err_msg=form)
        # else the params form with fewer constraints than parameters (form_for never picks it):
        # J^T J + jitter is singular to 1e-13, so rounding adds null-space directions (4e-4 here)
        # that leave the kept outputs alone; the step still moves none of them.


@pytest.mark.parametrize("sizes,keep,n,form", DOMAINS)
def test_restore_brings_the_protected_outputs_back(sizes, keep, n, form):
    Ws, bs, x, _ = problem(sizes, keep, n)
    target = plain_forward(Ws, bs, x)[:, list(keep)].T
    F = protected.factor(ops, Ws, bs, x, keep, form)  # factored before the step (a chord start)
    dWs, dbs = step_like(Ws, bs, seed=4, scale=0.05)
    moved = [W + d for W, d in zip(Ws, dWs)], [b + d for b, d in zip(bs, dbs)]
    assert (plain_forward(*moved, x)[:, list(keep)].T - target).abs().max() > 1e-3
    for start in (F, None):
        new_Ws, new_bs, err = protected.restore(ops, *moved, x, keep, target, 1e-13, 12, form,
                                                start)
        after = (plain_forward(new_Ws, new_bs, x)[:, list(keep)].T - target).abs().max().item()
        assert float(err) <= 1e-13 and after < 1e-12
        np.testing.assert_allclose(float(err), after, rtol=0, atol=1e-14)


@pytest.mark.parametrize("sizes,keep,n,form", DOMAINS)
def test_protected_step_projects_then_corrects(sizes, keep, n, form):
    Ws, bs, x, J = problem(sizes, keep, n)
    dWs, dbs = step_like(Ws, bs, seed=5, scale=0.05)
    kw = dict(form=form, sweeps=2, tol=1e-13, max_steps=12)
    new_Ws, new_bs, residual = protected.protected_step(ops, Ws, bs, x, keep, dWs, dbs,
                                                        corrected=False, **kw)
    assert residual is None
    np.testing.assert_allclose(flat(new_Ws, new_bs) - flat(Ws, bs),
                               null_projection(J, flat(dWs, dbs)), rtol=0, atol=1e-8)
    before = plain_forward(Ws, bs, x)[:, list(keep)]
    drift = (plain_forward(new_Ws, new_bs, x)[:, list(keep)] - before).abs().max().item()
    assert drift < 1e-2
    if (sizes, keep, n) == WIDE:
        assert drift > 1e-8  # first order only: the projection leaves a second-order drift
    cor_Ws, cor_bs, residual = protected.protected_step(ops, Ws, bs, x, keep, dWs, dbs,
                                                        corrected=True, **kw)
    after = (plain_forward(cor_Ws, cor_bs, x)[:, list(keep)] - before).abs().max().item()
    assert float(residual) <= 1e-13 and after < 1e-12
    # the correction is small next to the projected step
    assert np.abs(flat(cor_Ws, cor_bs) - flat(new_Ws, new_bs)).max() < 0.1 * np.abs(
        flat(new_Ws, new_bs) - flat(Ws, bs)).max()


def test_factor_reuses_a_forward_pass_handed_in():
    sizes, keep, n = WIDE
    Ws, bs, x, _ = problem(sizes, keep, n)
    hs, _ = nullspace.forward(ops, Ws, bs, x)
    a = protected.factor(ops, Ws, bs, x, keep, "gram", hs=hs)
    b = protected.factor(ops, Ws, bs, x, keep, "gram")
    assert a.hs is hs
    for da, db in zip(a.deltas, b.deltas):
        np.testing.assert_array_equal(da.numpy(), db.numpy())
