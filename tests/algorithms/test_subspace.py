"""algorithms.subspace: layer_subspace's bases (numpy SVD) and step correction (torch's ops in
float64), and distill's penalty, against numpy."""
import numpy as np
import pytest
import torch

from selective_update.algorithms import nullspace, subspace
from selective_update.core import nets
from selective_update.torch import ops
from small_nets import inputs, net, plain_forward, step_like, tensors

SIZES, KEEP = (5, 6, 4, 3), (0, 2)


def test_basis_holds_the_energy():
    h = np.random.default_rng(0).random((32, 5))
    s = np.linalg.svd(np.c_[h, np.ones(32)], compute_uv=False)
    for energy in (0.5, 0.9, 0.999):
        r = subspace.basis(h, energy).shape[1]
        share = (s[:r] ** 2).sum() / (s ** 2).sum()
        assert share >= energy and (s[:r - 1] ** 2).sum() / (s ** 2).sum() < energy
    assert subspace.basis(h, 1.0).shape == (6, 6)
    assert subspace.basis(np.zeros((4, 3)), 1.0).shape == (4, 1)  # only the bias direction


@pytest.mark.parametrize("bias", [True, False])
def test_full_energy_basis_is_an_orthonormal_basis_of_the_row_space(bias):
    rng = np.random.default_rng(1)
    h = rng.random((4, 3)) @ rng.random((3, 7))  # 4 inputs of width 7, rank 3
    H = np.c_[h, np.ones(4)] if bias else h
    U = subspace.basis(h, 1.0, bias=bias)
    assert U.shape == (H.shape[1], np.linalg.matrix_rank(H))
    np.testing.assert_allclose(U.T @ U, np.eye(U.shape[1]), rtol=0, atol=1e-13)
    np.testing.assert_allclose(H @ U @ U.T, H, rtol=0, atol=1e-12)  # it spans every row


def test_bases_split_the_weight_and_bias_rows():
    hs = [np.random.default_rng(2).random((3, 5)), np.random.default_rng(3).random((3, 6))]
    for h, (U_W, u_b) in zip(hs, subspace.bases(hs, 0.9)):
        U = subspace.basis(h, 0.9)
        assert U_W.shape == (h.shape[1], U.shape[1]) and u_b.shape == (1, U.shape[1])
        np.testing.assert_array_equal(np.vstack([U_W, u_b]), U)


def setup(energy, n_protected=3):
    """A net, protected inputs fewer than each layer's width, their bases, and a random step."""
    Ws, bs = net(SIZES, seed=4)
    x_p = inputs(n_protected, SIZES[0], seed=5)
    hs, _ = nullspace.forward(ops, Ws, bs, x_p)
    split = [tuple(tensors(pair)) for pair in subspace.bases([h.numpy() for h in hs], energy)]
    dWs, dbs = step_like(Ws, bs, seed=6)
    mask = torch.as_tensor(nets.output_mask(SIZES[-1], KEEP).reshape(1, -1))
    return Ws, bs, x_p, hs, split, dWs, dbs, mask


def test_correction_is_the_projection_onto_the_bases():
    Ws, bs, _, _, split, dWs, dbs, mask = setup(0.9)
    cWs, cbs = subspace.correction(ops, split, dWs, dbs, mask)
    for l, ((U_W, u_b), dW, db, cW, cb) in enumerate(zip(split, dWs, dbs, cWs, cbs), start=1):
        U = np.vstack([U_W.numpy(), u_b.numpy()])
        expected = U @ U.T @ np.vstack([dW.numpy(), db.numpy()[None]])
        if l == len(Ws):
            expected = expected * mask.numpy()  # the last layer's trained column is free
        np.testing.assert_allclose(np.vstack([cW.numpy(), cb.numpy()[None]]), expected, rtol=0,
                                   atol=1e-14)
    assert not cWs[-1][:, 1].any() and not cbs[-1][1]


def test_correction_is_idempotent():
    Ws, bs, _, _, split, dWs, dbs, mask = setup(0.9)
    cWs, cbs = subspace.correction(ops, split, dWs, dbs, mask)
    again = subspace.correction(ops, split, [d - c for d, c in zip(dWs, cWs)],
                                [d - c for d, c in zip(dbs, cbs)], mask)
    for t in again[0] + again[1]:
        assert t.abs().max() < 1e-15


def test_full_energy_leaves_each_layer_output_on_the_protected_inputs_unchanged():
    Ws, bs, x_p, hs, split, dWs, dbs, mask = setup(1.0)
    cWs, cbs = subspace.correction(ops, split, dWs, dbs, mask)
    new_Ws = [W + d - c for W, d, c in zip(Ws, dWs, cWs)]
    new_bs = [b + d - c for b, d, c in zip(bs, dbs, cbs)]
    for l, h in enumerate(hs):  # each layer at the old layer inputs
        before, after = h @ Ws[l] + bs[l], h @ new_Ws[l] + new_bs[l]
        cols = list(KEEP) if l == len(Ws) - 1 else slice(None)
        assert (after - before)[:, cols].abs().max() < 1e-13
    out, new_out = plain_forward(Ws, bs, x_p), plain_forward(new_Ws, new_bs, x_p)
    assert (new_out - out)[:, list(KEEP)].abs().max() < 1e-13  # and so the kept outputs
    assert (new_out - out)[:, 1].abs().max() > 1e-3  # the trained output moves
    x_other = inputs(4, SIZES[0], seed=9)  # elsewhere the kept outputs are free to move
    moved = plain_forward(new_Ws, new_bs, x_other) - plain_forward(Ws, bs, x_other)
    assert moved[:, list(KEEP)].abs().max() > 1e-3


def test_lower_energy_protects_less():
    drifts = []
    for energy in (1.0, 0.9):
        Ws, bs, x_p, _, split, dWs, dbs, mask = setup(energy)
        cWs, cbs = subspace.correction(ops, split, dWs, dbs, mask)
        new = ([W + d - c for W, d, c in zip(Ws, dWs, cWs)],
               [b + d - c for b, d, c in zip(bs, dbs, cbs)])
        drifts.append((plain_forward(*new, x_p) - plain_forward(Ws, bs, x_p))[:, list(KEEP)]
                      .abs().max().item())
    assert drifts[0] < 1e-13 < 1e-6 < drifts[1]


def test_distill_penalty_is_the_weighted_mean_squared_change():
    Ws, bs = net(SIZES, seed=7)
    x = inputs(6, SIZES[0], seed=8)
    target = np.random.default_rng(9).normal(size=(len(KEEP), 6))
    got = subspace.distill_penalty(ops, Ws, bs, x, KEEP, torch.as_tensor(target), 0.3)
    out = plain_forward(Ws, bs, x).numpy()
    np.testing.assert_allclose(float(got), 0.3 * ((out[:, list(KEEP)].T - target) ** 2).mean(),
                               rtol=1e-14)
    at_target = subspace.distill_penalty(ops, Ws, bs, x, KEEP,
                                         torch.as_tensor(out[:, list(KEEP)].T), 5.0)
    assert abs(float(at_target)) < 1e-28
