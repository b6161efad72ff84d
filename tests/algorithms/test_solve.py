"""algorithms.solve over torch's ops in float64, against numpy.linalg on small matrices."""
import numpy as np
import pytest
import torch

from selective_update.algorithms import solve
from selective_update.settings import CHOLESKY_JITTER
from selective_update.torch import ops

EPS = np.finfo(np.float64).eps


def spd(eigenvalues, seed=0):
    """Return (A, Q): A = Q diag(eigenvalues) Q^T for a random orthogonal Q."""
    n = len(eigenvalues)
    Q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(n, n)))
    return (Q * np.asarray(eigenvalues)) @ Q.T, Q


def t(a):
    return torch.as_tensor(np.asarray(a, dtype=np.float64))


@pytest.mark.parametrize("columns", [None, 3])
def test_pinv_solve_is_the_pseudo_inverse_with_its_cutoff(columns):
    # rank 4 of 6: two eigenvalues far below largest * n * eps count as null
    A, _ = spd([5.0, 2.0, 1.0, 1e-3, 1e-17, 0.0])
    rng = np.random.default_rng(1)
    R = rng.normal(size=6) if columns is None else rng.normal(size=(6, columns))
    got = solve.pinv_solve(ops, t(A), t(R)).numpy()
    expected = np.linalg.pinv(A, rcond=6 * EPS, hermitian=True) @ R
    assert got.shape == R.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10 * np.abs(expected).max())


def test_pinv_cutoff_scales_with_the_largest_value_and_the_size():
    assert solve.pinv_cutoff(4.0, 10, EPS) == pytest.approx(40 * EPS)
    assert solve.pinv_cutoff(8.0, 10, EPS) == pytest.approx(2 * solve.pinv_cutoff(4.0, 10, EPS))


def test_psd_factor_factors_the_jittered_matrix():
    A, _ = spd([3.0, 1.0, 0.5, 0.1], seed=2)
    L, kept, ok = solve.psd_factor(ops, t(A))
    jitter = CHOLESKY_JITTER * np.trace(A) / 4
    assert ok and np.array_equal(kept.numpy(), A)
    np.testing.assert_allclose(L.numpy() @ L.numpy().T, A + jitter * np.eye(4), rtol=0,
                               atol=1e-14)
    assert np.allclose(np.triu(L.numpy(), 1), 0.0)


def test_psd_solve_matches_numpy_on_a_well_conditioned_system():
    A, _ = spd([4.0, 2.0, 1.0, 0.5, 0.25], seed=3)
    R = np.random.default_rng(4).normal(size=(5, 2))
    got = solve.psd_solve(ops, solve.psd_factor(ops, t(A)), t(R)).numpy()
    np.testing.assert_allclose(got, np.linalg.solve(A, R), rtol=1e-10, atol=0)


def test_psd_factor_says_when_the_factor_is_not_finite():
    A = np.eye(4)
    A[1, 1] = np.nan
    assert not solve.psd_factor(ops, t(A))[2]


def test_psd_solve_falls_back_to_the_pseudo_inverse_where_cholesky_fails():
    A, _ = spd([2.0, 1.0, -1.0, 0.0], seed=5)  # indefinite: no Cholesky factor
    R = np.random.default_rng(6).normal(size=(4, 1))
    solver = solve.psd_factor(ops, t(A))
    assert not solver[2]
    w, V = np.linalg.eigh(A)  # only eigenvalues above the cutoff are inverted
    keep = w > w[-1] * 4 * EPS
    expected = V[:, keep] @ ((V[:, keep].T @ R) / w[keep, None])
    for got in (solve.psd_solve(ops, solver, t(R)), solve.psd_solve_refined(ops, solver, t(R), 2)):
        np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-12)


def test_refinement_solves_an_ill_conditioned_system_better():
    """cond 1e10: the jitter (1e-12 of the mean eigenvalue) biases the smallest direction by
    about 1%; each refinement pass removes that factor again."""
    w = np.logspace(0, -10, 6)
    A, Q = spd(w, seed=7)
    X = Q[:, -1:] + Q[:, :1]  # along the smallest and the largest eigenvector
    R = A @ X
    solver = solve.psd_factor(ops, t(A))
    plain = solve.psd_solve(ops, solver, t(R)).numpy()
    errors = [np.abs(solve.psd_solve_refined(ops, solver, t(R), k).numpy() - X).max()
              for k in (0, 1, 3)]
    np.testing.assert_allclose(errors[0], np.abs(plain - X).max(), rtol=1e-12)  # 0: no refining
    assert errors[0] > 1e-4
    assert errors[1] < errors[0] / 20 and errors[2] < 1e-5


def test_svd_solve_is_the_pseudo_inverse_of_a_rank_deficient_matrix():
    rng = np.random.default_rng(8)
    J = rng.normal(size=(4, 7))
    J[3] = J[0] + 2 * J[1]  # rank 3
    R = rng.normal(size=(4, 2))
    U, inv, V = solve.svd_factor(ops, t(J))
    assert (inv.numpy() == 0).sum() == 1  # the dependent row's singular value is cut off
    got = solve.svd_solve(ops, (U, inv, V), t(R)).numpy()
    np.testing.assert_allclose(got, np.linalg.pinv(J, rcond=7 * EPS) @ R, rtol=0, atol=1e-12)
