"""algorithms.nullspace over torch's ops in float64, against a dense Jacobian (autograd's, over a
plain forward pass) and numpy's pseudo-inverse."""
import numpy as np
import pytest
import torch

from selective_update.algorithms import nullspace
from selective_update.core import nets
from selective_update.torch import ops
from small_nets import (flat, inputs, kept_jacobian, net, null_projection, plain_forward,
                        step_like, unflat)

# (layer widths, kept outputs, inputs): constraints K * n below the parameter count P
CASES = [((3, 4, 2), (0,), 6), ((3, 5, 4, 3), (0, 2), 5)]


def problem(sizes, keep, n, seed=0):
    Ws, bs = net(sizes, seed=seed)
    x = inputs(n, sizes[0], seed=seed + 10)
    hs, out = nullspace.forward(ops, Ws, bs, x)
    seed_ = nullspace.kept_seed(ops, keep, n, sizes[-1], x)
    return Ws, bs, x, hs, out, nullspace.kept_deltas(ops, Ws, hs, seed_)


@pytest.mark.parametrize("sizes,keep,n", CASES)
def test_forward_is_the_numpy_twins(sizes, keep, n):
    Ws, bs, x, hs, out, _ = problem(sizes, keep, n)
    params = {f"{p}{l}": t.numpy() for l, (W, b) in enumerate(zip(Ws, bs), 1)
              for p, t in (("W", W), ("b", b))}
    np_hs, np_out = nets.forward(params, x.numpy())
    np.testing.assert_allclose(out.numpy(), np_out, rtol=0, atol=1e-13)
    assert len(hs) == len(np_hs) == len(sizes) - 1
    for h, np_h in zip(hs, np_hs):
        np.testing.assert_allclose(h.numpy(), np_h, rtol=0, atol=1e-14)


@pytest.mark.parametrize("sizes,keep,n", CASES)
def test_kept_outputs_and_seed_pick_the_kept_columns(sizes, keep, n):
    Ws, bs, x, _, out, _ = problem(sizes, keep, n)
    seed = nullspace.kept_seed(ops, keep, n, sizes[-1], x)
    assert seed.shape == (len(keep), n, sizes[-1]) and seed.dtype == torch.float64
    assert float(seed.sum()) == len(keep) * n
    np.testing.assert_array_equal(nullspace.kept_outputs(ops, Ws, bs, x, keep).numpy(),
                                  out.numpy()[:, list(keep)].T)


def test_input_products():
    h, g = np.random.default_rng(0).random((4, 3)), np.random.default_rng(1).random((5, 3))
    got = nullspace.input_products(ops, torch.as_tensor(h), torch.as_tensor(g)).numpy()
    np.testing.assert_allclose(got, h @ g.T + 1.0, rtol=1e-15)


@pytest.mark.parametrize("sizes,keep,n", CASES)
def test_gram_is_J_J_transpose_of_the_explicit_jacobian(sizes, keep, n):
    Ws, bs, x, hs, _, deltas = problem(sizes, keep, n)
    J = kept_jacobian(Ws, bs, x, keep)
    gram = nullspace.gram(ops, hs, deltas).numpy()
    np.testing.assert_allclose(gram, J @ J.T, rtol=1e-12, atol=1e-12 * np.abs(J @ J.T).max())
    first = nullspace.input_products(ops, x, x)  # a caller's kept first layer: the same Gram
    np.testing.assert_allclose(nullspace.gram(ops, hs, deltas, first_inputs=first).numpy(), gram,
                               rtol=0, atol=1e-14 * np.abs(gram).max())


@pytest.mark.parametrize("sizes,keep,n", CASES)
def test_gram_against_other_inputs_is_the_cross_product(sizes, keep, n):
    """gram(hs_p, D_p, against=D_x, hs_against=hs_x) = J_p J_x^T, other inputs and outputs."""
    Ws, bs, x, hs, _, deltas = problem(sizes, keep, n)
    other = (sizes[-1] - 1,)
    x_p = inputs(3, sizes[0], seed=7)
    hs_p, _ = nullspace.forward(ops, Ws, bs, x_p)
    deltas_p = nullspace.kept_deltas(ops, Ws, hs_p, nullspace.kept_seed(ops, keep, 3, sizes[-1],
                                                                        x_p))
    against = nullspace.kept_deltas(ops, Ws, hs, nullspace.kept_seed(ops, other, n, sizes[-1], x))
    cross = nullspace.gram(ops, hs_p, deltas_p, against=against, hs_against=hs).numpy()
    expected = kept_jacobian(Ws, bs, x_p, keep) @ kept_jacobian(Ws, bs, x, other).T
    assert cross.shape == (len(keep) * 3, n)
    np.testing.assert_allclose(cross, expected, rtol=0, atol=1e-12 * np.abs(expected).max())


@pytest.mark.parametrize("sizes,keep,n", CASES)
def test_jvp_and_vjp_are_J_and_J_transpose(sizes, keep, n):
    Ws, bs, x, hs, _, deltas = problem(sizes, keep, n)
    J = kept_jacobian(Ws, bs, x, keep)
    dWs, dbs = step_like(Ws, bs)
    jv = nullspace.jvp(ops, hs, deltas, dWs, dbs).numpy()
    np.testing.assert_allclose(jv.ravel(), J @ flat(dWs, dbs), rtol=0, atol=1e-13)
    alpha = np.random.default_rng(2).normal(size=(len(keep), n))
    vWs, vbs = nullspace.vjp(ops, hs, deltas, torch.as_tensor(alpha))
    np.testing.assert_allclose(flat(vWs, vbs), J.T @ alpha.ravel(), rtol=0, atol=1e-13)


@pytest.mark.parametrize("sizes,keep,n", CASES)
def test_project_removes_the_kept_change_and_is_idempotent(sizes, keep, n):
    Ws, bs, x, hs, _, _ = problem(sizes, keep, n)
    J = kept_jacobian(Ws, bs, x, keep)
    dWs, dbs = step_like(Ws, bs)
    pWs, pbs = nullspace.project(ops, Ws, bs, x, keep, dWs, dbs)
    p = flat(pWs, pbs)
    assert np.abs(J @ flat(dWs, dbs)).max() > 1e-2  # the step itself moves the kept outputs
    assert np.abs(J @ p).max() < 1e-12
    np.testing.assert_allclose(p, null_projection(J, flat(dWs, dbs)), rtol=0, atol=1e-10)
    again = flat(*nullspace.project(ops, Ws, bs, x, keep, pWs, pbs))
    np.testing.assert_allclose(again, p, rtol=0, atol=1e-12)
    # the forward pass handed in (the gradient's) gives the same projection
    with_hs = flat(*nullspace.project(ops, Ws, bs, x, keep, dWs, dbs, hs=hs))
    np.testing.assert_allclose(with_hs, p, rtol=0, atol=1e-14)


@pytest.mark.parametrize("sizes,keep,n", CASES)
def test_correction_is_the_least_norm_step_with_the_same_kept_change(sizes, keep, n):
    Ws, bs, x, _, _, _ = problem(sizes, keep, n)
    J = kept_jacobian(Ws, bs, x, keep)
    dWs, dbs = step_like(Ws, bs, seed=3)
    c = flat(*nullspace.correction(ops, Ws, bs, x, keep, dWs, dbs))
    np.testing.assert_allclose(J @ c, J @ flat(dWs, dbs), rtol=0, atol=1e-11)
    np.testing.assert_allclose(c, np.linalg.pinv(J) @ (J @ flat(dWs, dbs)), rtol=0, atol=1e-10)


@pytest.mark.parametrize("sizes,keep,n", CASES)
def test_gauss_newton_step_is_minus_J_pinv_residual(sizes, keep, n):
    Ws, bs, x, _, out, _ = problem(sizes, keep, n)
    target = torch.as_tensor(out.numpy()[:, list(keep)].T + 0.01)
    J = kept_jacobian(Ws, bs, x, keep)
    residual = out.numpy()[:, list(keep)].T - target.numpy()
    new_Ws, new_bs = nullspace.gauss_newton(ops, Ws, bs, x, keep, target)
    np.testing.assert_allclose(flat(new_Ws, new_bs) - flat(Ws, bs),
                               -np.linalg.pinv(J) @ residual.ravel(), rtol=0, atol=1e-10)


@pytest.mark.parametrize("sizes,keep,n", CASES)
def test_restore_brings_the_kept_outputs_back(sizes, keep, n):
    Ws, bs, x, _, out, _ = problem(sizes, keep, n)
    target = out[:, list(keep)].T.clone()
    dWs, dbs = step_like(Ws, bs, seed=4, scale=0.05)
    moved_Ws, moved_bs = [W + d for W, d in zip(Ws, dWs)], [b + d for b, d in zip(bs, dbs)]
    before = float((nullspace.kept_outputs(ops, moved_Ws, moved_bs, x, keep) - target).abs().max())
    assert before > 1e-3
    new_Ws, new_bs, err = nullspace.restore(ops, moved_Ws, moved_bs, x, keep, target, 1e-13, 12)
    after = (plain_forward(new_Ws, new_bs, x)[:, list(keep)].T - target).abs().max().item()
    assert float(err) <= 1e-13 and after < 1e-12
    np.testing.assert_allclose(float(err), after, rtol=0, atol=1e-14)
    # no step allowed: the layers and the measured error come back as they were
    same_Ws, same_bs, err0 = nullspace.restore(ops, moved_Ws, moved_bs, x, keep, target, 1e-13, 0)
    np.testing.assert_array_equal(flat(same_Ws, same_bs), flat(moved_Ws, moved_bs))
    np.testing.assert_allclose(float(err0), before, rtol=1e-15)


def test_unflat_round_trip():
    Ws, bs = net((3, 5, 4, 3))
    v = flat(Ws, bs)
    np.testing.assert_array_equal(flat(*unflat(v, Ws, bs)), v)
