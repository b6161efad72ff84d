"""The literature's network and rows through su.run: ReLU, cross-entropy, Xavier init, shared
outputs kept on a memory, ewc and gem; both frameworks, the same numbers."""
import warnings

import numpy as np
import pytest
import torch

import selective_update as su
from selective_update.algorithms import strategy_step
from selective_update.core import verdicts
from selective_update.torch import ops

RNG = np.random.default_rng(3)
SIZES = (6, 8, 8, 3)


def _task(n, shift):
    x = RNG.random((n, SIZES[0]))
    labels = ((x[:, 0] + shift * x[:, 1]) * 3).astype(int) % 3
    return x, np.eye(3)[labels]


X0, Y0 = _task(24, 0.0)
X1, Y1 = _task(24, 1.0)
DATA = su.Data(X1, Y1, X0, Y0)
PARAMS = su.init_params(SIZES, init="xavier_uniform")
MEMORY = su.Memory(X0[:8], Y0[:8], np.repeat([0, 1], 4))
ALL = (0, 1, 2)
NET = dict(params=PARAMS, data=DATA, activation="relu", loss="cross_entropy")


def test_xavier_uniform_init_has_zero_biases_and_glorot_bounds():
    params = su.init_params((50, 30, 10), seed=4, init="xavier_uniform")
    for l, (d_in, d_out) in enumerate(((50, 30), (30, 10)), start=1):
        bound = np.sqrt(6 / (d_in + d_out))
        W = params[f"W{l}"]
        assert np.all(params[f"b{l}"] == 0) and np.abs(W).max() <= bound
        assert np.abs(W).max() > 0.9 * bound and abs(W.std() - bound / np.sqrt(3)) < 0.1 * bound
    assert all(np.array_equal(a, b) for a, b in zip(su.init_params().values(),
                                                    su.init_params(init="normal").values()))


@pytest.mark.parametrize("strategy, extra", [
    ("all_params", {}), ("masked_loss", {}), ("null_space", {"reference": X0[:5]}),
    ("null_space_corrected", {"reference": X0[:5]}),
    ("compensated_gradient", {"reference": X0[:5]}),
    ("layer_subspace", {"reference": X0[:5], "energy": 1.0}),
    ("distill", {"reference": X0[:5]}), ("gem", {"reference": MEMORY}),
    ("ewc", {"reference": MEMORY})])
def test_relu_cross_entropy_runs_agree_across_frameworks(strategy, extra):
    kw = dict(NET, keep=ALL if "reference" in extra else (0,),
              train=ALL if "reference" in extra else (1, 2), optimizer="sgd", lr=0.1,
              steps=4, batch_size=6, **extra)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", su.TrivialNullSpaceWarning)
        a, b = su.run(strategy, "torch", **kw), su.run(strategy, "tf1", **kw)
    assert np.all(np.isfinite(a.outputs)) and not np.array_equal(a.outputs[0], a.outputs[-1])
    np.testing.assert_allclose(a.outputs, b.outputs, atol=1e-9)
    np.testing.assert_allclose(a.loss, b.loss, atol=1e-9)
    assert a.loss[0] == pytest.approx(su.core.runs.cross_entropy(a.outputs, Y1)[0])


def test_a_masked_cross_entropy_gives_the_kept_outputs_no_gradient():
    r = su.run("masked_last_layer", "torch", **NET, keep=(0,), train=(1, 2), steps=3)
    assert r.promise == "exact" and r.drift_eval.max() == 0.0
    moved = su.run("masked_loss", "torch", **NET, keep=(0,), train=(1, 2), steps=3)
    assert moved.drift_eval.max() > 1e-3  # the hidden layers carry the trained outputs' step


@pytest.mark.parametrize("name, train", [("masked_loss", (1, 2)), ("all_params", None)])
def test_the_cross_entropy_gradient_in_closed_form_is_autograds(name, train):
    strategy = su.STRATEGIES[name if name == "all_params" else "compensated_gradient"]
    out = torch.tensor(RNG.normal(size=(5, 3)) * 4, requires_grad=True)
    y = torch.as_tensor(np.eye(3)[[0, 1, 2, 1, 0]] * 0.8 + 0.05)
    mask = torch.tensor([0.0, 1.0, 1.0])
    loss = strategy_step.loss(ops, su.STRATEGIES[name], out, y, mask, kind="cross_entropy",
                              train=train)
    expected, = torch.autograd.grad(loss, out)
    closed = strategy_step.loss_gradient(ops, strategy, out.detach(), y, mask, "cross_entropy",
                                         train)
    assert torch.allclose(closed, expected, atol=1e-15)


def test_shared_outputs_need_a_reference_where_a_strategy_protects():
    su.run("all_params", "torch", **NET, keep=ALL, train=ALL)  # protects nothing: allowed
    su.run("null_space", "torch", **NET, keep=ALL, train=ALL, reference=X0[:3])
    for strategy, needs in (("null_space", "or overlapping ones with reference= inputs"),
                            ("gem", "or overlapping ones with reference= inputs"),
                            ("split_head", "(split_head freezes what it keeps)")):
        with pytest.raises(ValueError) as info:
            su.run(strategy, "torch", **NET, keep=ALL, train=(2,))
        assert str(info.value).startswith("train: got [2]; allowed: outputs disjoint from keep")
        assert needs in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ValueError, match=r"^train: got \[2\].*split_head freezes"):
        su.run("split_head", "torch", **NET, keep=ALL, train=(2,), reference=X0[:3])


@pytest.mark.parametrize("argument, value, message", [
    ("activation", "tanh", "activation: got 'tanh'; allowed: sigmoid, relu"),
    ("loss", "hinge", "loss: got 'hinge'; allowed: mse, cross_entropy"),
    ("reference", X0[:3], "reference: got 'ndarray'; allowed: None, or a Memory(x, y, task)"),
    ("reference", su.Memory(X0[:3], Y0[:2], np.zeros(3, int)),
     "reference: got 'Memory with y of shape (2, 3)'"),
    ("reference", su.Memory(X0[:3], Y0[:3], np.zeros(3)),
     "reference: got 'Memory with task of shape (3,)'"),
    ("carry", {"fisher": {}}, "carry: got ['fisher']; allowed: RunResult.carry of an earlier"),
    ("ewc_strength", -1.0, "ewc_strength: got -1.0; allowed: a finite number >= 0")])
def test_bad_literature_arguments_are_refused_in_one_line(argument, value, message):
    strategy = "gem" if argument == "reference" else "ewc"
    with pytest.raises(ValueError) as info:
        su.run(strategy, "torch", **{**NET, "train": (1, 2), argument: value})
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


@pytest.mark.parametrize("strategy", ["masked_loss", "null_space", "compensated_gradient",
                                      "distill", "ewc"])
def test_cross_entropy_over_one_trained_output_is_refused(strategy):
    """A softmax over one column is constant: the run would train nothing, so it is refused."""
    with pytest.raises(ValueError) as info:
        su.run(strategy, "torch", **{**NET, "keep": (0, 1), "train": (2,)})
    assert str(info.value).startswith("train: got [2]; allowed: two or more outputs with "
                                      "loss='cross_entropy'") and "\n" not in str(info.value)
    su.run("all_params", "torch", **{**NET, "keep": (0, 1), "train": (2,)})  # the full loss


def test_carry_and_memory_options_belong_to_their_strategies():
    with pytest.raises(ValueError, match=r"^carry: got 'dict'; allowed: None with strategy"):
        su.run("all_params", "torch", **NET, carry={"fisher": {}})
    with pytest.raises(ValueError, match=r"^gem_margin: got 0.5; allowed: None with strategy"):
        su.run("ewc", "torch", **NET, gem_margin=0.5)


def test_ewc_carries_each_tasks_fisher_to_the_next_run():
    kw = dict(NET, keep=ALL, train=ALL, steps=3, reference=su.Memory(X0, Y0, np.zeros(24, int)))
    first = su.run("ewc", "torch", **kw)
    second = su.run("ewc", "torch", **{**kw, "params": first.params}, carry=first.carry)
    grads = su.backend("torch").runner.Trainer(
        su.core.check_run("ewc", "torch", **{**kw, "params": first.params}), ("ewc",)
    ).loss_gradients(X0, Y0)
    for k in PARAMS:
        np.testing.assert_allclose(second.carry["fisher"][k],
                                   first.carry["fisher"][k] + grads[k] ** 2, rtol=1e-12)
        np.testing.assert_allclose(second.carry["anchored"][k], first.carry["anchored"][k]
                                   + grads[k] ** 2 * first.params[k], rtol=1e-12, atol=1e-15)


def test_gem_keeps_its_promise_and_a_plain_step_breaks_it():
    kw = dict(NET, keep=ALL, train=ALL, optimizer="sgd", steps=1, reference=MEMORY)
    r, half = su.run("gem", "torch", lr=0.5, **kw), su.run("gem", "torch", lr=0.25, **kw)
    assert r.promise == "reference_no_loss_rise"
    assert verdicts.promise_holds(r.promise, r.drift_train, r.drift_eval,
                                  drift_reference=r.drift_reference, memory_loss=r.memory_loss,
                                  memory_loss_half_lr=half.memory_loss).holds
    plain = su.run("all_params", "torch", lr=0.5, **kw)
    assert (plain.memory_loss[1] - plain.memory_loss[0]).max() > 0  # the step GEM corrects
    assert su.run("gem", "torch", lr=0.5, **{**kw, "optimizer": "adam"}).promise == "none"


def test_record_steps_false_keeps_the_start_and_the_end():
    every = su.run("all_params", "torch", **NET, keep=(0,), train=(1, 2), steps=4)
    ends = su.run("all_params", "torch", **NET, keep=(0,), train=(1, 2), steps=4,
                  record_steps=False)
    assert ends.outputs.shape[0] == 2 and np.array_equal(ends.outputs, every.outputs[[0, -1]])
    assert all(np.array_equal(ends.params[k], every.params[k]) for k in PARAMS)
