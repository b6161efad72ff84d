"""algorithms.compensated over torch's ops in float64, against a dense Jacobian (autograd's): one
backward pass of G' is the gradient projected onto the kept outputs' null space."""
import numpy as np
import pytest
import torch

import selective_update as su
from selective_update.algorithms import compensated, nullspace
from selective_update.torch import ops
from small_nets import inputs, kept_jacobian, net, plain_forward

DATA = su.make_toy_data()  # the seed's 8 inputs
PARAMS = su.init_params()


def output_jacobian(Ws, bs, x):
    """Return d out / d params as numpy (n, n_out, P), columns as small_nets.flat."""
    n_out = Ws[-1].shape[1]
    J = kept_jacobian(Ws, bs, x, tuple(range(n_out)))  # rows (j, b)
    return J.reshape(n_out, x.shape[0], -1).transpose(1, 0, 2)


def random_G(n, n_out, columns, seed=0):
    G = np.zeros((n, n_out))
    G[:, columns] = np.random.default_rng(seed).normal(size=(n, len(columns)))
    return torch.as_tensor(G)


@pytest.mark.parametrize("sizes,keep,G_columns", [
    ((3, 4, 2), (0,), [1]), ((3, 5, 4, 3), (0, 2), [1]),
    ((3, 5, 4, 3), (1,), [0, 1, 2]),  # G on the kept output too: alpha compensates it as well
])
def test_back_propagated_G_prime_is_the_projected_gradient(sizes, keep, G_columns):
    Ws, bs = net(sizes, seed=3)
    x = torch.as_tensor(DATA.x)
    G = random_G(len(x), sizes[-1], G_columns)
    hs, _ = nullspace.forward(ops, Ws, bs, x)
    G_prime, alpha = compensated.compensate(ops, Ws, hs, G, keep)
    J = output_jacobian(Ws, bs, x)
    J_keep = kept_jacobian(Ws, bs, x, keep)
    g = np.einsum("bj,bjp->p", G.numpy(), J)
    g_prime = np.einsum("bj,bjp->p", G_prime.numpy(), J)  # one backward pass of G'
    projected = g - np.linalg.pinv(J_keep) @ (J_keep @ g)
    before = np.abs(J_keep @ g).max()
    assert before > 1e-2  # G itself moves the kept outputs
    assert np.abs(J_keep @ g_prime).max() < 1e-12 * max(1.0, before)
    np.testing.assert_allclose(g_prime, projected, rtol=0, atol=1e-10)
    assert alpha.shape == (len(keep), len(x))
    # G' differs from G on the kept columns only, by -alpha
    other = [j for j in range(sizes[-1]) if j not in keep]
    np.testing.assert_array_equal(G_prime.numpy()[:, other], G.numpy()[:, other])
    np.testing.assert_allclose(G_prime.numpy()[:, list(keep)], G.numpy()[:, list(keep)]
                               - alpha.numpy().T, rtol=0, atol=1e-15 * alpha.abs().max().item())


def test_protected_inputs_join_the_backward_pass_with_minus_alpha():
    """With protected inputs x_p: back-propagating G on the batch and G'_p on x_p leaves the kept
    outputs on x_p unchanged to first order; it is then the gradient projected off J_p."""
    sizes, keep = (3, 5, 4, 3), (0, 2)
    Ws, bs = net(sizes, seed=3)
    x, x_p = torch.as_tensor(DATA.x), inputs(4, 3, seed=11)
    G = random_G(len(x), sizes[-1], [1], seed=1)
    hs, _ = nullspace.forward(ops, Ws, bs, x)
    hs_p, _ = nullspace.forward(ops, Ws, bs, x_p)
    G_p, alpha = compensated.compensate(ops, Ws, hs, G, keep, hs_protected=hs_p)
    assert G_p.shape == (4, sizes[-1]) and alpha.shape == (len(keep), 4)
    assert not G_p.numpy()[:, 1].any()
    g = np.einsum("bj,bjp->p", G.numpy(), output_jacobian(Ws, bs, x))
    g_prime = g + np.einsum("bj,bjp->p", G_p.numpy(), output_jacobian(Ws, bs, x_p))
    J_p = kept_jacobian(Ws, bs, x_p, keep)
    assert np.abs(J_p @ g).max() > 1e-2
    assert np.abs(J_p @ g_prime).max() < 1e-10
    np.testing.assert_allclose(g_prime, g - np.linalg.pinv(J_p) @ (J_p @ g), rtol=0, atol=1e-9)
    # the first layer's products, kept by the caller, give the same answer
    kept = compensated.first_inputs(ops, x, x_p)
    again = compensated.compensated_gradient(ops, Ws, hs, G, keep, hs_p, kept)
    np.testing.assert_allclose(again.numpy(), G_p.numpy(), rtol=0, atol=1e-12)


def test_first_inputs_are_the_first_layers_products():
    x, x_p = DATA.x, DATA.x_eval[:3]
    np.testing.assert_allclose(compensated.first_inputs(ops, torch.as_tensor(x)).numpy(),
                               x @ x.T + 1, rtol=1e-15)
    kk, cross = compensated.first_inputs(ops, torch.as_tensor(x), torch.as_tensor(x_p))
    np.testing.assert_allclose(kk.numpy(), x_p @ x_p.T + 1, rtol=1e-15)
    np.testing.assert_allclose(cross.numpy(), x_p @ x.T + 1, rtol=1e-15)
    Ws, bs = net((3, 4, 2))
    hs, _ = nullspace.forward(ops, Ws, bs, torch.as_tensor(x))
    G = random_G(len(x), 2, [1])
    with_kept = compensated.compensated_gradient(
        ops, Ws, hs, G, (0,), inputs=compensated.first_inputs(ops, torch.as_tensor(x)))
    np.testing.assert_allclose(with_kept.numpy(),
                               compensated.compensated_gradient(ops, Ws, hs, G, (0,)).numpy(),
                               rtol=0, atol=1e-12)


def test_sgd_step_with_G_prime_holds_the_kept_outputs_to_first_order():
    """Halving the step quarters the kept drift (second order); with G itself it halves."""
    Ws, bs = net((3, 5, 4, 3), seed=3)
    x = torch.as_tensor(DATA.x)
    G = random_G(len(x), 3, [1], seed=2)
    hs, out = nullspace.forward(ops, Ws, bs, x)

    def drift(seed_G, lr):
        params = [p.clone().requires_grad_() for p in Ws + bs]
        grads = torch.autograd.grad(plain_forward(params[:3], params[3:], x), params, seed_G)
        moved = [p - lr * g for p, g in zip(params, grads)]
        return (plain_forward(moved[:3], moved[3:], x) - out)[:, [0, 2]].abs().max().item()

    G_prime = compensated.compensated_gradient(ops, Ws, hs, G, (0, 2))
    ratio = drift(G_prime, 1e-2) / drift(G_prime, 5e-3)
    plain = drift(G, 1e-2) / drift(G, 5e-3)
    assert 3.5 < ratio < 4.5 and 1.5 < plain < 2.5, (ratio, plain)


def test_refinements_remove_what_the_jitter_left(monkeypatch):
    """The toy batch's Gram (cond 2.4e11): the jittered Cholesky alone leaves a first-order leak
    |J_k g'| of 5e-9 (measured); two refinements bring it to rounding (3e-12)."""
    x = torch.tensor(DATA.x)
    Ws, bs = ([torch.tensor(PARAMS[f"{p}{l}"]) for l in (1, 2)] for p in "Wb")
    hs, out = nullspace.forward(ops, Ws, bs, x)
    G = torch.tensor(np.random.default_rng(0).normal(size=(8, 2)) * [0, 1])
    seed = nullspace.kept_seed(ops, (0,), 8, 2, x)
    deltas = nullspace.kept_deltas(ops, Ws, hs, seed)
    carried = nullspace.kept_deltas(ops, Ws, hs, G.reshape(1, 8, 2))

    def leak(refinements):
        monkeypatch.setattr(compensated, "COMPENSATION_REFINEMENTS", refinements)
        G_prime = compensated.compensated_gradient(ops, Ws, hs, G, (0,))
        # J_k J^T G' through the Gram form: K_kG' summed over the batch
        deltas_G = nullspace.kept_deltas(ops, Ws, hs, G_prime.reshape(1, 8, 2))
        return float(nullspace.gram(ops, hs, deltas, against=deltas_G).sum(1).abs().max())

    assert float(nullspace.gram(ops, hs, deltas, against=carried).sum(1).abs().max()) > 1e-4
    assert leak(0) > 1e-9 and leak(2) < 1e-11
