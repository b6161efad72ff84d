"""tf.compat.v1 and the torch port give the same numbers; the seed's demo; the null-space step."""
import itertools
import warnings

import numpy as np
import pytest

import selective_update as su
import selective_update.tf1 as tf1
import selective_update.torch as pt
from conftest import DATA, PARAMS, cached_run
from selective_update.algorithms import nullspace

GRID = list(itertools.product(su.STRATEGIES, su.OPTIMIZERS, (0.0, 0.01), (0, 2)))


@pytest.mark.parametrize("strategy,optimizer,weight_decay,warm", GRID,
                         ids=[f"{s}-{o}-wd{w}-warm{k}" for s, o, w, k in GRID])
def test_tf1_and_torch_agree(strategy, optimizer, weight_decay, warm):
    a, b = (cached_run(strategy, fw, optimizer, weight_decay, warm) for fw in su.FRAMEWORKS)
    tol = 1e-6 if optimizer in ("sgd", "momentum") else 1e-5
    np.testing.assert_allclose(a.outputs, b.outputs, rtol=0, atol=tol)
    np.testing.assert_allclose(a.eval_outputs, b.eval_outputs, rtol=0, atol=tol)
    for name in PARAMS:
        np.testing.assert_allclose(a.params[name], b.params[name], rtol=0, atol=10 * tol)


@pytest.mark.parametrize("framework", su.FRAMEWORKS)
@pytest.mark.parametrize("strategy", ["null_space_corrected", "masked_loss", "split_head"])
def test_same_call_twice_gives_identical_arrays(framework, strategy):
    runs = [su.run(strategy, framework, params=PARAMS, data=DATA, optimizer="adam", steps=3,
                   warm_start_steps=2, weight_decay=0.01) for _ in range(2)]
    for field in ("outputs", "eval_outputs", "loss", "train_loss"):
        assert np.array_equal(getattr(runs[0], field), getattr(runs[1], field))
    for name in PARAMS:
        assert np.array_equal(runs[0].params[name], runs[1].params[name])


def test_run_result_fields():
    r = cached_run("null_space", "torch")
    assert r.outputs.shape == (6, 8, 2) and r.eval_outputs.shape == (6, 256, 2)
    assert r.loss.shape == r.train_loss.shape == (6,) and r.step_seconds.shape == (5,)
    assert (r.step_seconds > 0).all()
    np.testing.assert_allclose(r.loss, ((r.outputs - DATA.y) ** 2).mean(axis=(1, 2)))
    np.testing.assert_allclose(r.train_loss, ((r.outputs[..., 1] - DATA.y[:, 1]) ** 2).mean(axis=1))
    assert set(r.params) == set(PARAMS)


def test_seed_demo_reproduced_in_tf1_and_torch():
    demos = {fw: su.seed_demo(fw, PARAMS, DATA) for fw in su.FRAMEWORKS}
    assert demos["tf1"].phases == ("start", "train_op2", "train_op12", "train_op_all",
                                   "train_op_compensated")
    for field in ("outputs", "hidden"):  # the answer's three phases
        np.testing.assert_allclose(getattr(demos["tf1"], field)[:4],
                                   getattr(demos["torch"], field)[:4], rtol=0, atol=1e-12)
    # G': output 1's Gram on these 8 samples has eigenvalues down to 1.6e-11 of its largest, so
    # rounding moves alpha (~1e4) in its 6th digit; the outputs after the step agree to 3e-9
    np.testing.assert_allclose(demos["tf1"].outputs[4], demos["torch"].outputs[4], rtol=0,
                               atol=1e-8)
    np.testing.assert_allclose(demos["tf1"].alpha, demos["torch"].alpha, rtol=0,
                               atol=1e-5 * np.abs(demos["torch"].alpha).max())
    for demo in demos.values():
        rows = {row["phase"]: row for row in demo.rows()}
        assert rows["train_op2"]["out1_change"] == 0.0  # the answer's claim holds for train_op2
        assert rows["train_op2"]["out2_change"] > 1e-3
        assert rows["train_op12"]["out1_change"] > 1e-3  # var_list=[W2, b2] with the full loss
        assert rows["train_op_all"]["out1_change"] > 1e-3  # every variable moves output 1
        assert demo.loss2[1] < demo.loss2[0]
        # G = [0, -1] becomes G' = [-alpha, -1]: output 1 moves to second order only (measured
        # 1.4e-4 against train_op_all's 0.22), output 2 rises on every sample
        np.testing.assert_array_equal(demo.G_prime[:, 1], -1.0)
        np.testing.assert_array_equal(demo.G_prime[:, 0], -demo.alpha[0])
        assert rows["train_op_compensated"]["out1_change"] < 1e-2 * rows["train_op_all"][
            "out1_change"]
        assert (demo.change("train_op_compensated")[:, 1] > 0.1).all()
    # the literal TF1 demo equals the study's engine for its first phase
    engine = cached_run("masked_last_layer", "tf1", steps=5)
    np.testing.assert_allclose(demos["tf1"].outputs[1], engine.outputs[1], rtol=0, atol=1e-15)


def _random_step(params, seed):
    rng = np.random.default_rng(seed)
    return {k: rng.normal(0, 0.05, v.shape) for k, v in params.items()}


@pytest.mark.parametrize("sizes,keep", [((3, 4, 2), (0,)), ((3, 5, 4, 3), (0, 2))])
def test_fast_projection_matches_materialized_jacobian(sizes, keep):
    import torch

    from selective_update.torch.bench_jacobian import project_step_jacobian

    params = su.init_params(sizes, seed=3, stddev=1.0)  # cond(JJ^T) 6e4 and 2e7
    step = _random_step(params, 4)
    L = len(sizes) - 1
    x = torch.tensor(DATA.x)

    def tensors(d, prefix):
        return [torch.tensor(d[f"{prefix}{l}"]) for l in range(1, L + 1)]

    Ws, bs, dWs, dbs = tensors(params, "W"), tensors(params, "b"), tensors(step, "W"), \
        tensors(step, "b")
    fast = pt.project_step(Ws, bs, x, keep, dWs, dbs)
    slow = project_step_jacobian(Ws, bs, x, keep, dWs, dbs)
    for a, b in zip(fast[0] + fast[1], slow[0] + slow[1]):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=0, atol=1e-10)
    # the projected step is orthogonal to every kept-output gradient: J v = 0
    hs, out = nullspace.forward(pt.ops, Ws, bs, x)
    seed = nullspace.kept_seed(pt.ops, keep, 8, sizes[-1], x)
    deltas = nullspace.kept_deltas(pt.ops, Ws, hs, seed)
    assert nullspace.jvp(pt.ops, hs, deltas, *fast).abs().max() < 1e-12
    assert nullspace.jvp(pt.ops, hs, deltas, dWs, dbs).abs().max() > 1e-3

    # the TF1 graph computes the same projection
    import tensorflow as tf

    with tf.Graph().as_default():
        c = [[tf.constant(a.numpy()) for a in group] for group in (Ws, bs, dWs, dbs)]
        projected = tf1.project_step(c[0], c[1], tf.constant(DATA.x), keep, c[2], c[3])
        with tf.compat.v1.Session() as sess:
            tf_fast = sess.run(projected)
    for a, b in zip(tf_fast[0] + tf_fast[1], fast[0] + fast[1]):
        np.testing.assert_allclose(a, b.numpy(), rtol=0, atol=1e-10)


@pytest.mark.parametrize("framework", su.FRAMEWORKS)
def test_deeper_net_null_space_first_order_and_frameworks_agree(framework):
    params = su.init_params((3, 6, 5, 3), seed=1, stddev=0.5)
    data = su.Data(DATA.x, np.c_[DATA.y, DATA.y[:, :1]], DATA.x_eval,
                   np.c_[DATA.y_eval, DATA.y_eval[:, :1]])
    kw = dict(params=params, data=data, keep=(0, 2), train=(1,), steps=1)
    d = [su.run("null_space", framework, lr=lr, **kw).drift_train[1] for lr in (0.2, 0.1)]
    assert d[0] / d[1] >= 2.8
    other = "torch" if framework == "tf1" else "tf1"
    a = su.run("null_space_corrected", framework, lr=0.2, **kw)
    b = su.run("null_space_corrected", other, lr=0.2, **kw)
    assert a.drift_train.max() <= 1e-10
    np.testing.assert_allclose(a.outputs, b.outputs, rtol=0, atol=1e-8)


@pytest.mark.parametrize("framework", su.FRAMEWORKS)
def test_trivial_null_space_warns_and_does_not_crash(framework):
    params = su.init_params((3, 1, 2), seed=0)  # 8 parameters, 8 kept constraints
    with pytest.warns(su.TrivialNullSpaceWarning, match="null space"):
        r = su.run("null_space", framework, params=params, data=DATA, steps=2)
    assert np.isfinite(r.outputs).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error", su.TrivialNullSpaceWarning)
        su.run("null_space", framework, params=PARAMS, data=DATA, steps=1)  # 26 > 8: no warning


@pytest.mark.parametrize("framework", su.FRAMEWORKS)
def test_warm_start_runs_at_warm_start_lr_and_only_the_strategy_step_changes(framework):
    kw = dict(params=PARAMS, data=DATA, optimizer="momentum", warm_start_steps=2, steps=1)
    base = su.run("null_space", framework, lr=0.1, **kw)
    half = su.run("null_space", framework, lr=0.05, warm_start_lr=0.1, **kw)
    other = su.run("null_space", framework, lr=0.05, **kw)  # warm start at 0.05 too
    assert np.array_equal(base.outputs[0], half.outputs[0])  # same state after the warm start
    assert not np.allclose(base.outputs[0], other.outputs[0])
    assert not np.array_equal(base.outputs[1], half.outputs[1])
