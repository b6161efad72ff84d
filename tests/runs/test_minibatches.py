"""run(batch_size=..., batch_seed=...): the same mini-batches in both frameworks, promises measured.

The toy set-up here has 12 training inputs and mini-batches of 4 (3 per epoch), so 5 steps cross
an epoch boundary; every promise is judged on the numbers, in TF1 and PyTorch.
"""
import itertools
import warnings
from functools import lru_cache

import numpy as np
import pytest

import selective_update as su
from selective_update.core import verdicts

DATA = su.make_toy_data(n_sample=12)
PARAMS = su.init_params()
BATCH, SEED = 4, 3
SET_UP = list(itertools.product(su.OPTIMIZERS, (0.0, 0.01), (0, 2)))
SET_UP_IDS = [f"{o}-wd{w}-warm{k}" for o, w, k in SET_UP]
REFERENCE = DATA.x_eval[:4]


@lru_cache(maxsize=None)
def mb_run(strategy, framework, optimizer="sgd", weight_decay=0.0, warm=0, lr=0.1, steps=5,
           warm_start_lr=None, reference=False, batch_size=BATCH, energy=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", su.TrivialNullSpaceWarning)
        return su.run(strategy, framework, params=PARAMS, data=DATA, optimizer=optimizer, lr=lr,
                      steps=steps, weight_decay=weight_decay, warm_start_steps=warm,
                      warm_start_lr=warm_start_lr, batch_size=batch_size, batch_seed=SEED,
                      reference=REFERENCE if reference else None, energy=energy)


def test_minibatches_are_epochs_of_a_seeded_permutation():
    rows = su.core.minibatches(10, 3, 7, seed=5)
    assert rows.shape == (7, 3) and rows.dtype.kind == "i"
    for epoch in (rows[0:3], rows[3:6]):  # 3 batches an epoch; the 10th row sits it out
        assert len(np.unique(epoch)) == 9 and set(epoch.ravel()) <= set(range(10))
    assert not np.array_equal(rows[0:3], rows[3:6])  # reshuffled every epoch
    assert np.array_equal(rows, su.core.minibatches(10, 3, 7, seed=5))
    assert not np.array_equal(rows, su.core.minibatches(10, 3, 7, seed=6))
    assert np.array_equal(su.core.minibatches(10, 3, 4, seed=5), rows[:4])  # a prefix


@pytest.mark.parametrize("strategy", list(su.STRATEGIES))
def test_both_frameworks_see_the_same_batches_and_agree(strategy):
    a, b = (mb_run(strategy, fw, "adam", 0.01, 2) for fw in su.FRAMEWORKS)
    expected = su.core.minibatches(len(DATA.x), BATCH, 2 + 5, SEED)[2:]  # after the warm start
    assert np.array_equal(a.batches, expected) and np.array_equal(b.batches, expected)
    assert a.outputs.shape == (6, len(DATA.x), 2)  # recorded on all of data.x
    np.testing.assert_allclose(a.outputs, b.outputs, rtol=0, atol=1e-12)
    np.testing.assert_allclose(a.eval_outputs, b.eval_outputs, rtol=0, atol=1e-12)
    assert a.config["batch_size"] == BATCH and a.config["batch_seed"] == SEED


@pytest.mark.parametrize("framework", su.FRAMEWORKS)
def test_a_step_trains_on_its_mini_batch_only(framework):
    """One SGD step on a mini-batch is the full-batch step on those rows, whatever the others."""
    r = mb_run("all_params", framework, steps=1)
    rows = r.batches[0]
    alone = su.run("all_params", framework, params=PARAMS, steps=1,
                   data=su.Data(DATA.x[rows], DATA.y[rows], DATA.x_eval, DATA.y_eval))
    for name, value in r.params.items():
        np.testing.assert_allclose(value, alone.params[name], rtol=0, atol=1e-15)
    full = su.run("all_params", framework, params=PARAMS, data=DATA, steps=1)
    assert not np.allclose(r.params["W1"], full.params["W1"], rtol=0, atol=1e-9)


@pytest.mark.parametrize("strategy", ["split_head", "grow"])
@pytest.mark.parametrize("framework", su.FRAMEWORKS)
@pytest.mark.parametrize("optimizer,weight_decay,warm", SET_UP, ids=SET_UP_IDS)
def test_split_head_and_grow_stay_bitwise_with_mini_batches(strategy, framework, optimizer,
                                                            weight_decay, warm):
    r = mb_run(strategy, framework, optimizer, weight_decay, warm)
    assert r.promise == "exact"
    kept = list(r.keep)
    for outputs in (r.outputs, r.eval_outputs):
        assert np.array_equal(outputs[:, :, kept], np.repeat(outputs[:1, :, kept], 6, axis=0))
    assert r.train_loss[-1] != r.train_loss[0]  # and they do train


@pytest.mark.parametrize("framework", su.FRAMEWORKS)
@pytest.mark.parametrize("strategy", ["null_space", "grow", "distill", "layer_subspace"])
def test_batch_size_none_is_the_call_without_it(framework, strategy):
    a = su.run(strategy, framework, params=PARAMS, data=DATA, optimizer="adam", steps=3,
               warm_start_steps=2)
    b = su.run(strategy, framework, params=PARAMS, data=DATA, optimizer="adam", steps=3,
               warm_start_steps=2, batch_size=None, batch_seed=7)
    assert a.batches is None and b.batches is None
    for field in ("outputs", "eval_outputs"):
        assert getattr(a, field).tobytes() == getattr(b, field).tobytes()
    assert a.promise == b.promise


def _verdict(strategy, framework, optimizer, weight_decay, warm, reference, energy=None,
             batch_size=BATCH):
    r = mb_run(strategy, framework, optimizer, weight_decay, warm, reference=reference,
               energy=energy, batch_size=batch_size)
    half = mb_run(strategy, framework, optimizer, weight_decay, warm, lr=0.05, steps=1,
                  warm_start_lr=0.1, reference=reference, energy=energy, batch_size=batch_size)
    return r, verdicts.promise_holds(
        r.promise, r.drift_train, r.drift_eval, drift_train_half_lr=half.drift_train[1],
        drift_reference=r.drift_reference, drift_minibatch=r.drift_minibatch,
        drift_minibatch_half_lr=half.drift_minibatch[1], restore_residual=r.restore_residual,
        drift_reference_half_lr=None if half.drift_reference is None
        else half.drift_reference[1])


@pytest.mark.parametrize("framework", su.FRAMEWORKS)
@pytest.mark.parametrize("optimizer,weight_decay,warm", SET_UP, ids=SET_UP_IDS)
@pytest.mark.parametrize("strategy", list(su.STRATEGIES))
def test_promise_holds_with_mini_batches(strategy, framework, optimizer, weight_decay, warm):
    r, verdict = _verdict(strategy, framework, optimizer, weight_decay, warm, reference=False)
    assert verdict.holds, (r.promise, verdict.measured)
    if r.promise.startswith("minibatch_"):  # each step's rows, not every row of data.x
        assert r.drift_minibatch.max() < r.drift_train.max()


@pytest.mark.parametrize("framework", su.FRAMEWORKS)
@pytest.mark.parametrize("optimizer", ["momentum", "adam"])  # (plain SGD's first-layer step lies
@pytest.mark.parametrize("strategy,energy,promise", [      # in the batch's span: none is left)
    ("layer_subspace", 1.0, "minibatch_exact"), ("null_space_corrected", None, "minibatch_exact"),
    ("null_space", None, "minibatch_first_order")])
def test_batch_promises_move_to_each_mini_batch(strategy, energy, promise, framework, optimizer):
    # mini-batches of 2: on the 3-4-2 net, 4 inputs (with the bias) would span the first layer
    r, verdict = _verdict(strategy, framework, optimizer, 0.0, 0, reference=False, energy=energy,
                          batch_size=2)
    assert r.promise == promise and verdict.holds, verdict.measured
    if promise == "minibatch_exact":  # held across each step on its rows; the others move
        assert r.drift_minibatch.max() <= 1e-10 < 1e-6 < r.drift_train.max()
    ref, ref_verdict = _verdict(strategy, framework, optimizer, 0.0, 0, reference=True,
                                energy=energy, batch_size=2)
    assert ref.promise == promise.replace("minibatch_", "reference_") and ref_verdict.holds


@pytest.mark.parametrize("bad", [0, 13, 2.5, True, "4", -1])
def test_bad_batch_size_is_refused_in_one_line(bad):
    with pytest.raises(ValueError) as info:
        su.run("split_head", "torch", params=PARAMS, data=DATA, batch_size=bad)
    assert str(info.value).startswith(f"batch_size: got {bad!r}; allowed: None") \
        and "1..12" in str(info.value) and "\n" not in str(info.value)


def test_bad_batch_seed_is_refused_in_one_line():
    with pytest.raises(ValueError, match=r"^batch_seed: got -1; allowed: an integer >= 0$"):
        su.run("split_head", "tf1", params=PARAMS, data=DATA, batch_size=4, batch_seed=-1)


@pytest.mark.parametrize("framework", su.FRAMEWORKS)
def test_make_steps_refuses_mini_batches(framework):
    with pytest.raises(ValueError, match=r"^batch_size: got 4; allowed: None in make_steps"):
        su.backend(framework).make_steps(["split_head"], params=PARAMS, data=DATA, batch_size=4)


@pytest.mark.parametrize("framework", su.FRAMEWORKS)
def test_compensated_gradient_protects_each_mini_batch_with_sgd_only(framework):
    """G' is compensated on the step's own rows: first order there with sgd; momentum carries
    gradients compensated on other rows, so it promises nothing on mini-batches."""
    r, verdict = _verdict("compensated_gradient", framework, "sgd", 0.0, 0, reference=False,
                          batch_size=2)
    assert r.promise == "minibatch_first_order" and verdict.holds, verdict.measured
    assert r.drift_minibatch.max() < r.drift_train.max()
    assert su.promise("compensated_gradient", "momentum", batch_size=2) == "none"
    assert su.promise("compensated_gradient", "momentum") == "first_order"
    assert su.promise("compensated_gradient", "momentum", batch_size=2,
                      reference=True) == "reference_first_order"
