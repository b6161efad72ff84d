"""The framework-free core: data, params, promises, validation (no framework is imported here)."""
import subprocess
import sys

import numpy as np
import pytest

import selective_update as su


def test_toy_data_is_the_seeds():
    d = su.make_toy_data(n_sample=8, n_eval=256, seed=0, noise=0.01)
    assert d.x.shape == (8, 3) and d.y.shape == (8, 2)
    assert d.x_eval.shape == (256, 3) and d.y_eval.shape == (256, 2)
    assert d.x.dtype == np.float64 and 0 <= d.x.min() and d.x.max() < 1
    np.testing.assert_allclose(d.y[:, 0], d.x.sum(axis=1))
    noise = d.y[:, 1] - (d.x ** 2).sum(axis=1)
    assert np.all((0 <= noise) & (noise < 0.01)) and noise.std() > 0
    assert not np.array_equal(su.make_toy_data(seed=1).x, d.x)
    np.testing.assert_array_equal(su.make_toy_data().x, d.x)


def test_init_params_shapes_and_scale():
    p = su.init_params(sizes=(3, 5, 4, 2), seed=0, stddev=0.1)
    assert [p[k].shape for k in ("W1", "b1", "W2", "b2", "W3", "b3")] == \
        [(3, 5), (5,), (5, 4), (4,), (4, 2), (2,)]
    big = su.init_params(sizes=(300, 300, 2), seed=1, stddev=0.1)["W1"]
    assert abs(big.std() - 0.1) < 0.005 and abs(big.mean()) < 0.005


@pytest.mark.parametrize("bad", [(3, 2), (3, 4, 1), (3, 0, 2), "342", (3, 4.5, 2)])
def test_init_params_refuses_bad_sizes(bad):
    with pytest.raises(ValueError, match=r"^sizes: "):
        su.init_params(sizes=bad)


def test_promise_table():
    assert su.promise("split_head", "adamw", weight_decay=0.01, warm_start_steps=2) == "exact"
    assert su.promise("masked_last_layer", "sgd", warm_start_steps=2) == "exact"
    assert su.promise("masked_last_layer", "adam") == "exact"
    assert su.promise("masked_last_layer", "adam", warm_start_steps=2) == "none"
    assert su.promise("masked_last_layer", "momentum", weight_decay=0.01) == "none"
    assert su.promise("null_space", "adam", weight_decay=0.01) == "first_order"
    assert su.promise("null_space_corrected", "momentum") == "batch_exact"
    assert su.promise("compensated_gradient", "sgd", warm_start_steps=2) == "first_order"
    assert su.promise("compensated_gradient", "momentum") == "first_order"  # fresh state
    assert su.promise("compensated_gradient", "momentum", warm_start_steps=2) == "none"
    assert su.promise("compensated_gradient", "sgd", weight_decay=0.01) == "none"
    for optimizer in ("adam", "adamw"):
        assert su.promise("compensated_gradient", optimizer) == "none"
    for name in ("all_params", "last_layer", "output_gradient", "masked_loss"):
        assert su.promise(name, "sgd") == "none"
    assert set(su.PROMISES) == {"exact", "batch_exact", "first_order", "none", "reference_exact",
                                "reference_first_order", "minibatch_exact",
                                "minibatch_first_order", "reference_no_loss_rise"}
    assert su.promise("gem", "sgd", reference=True) == "reference_no_loss_rise"
    assert su.promise("gem", "sgd") == su.promise("gem", "momentum", reference=True) == "none"
    assert su.promise("ewc", "sgd", reference=True) == "none"
    # mini-batches: a batch promise moves to each step's own rows; exact and reference ones stay
    assert su.promise("null_space", "adam", batch_size=4) == "minibatch_first_order"
    assert su.promise("null_space_corrected", "sgd", batch_size=4) == "minibatch_exact"
    assert su.promise("layer_subspace", "sgd", batch_size=4, energy=1.0) == "minibatch_exact"
    assert su.promise("null_space", "adam", batch_size=4, reference=True) == \
        "reference_first_order"
    assert su.promise("split_head", "adamw", batch_size=4, weight_decay=0.01) == "exact"
    assert su.promise("masked_last_layer", "adam", batch_size=4, warm_start_steps=2) == "none"
    assert su.promise("distill", "sgd", batch_size=4) == "none"
    with pytest.raises(ValueError, match=r"^batch_size: got 0; allowed: an integer >= 1$"):
        su.promise("null_space", "sgd", batch_size=0)
    x_ref = np.zeros((4, 3))
    assert su.promise("null_space", "adam", reference=x_ref) == "reference_first_order"
    assert su.promise("null_space_corrected", "sgd", reference=True) == "reference_exact"
    assert su.promise("null_space_corrected", "sgd", reference=None) == "batch_exact"
    assert su.promise("compensated_gradient", "sgd", reference=x_ref) == "reference_first_order"
    assert su.promise("compensated_gradient", "adam", reference=x_ref) == "none"
    assert su.promise("masked_loss", "sgd", reference=x_ref) == "none"
    assert su.promise("split_head", "sgd", reference=x_ref) == "exact"
    assert su.promise("layer_subspace", "adam", energy=1.0) == "batch_exact"
    assert su.promise("layer_subspace", "adam", energy=1.0, reference=x_ref) == "reference_exact"
    assert su.promise("layer_subspace", "adam") == "none"  # default energy 0.99
    assert su.promise("distill", "sgd", reference=x_ref, distill_weight=10.0) == "none"
    with pytest.raises(ValueError, match=r"^energy: .*layer_subspace"):
        su.promise("split_head", "sgd", energy=0.5)


def test_registry_names_and_descriptions():
    assert list(su.STRATEGIES) == ["all_params", "last_layer", "output_gradient", "masked_loss",
                                   "masked_last_layer", "split_head", "null_space",
                                   "compensated_gradient", "null_space_corrected",
                                   "layer_subspace", "grow", "distill", "ewc", "gem"]
    for name, s in su.STRATEGIES.items():
        assert s.name == name and len(s.summary) > 20 and s.source
    assert su.OPTIMIZERS == ("sgd", "momentum", "adam", "adamw")
    assert su.FRAMEWORKS == ("tf1", "torch")


def test_drift_is_max_change_of_kept_outputs_since_start():
    outputs = np.zeros((3, 2, 2))
    outputs[1, 0, 0], outputs[2, 1, 0], outputs[2, 1, 1] = 0.5, -2.0, 9.0
    np.testing.assert_array_equal(su.drift(outputs, (0,)), [0.0, 0.5, 2.0])


def test_core_imports_no_framework():
    code = ("import sys, selective_update, selective_update.core, "
            "selective_update.algorithms.nullspace, "
            "selective_update.datasets, selective_update.__main__; "
            "print([m for m in ('torch', 'tensorflow') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"




def test_the_facade_docstring_examples_run():
    import doctest

    tests = doctest.DocTestFinder().find(su.run, "run", globs={})
    runner = doctest.DocTestRunner()
    for test in tests:
        runner.run(test)
    assert runner.tries >= 2 and runner.failures == 0
