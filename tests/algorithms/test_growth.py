"""algorithms.growth: the grown network's pieces and their assembly over torch's ops in float64,
against the original params' function (numpy forward)."""
import itertools

import numpy as np
import pytest
import torch

import selective_update as su
from selective_update.algorithms import growth
from selective_update.core import nets
from selective_update.torch import ops
from small_nets import plain_forward

# (layer widths, trained outputs): the last output, the first, a middle one, two around a kept one
CASES = [((3, 4, 2), (1,)), ((3, 4, 2), (0,)), ((3, 5, 4, 3), (1,)), ((3, 5, 4, 3), (0, 2)),
         ((2, 3, 4), (2, 0))]


def grown(sizes, train, grow, seed=0, stddev=0.5, transform=None):
    params = su.init_params(sizes, seed=seed, stddev=stddev)
    parts = growth.pieces(params, grow, train)
    values = {name: torch.as_tensor(value if transform is None else transform(name, value, t))
              for name, (value, t) in parts.items()}
    like = values["old_W1"]
    return params, parts, growth.assemble(ops, values, sizes, grow, train, like)


@pytest.mark.parametrize("sizes,train", CASES)
def test_assembled_pieces_compute_the_original_function(sizes, train):
    params, _, (Ws, bs) = grown(sizes, train, grow=3)
    x = np.random.default_rng(1).random((7, sizes[0]))
    np.testing.assert_allclose(plain_forward(Ws, bs, torch.as_tensor(x)).numpy(),
                               nets.forward(params, x)[1], rtol=0, atol=1e-14)
    assert tuple(W.shape[1] for W in Ws) == growth.grown_sizes(sizes, 3)[1:]
    assert Ws[0].shape[0] == sizes[0] and all(W.dtype == torch.float64 for W in Ws)


@pytest.mark.parametrize("sizes,train", CASES)
def test_kept_outputs_depend_on_the_frozen_pieces_only(sizes, train):
    """Change every trained piece: the kept outputs stay, everywhere; the trained ones move."""
    rng = np.random.default_rng(2)
    params, parts, _ = grown(sizes, train, grow=2)
    _, _, (Ws, bs) = grown(sizes, train, grow=2,
                           transform=lambda name, v, t: v + rng.normal(size=v.shape) if t else v)
    keep = [k for k in range(sizes[-1]) if k not in train]
    x = np.random.default_rng(3).random((9, sizes[0]))
    out, before = plain_forward(Ws, bs, torch.as_tensor(x)).numpy(), nets.forward(params, x)[1]
    np.testing.assert_allclose(out[:, keep], before[:, keep], rtol=0, atol=1e-14)
    assert np.abs(out[:, list(train)] - before[:, list(train)]).min() > 1e-3


def test_pieces_names_flags_and_initial_values():
    params = su.init_params((3, 5, 4, 3), seed=0)
    parts = growth.pieces(params, 2, (1,))
    assert list(parts) == ["old_W1", "old_b1", "new_W1", "new_b1", "old_W2", "old_b2", "new_W2",
                           "new_b2", "train_W", "train_b", "other_W", "other_b"]
    trained = {name for name, (_, t) in parts.items() if t}
    assert trained == {"new_W1", "new_b1", "new_W2", "new_b2", "train_W", "train_b"}
    shapes = {name: v.shape for name, (v, _) in parts.items()}
    assert shapes["new_W1"] == (3, 2) and shapes["new_W2"] == (5 + 2, 2)
    assert shapes["train_W"] == (4 + 2, 1) and shapes["other_W"] == (4, 2)
    assert not parts["new_b1"][0].any() and not parts["new_b2"][0].any()
    assert not parts["train_W"][0][4:].any()  # the new units' outgoing weights start at 0
    np.testing.assert_array_equal(parts["other_W"][0], params["W3"][:, [0, 2]])
    np.testing.assert_array_equal(parts["train_b"][0], params["b3"][[1]])
    assert parts["new_W1"][0].std() > 0  # drawn, the same from one call to the next
    np.testing.assert_array_equal(parts["new_W2"][0],
                                  growth.pieces(params, 2, (1,))["new_W2"][0])


def in_output_order(n_out, train):
    """Return the columns assemble's concatenation holds, put back by column_order's answer."""
    other = [k for k in range(n_out) if k not in train]
    trained_first, order = growth.column_order(n_out, train)
    joined = list(train) + other if trained_first else other + list(train)
    return joined if order is None else [joined[i] for i in order]


@pytest.mark.parametrize("n_out", [2, 3, 4])
def test_column_order_puts_every_output_back_in_place(n_out):
    for size in range(1, n_out):
        for train in itertools.combinations(range(n_out), size):
            assert in_output_order(n_out, train) == list(range(n_out)), train


@pytest.mark.parametrize("n_out,train", [(3, (2, 0)), (4, (3, 1)), (4, (2, 0, 3))])
def test_column_order_of_an_unsorted_train_around_a_kept_output(n_out, train):
    assert in_output_order(n_out, train) == list(range(n_out))



@pytest.mark.parametrize("n_out,train", [(3, (2, 1)), (4, (3, 2)), (4, (1, 3, 2))])
def test_column_order_of_an_unsorted_train_after_the_kept_outputs(n_out, train):
    assert in_output_order(n_out, train) == list(range(n_out))


def test_assembled_pieces_compute_the_original_function_for_an_unsorted_train():
    test_assembled_pieces_compute_the_original_function((3, 5, 3), (2, 1))


def test_assemble_reuses_the_zero_blocks_it_is_given():
    sizes, train = (3, 5, 4, 3), (1,)
    params = su.init_params(sizes)
    values = {n: torch.as_tensor(v) for n, (v, _) in growth.pieces(params, 2, train).items()}
    zeros = {}
    first = growth.assemble(ops, values, sizes, 2, train, values["old_W1"], zeros)
    kept = dict(zeros)
    second = growth.assemble(ops, values, sizes, 2, train, values["old_W1"], zeros)
    assert kept and all(zeros[k] is kept[k] for k in kept) and len(zeros) == len(kept)
    for a, b in zip(first[0] + first[1], second[0] + second[1]):
        assert torch.equal(a, b)


def test_grown_sizes():
    assert growth.grown_sizes((3, 5, 4, 2), 3) == (3, 8, 7, 2)
