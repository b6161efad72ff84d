"""algorithms.training: the loop over a small fake Trainer that records every call (no framework):
warm start, start values, each step's rows, recording, residuals, make_steps."""
import numpy as np
import pytest

import selective_update as su
from selective_update import core
from selective_update.algorithms import subspace, training

DATA = su.make_toy_data(n_sample=8, n_eval=5)
PARAMS = su.init_params()
REFERENCE = DATA.x_eval[:3]


class Recorder:
    """A Trainer that takes no real step: it logs each call; outputs() return how many steps it
    has taken, so what is recorded says when it was recorded."""

    def __init__(self, config, strategies, log):
        self.config, self.log, self.taken, self.lr = config, log, 0, None
        log.append(("make", strategies))

    def prepare(self, batch):
        self.log.append(("prepare", batch))
        return batch

    def step(self, strategy, prepared):
        self.taken += 1
        self.log.append(("step", strategy, prepared, self.lr))
        return 1e-16 * self.taken  # a residual below RESTORE_TOL, telling the steps apart

    def set_lr(self, lr):
        self.lr = lr

    def start(self, values):
        self.log.append(("start", values))

    def outputs(self, x):
        return np.full((len(x), 2), float(self.taken))

    def layer_inputs(self, x):
        self.log.append(("layer_inputs", x))
        return core.nets.forward(PARAMS, x)

    def numpy_params(self):
        return PARAMS

    def sync(self):
        self.log.append(("sync",))


def run(strategy, **arguments):
    log = []
    config = core.check_run(strategy, "torch", params=PARAMS, data=DATA, warn=False, **arguments)
    result = training.train(lambda c, s: Recorder(c, s, log), config)
    return result, log, config


def calls(log, name):
    return [entry[1:] for entry in log if entry[0] == name]


def test_batch_for_the_fixed_batch_and_a_mini_batch():
    config = core.check_run("distill", "torch", params=PARAMS, data=DATA, batch_size=3)
    fixed = training.batch_for(config, None, {"distill_target": np.ones((1, 8))})
    assert fixed.x is DATA.x and fixed.y is DATA.y and fixed.rows is None
    rows = np.array([6, 0, 3])
    target = np.arange(8.0).reshape(1, 8)
    batch = training.batch_for(config, rows, {"distill_target": target})
    np.testing.assert_array_equal(batch.x, DATA.x[rows])
    np.testing.assert_array_equal(batch.y, DATA.y[rows])
    np.testing.assert_array_equal(batch.rows, rows)
    np.testing.assert_array_equal(batch.start["distill_target"], target[:, rows])
    assert training.batch_for(config, rows).start == {}


def test_warm_start_then_the_strategy_recording_after_each_step():
    result, log, config = run("null_space_corrected", warm_start_steps=2, steps=3, lr=0.1,
                              warm_start_lr=0.05)
    assert calls(log, "make") == [(("all_params", "null_space_corrected"),)]
    steps = calls(log, "step")
    assert [(s, lr) for s, _, lr in steps] == [("all_params", 0.05)] * 2 + [
        ("null_space_corrected", 0.1)] * 3
    # the fixed batch: prepared once for the warm start, once with the start values
    prepared = calls(log, "prepare")
    assert len(prepared) == 2 and all(p[0].rows is None and p[0].x is DATA.x for p in prepared)
    assert all(p is prepared[0][0] for _, p, _ in steps[:2])
    assert all(p is prepared[1][0] for _, p, _ in steps[2:])
    assert prepared[0][0].start is None and prepared[1][0].start == {}
    # outputs: after the warm start, then after each step, on data.x and data.x_eval
    assert result.outputs.shape == (4, 8, 2) and result.eval_outputs.shape == (4, 5, 2)
    np.testing.assert_array_equal(result.outputs[:, 0, 0], [2, 3, 4, 5])
    np.testing.assert_array_equal(result.eval_outputs[:, 0, 0], [2, 3, 4, 5])
    assert result.reference_outputs is None and result.batches is None
    np.testing.assert_array_equal(result.restore_residual, [3e-16, 4e-16, 5e-16])
    assert result.step_seconds.shape == (3,) and len(calls(log, "sync")) == 2 * 3
    assert not calls(log, "start")


def test_all_params_builds_one_strategy_and_no_residuals_without_a_correction():
    result, log, _ = run("all_params", steps=2)
    assert calls(log, "make") == [(("all_params",),)]
    assert result.restore_residual is None
    result, _, _ = run("null_space", steps=2)  # the trainer's answer is dropped
    assert result.restore_residual is None


def test_reference_outputs_are_recorded_after_each_step():
    result, _, _ = run("masked_loss", steps=2, reference=REFERENCE)
    assert result.reference_outputs.shape == (3, 3, 2)
    np.testing.assert_array_equal(result.reference_outputs[:, 0, 0], [0, 1, 2])


@pytest.mark.parametrize("reference", [None, REFERENCE])
def test_start_values_are_taken_once_after_the_warm_start_on_the_protected_inputs(reference):
    result, log, _ = run("layer_subspace", warm_start_steps=1, steps=2, energy=1.0,
                         reference=reference)
    kinds = [entry[0] for entry in log if entry[0] != "sync"]
    assert kinds == ["make", "prepare", "step", "layer_inputs", "start", "prepare", "step",
                     "step"]
    x = DATA.x if reference is None else reference
    [(at,)] = calls(log, "layer_inputs")
    np.testing.assert_array_equal(at, x)
    [(values,)] = calls(log, "start")
    expected = subspace.bases(core.nets.forward(PARAMS, x)[0], 1.0)
    for (U_W, u_b), (V_W, v_b) in zip(values["bases"], expected):
        np.testing.assert_array_equal(U_W, V_W)
        np.testing.assert_array_equal(u_b, v_b)
    assert calls(log, "prepare")[1][0].start is values


def test_a_rebasing_strategy_takes_its_start_values_on_each_mini_batch():
    result, log, config = run("layer_subspace", warm_start_steps=1, steps=3, batch_size=4,
                              batch_seed=2)
    rows = config.batches(1 + 3)
    np.testing.assert_array_equal(result.batches, rows[1:])
    at = [a for (a,) in calls(log, "layer_inputs")]
    assert len(at) == 1 + 3 and len(calls(log, "start")) == 1 + 3
    np.testing.assert_array_equal(at[0], DATA.x)  # the start, then each step's own rows
    for a, r in zip(at[1:], rows[1:]):
        np.testing.assert_array_equal(a, DATA.x[r])
    prepared = [b for (b,) in calls(log, "prepare")]
    assert len(prepared) == 1 + 3
    for b, r in zip(prepared, rows):
        np.testing.assert_array_equal(b.rows, r)
        np.testing.assert_array_equal(b.x, DATA.x[r])
    starts = [v for (v,) in calls(log, "start")]
    for b, values in zip(prepared[1:], starts[1:]):
        assert b.start is values


def test_distill_keeps_its_start_and_slices_its_target_per_mini_batch():
    result, log, config = run("distill", steps=3, batch_size=4, batch_seed=1)
    [(values,)] = calls(log, "start")
    _, out = core.nets.forward(PARAMS, DATA.x)
    np.testing.assert_array_equal(values["distill_target"], out[:, [0]].T)
    rows = config.batches(3)
    for (b,), r in zip(calls(log, "prepare"), rows):
        np.testing.assert_array_equal(b.start["distill_target"], values["distill_target"][:, r])
    np.testing.assert_array_equal(result.outputs[:, 0, 0], [0, 1, 2, 3])


def test_make_steps_refuses_batch_size_in_one_line():
    with pytest.raises(ValueError, match="batch_size") as error:
        training.make_steps(lambda c, s: Recorder(c, s, []), "torch", ["null_space"],
                            params=PARAMS, data=DATA, batch_size=4)
    assert "\n" not in str(error.value)


def test_make_steps_builds_one_trainer_per_strategy_with_its_own_options():
    log, made = [], {}

    def make(config, strategies):
        made[config.strategy] = config
        return Recorder(config, strategies, log)

    taken, sync = training.make_steps(make, "torch", ["grow", "layer_subspace", "null_space"],
                                      params=PARAMS, data=DATA, grow=3, energy=0.5)
    assert list(taken) == ["grow", "layer_subspace", "null_space"]
    assert calls(log, "make") == [(("grow",),), (("layer_subspace",),), (("null_space",),)]
    assert made["grow"].grow == 3 and made["grow"].energy is None
    assert made["layer_subspace"].energy == 0.5 and made["layer_subspace"].grow is None
    assert made["null_space"].energy is None and made["null_space"].grow is None
    assert len(calls(log, "start")) == 1  # layer_subspace's bases
    taken["null_space"]()
    [(strategy, batch, _)] = calls(log, "step")
    assert strategy == "null_space" and batch.rows is None and batch.x is DATA.x
    sync()
    assert calls(log, "sync") == [()]


def test_runner_run_checks_its_arguments_then_trains():
    log = []
    runner = training.Runner("torch", lambda c, s: Recorder(c, s, log), None)
    result = runner.run("masked_loss", params=PARAMS, data=DATA, steps=2)
    assert result.strategy == "masked_loss" and result.outputs.shape == (3, 8, 2)
    with pytest.raises(ValueError, match="steps"):
        runner.run("masked_loss", params=PARAMS, data=DATA, steps=0)
