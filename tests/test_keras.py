"""The Keras helper on a functional CNN written here, not the study's MLP."""
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

import selective_update.tf1  # noqa: F401  (TensorFlow first, as in a kernel that ran the study)
from selective_update.keras import KeepUnits, PromiseWarning, keras, split_head, unsplit_head

# Keras 3.15 converts tensors through np.array(x, copy=False), which numpy 2 warns about.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept")

KEEP, TRAIN = [0, 2, 3], [1, 4]
RNG = np.random.default_rng(0)
X, X_EVAL = RNG.random((128, 8, 8, 1)), RNG.random((40, 8, 8, 1))
Y = RNG.normal(size=(128, 5))


def functional_cnn(seed=0):
    """Conv -> ReLU -> Dense(tanh) -> Dense head: a functional model with a nested block."""
    keras.utils.set_random_seed(seed)
    block = keras.Sequential([keras.layers.Flatten(), keras.layers.Dense(8, activation="tanh")],
                             name="block")
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(3, 3, activation="relu", name="conv")(inputs)
    outputs = keras.layers.Dense(5, name="head")(block(h))
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.Adam(0.01), "mse")
    model.fit(X, Y, epochs=2, batch_size=32, verbose=0)  # warm start: every layer, Adam slots
    return model


def predict(model, x=X_EVAL):
    return model.predict(x, verbose=0, batch_size=len(x))


def kept_and_trained_change(model, before):
    after = predict(model)
    return np.abs(after - before)[:, KEEP].max(), np.abs(after - before)[:, TRAIN].max()


OPTIMIZERS = {
    "adamw_decay": lambda: keras.optimizers.AdamW(0.01, weight_decay=0.1),
    "sgd_momentum": lambda: keras.optimizers.SGD(0.05, momentum=0.9),
    "adam": lambda: keras.optimizers.Adam(0.01),
}


@pytest.fixture(scope="module")
def model():
    return functional_cnn()


def test_split_head_keeps_outputs_bitwise_under_each_optimizer(model):
    before = predict(model)
    weights = {v.path: keras.ops.convert_to_numpy(v).copy() for v in model.weights}
    trained = split_head(model, model.get_layer("head"), TRAIN)
    assert [v.path for v in model.trainable_variables] == [v.path for v in trained]
    for name, make in OPTIMIZERS.items():
        model.compile(make(), "mse")
        model.fit(X, Y, epochs=2, batch_size=32, verbose=0)
        kept, learned = kept_and_trained_change(model, before)
        assert kept == 0, name  # bitwise
        assert learned > 1e-2, name
    for v in model.weights:  # every variable but the head's train units is bitwise as it was
        now = keras.ops.convert_to_numpy(v)
        if v.path.startswith("head/"):
            now, then = now[..., KEEP], weights[v.path][..., KEEP]
        else:
            then = weights[v.path]
        assert np.array_equal(now, then), v.path


def test_keras_file_round_trip_keeps_the_promise(tmp_path):
    model = functional_cnn(seed=4)  # its own model: xdist may run this test on another worker
    split_head(model, model.get_layer("head"), TRAIN)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert np.array_equal(predict(loaded), predict(model))
    assert [v.path for v in loaded.trainable_variables] == ["head/kernel", "head/bias"]
    assert isinstance(loaded.get_layer("head").kernel.constraint, KeepUnits)
    before = predict(loaded)
    loaded.compile(OPTIMIZERS["adamw_decay"](), "mse")
    loaded.fit(X, Y, epochs=2, batch_size=32, verbose=0)
    kept, learned = kept_and_trained_change(loaded, before)
    assert kept == 0 and learned > 1e-2


def test_split_head_without_recompiling_retraces_fit():
    model = functional_cnn(seed=1)  # compiled and fitted: its train function is traced
    before = predict(model)
    split_head(model, model.get_layer("head"), TRAIN)
    model.fit(X, Y, epochs=2, batch_size=32, verbose=0)
    kept, learned = kept_and_trained_change(model, before)
    assert kept == 0 and learned > 1e-3


def test_without_split_head_the_kept_outputs_move():
    model = functional_cnn(seed=2)
    before = predict(model)
    model.compile(OPTIMIZERS["adamw_decay"](), "mse")
    model.fit(X, Y, epochs=1, batch_size=32, verbose=0)
    assert kept_and_trained_change(model, before)[0] > 1e-3


def state(model):
    return ([layer.trainable for layer in model._flatten_layers()],
            [type(v.constraint).__name__ for v in model.weights],
            [keras.ops.convert_to_numpy(v).copy() for v in model.weights])


def test_bad_input_is_refused_and_leaves_the_model():
    model = functional_cnn(seed=3)
    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(5)])
    cases = [(model.get_layer("conv"), TRAIN, "layer"),  # not a Dense
             (other.layers[-1], TRAIN, "layer"),  # not inside model
             (model.get_layer("head"), [5], "train"),
             (model.get_layer("head"), [], "train"),
             (model.get_layer("head"), [1, 1], "train")]
    before = state(model)
    for layer, train, name in cases:
        with pytest.raises(ValueError, match=rf"^{name}: got .*; allowed: ") as info:
            split_head(model, layer, train)
        assert "\n" not in str(info.value)
        after = state(model)
        assert after[:2] == before[:2] and all(map(np.array_equal, after[2], before[2]))
    split_head(model, model.get_layer("head"), TRAIN)
    before = state(model)
    with pytest.raises(ValueError, match=r"^layer: .*split this one already"):
        split_head(model, model.get_layer("head"), [0])
    assert state(model)[:2] == before[:2]
    with pytest.raises(ValueError, match=r"^model: got "):
        split_head(object(), model.get_layer("head"), TRAIN)


def softmax_cnn(activation):
    keras.utils.set_random_seed(4)
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Flatten()(keras.layers.Conv2D(3, 3, activation="relu")(inputs))
    if activation == "layer":
        logits = keras.layers.Dense(5, name="head")(h)
        outputs = keras.layers.Softmax(name="probabilities")(logits)
    else:
        outputs = keras.layers.Dense(5, activation=activation, name="head")(h)
    return keras.Model(inputs, outputs)


@pytest.mark.parametrize("activation, mixer", [("softmax", "its activation softmax"),
                                               ("layer", r"'probabilities' after it \(Softmax\)")])
def test_a_softmax_on_the_split_units_is_said_before_training(activation, mixer):
    model = softmax_cnn(activation)
    before = predict(model)
    with pytest.warns(PromiseWarning, match=rf"split_head: {mixer}.* mixes the units of 'head'"
                                            r".*from_logits=True") as record:
        split_head(model, model.get_layer("head"), TRAIN)
    assert [r.filename for r in record if r.category is PromiseWarning] == [__file__]
    model.compile(OPTIMIZERS["adam"](), "categorical_crossentropy")
    model.fit(X, np.eye(5)[np.arange(128) % 5], epochs=2, batch_size=32, verbose=0)
    assert np.abs(predict(model) - before)[:, KEEP].max() > 1e-3  # what the warning said


def ops_cnn(after):
    """A Conv2D and a Dense head whose logits pass through keras.ops calls before the output."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Flatten()(keras.layers.Conv2D(3, 3, activation="relu")(inputs))
    logits = keras.layers.Dense(5, name="head")(h)
    return keras.Model(inputs, after(logits))


def test_a_keras_ops_softmax_after_the_split_dense_is_said():
    model = ops_cnn(lambda z: 2.0 * keras.ops.softmax(keras.ops.relu(z) + 1.0))
    before = predict(model)
    with pytest.warns(PromiseWarning, match=r"split_head: 'softmax' after it \(Softmax\) mixes "
                                            r"the units of 'head'"):
        split_head(model, model.get_layer("head"), TRAIN)
    model.compile(OPTIMIZERS["adam"](), "mse")
    model.fit(X, Y, epochs=2, batch_size=32, verbose=0)
    assert np.abs(predict(model) - before)[:, KEEP].max() > 1e-3  # what the warning said


def test_unit_wise_ops_after_the_split_dense_pass_and_unknown_ones_are_named():
    with warnings.catch_warnings():
        warnings.simplefilter("error", PromiseWarning)
        model = ops_cnn(lambda z: keras.ops.tanh(2.0 * z - 1.0))
        split_head(model, model.get_layer("head"), TRAIN)
    model = ops_cnn(lambda z: keras.ops.flip(z, axis=-1))
    with pytest.warns(PromiseWarning, match=r"split_head: cannot tell whether 'flip' \(Flip\) "
                                            r"after 'head' keeps its units apart"):
        split_head(model, model.get_layer("head"), TRAIN)


def test_unsplit_head_leaves_the_optimizer_state_loadable(tmp_path):
    model = functional_cnn(seed=8)
    split_head(model, model.get_layer("head"), TRAIN)
    model.compile(OPTIMIZERS["adamw_decay"](), "mse")
    model.fit(X, Y, epochs=1, batch_size=32, verbose=0)
    slots = {v.path: keras.ops.convert_to_numpy(v).copy() for v in model.optimizer.variables}
    unsplit_head(model, model.get_layer("head"))
    model.save(tmp_path / "plain.keras")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        loaded = keras.saving.load_model(tmp_path / "plain.keras")
    assert not [r for r in record if "Skipping variable loading" in str(r.message)]
    loaded_slots = {v.path: keras.ops.convert_to_numpy(v) for v in loaded.optimizer.variables}
    assert len(loaded_slots) == 2 + 2 * len(loaded.trainable_variables)  # every variable's
    assert all(np.array_equal(loaded_slots[k], v) for k, v in slots.items())  # carried over


def test_a_linear_head_does_not_warn():
    model = softmax_cnn("tanh")
    with warnings.catch_warnings():
        warnings.simplefilter("error", PromiseWarning)
        split_head(model, model.get_layer("head"), TRAIN)


def test_a_second_split_in_one_model_is_refused():
    model = functional_cnn(seed=5)
    split_head(model, model.get_layer("head"), TRAIN)
    before = state(model)
    with pytest.raises(ValueError, match=r"^layer: .*'head' is split: unsplit_head"):
        split_head(model, model.get_layer("block").layers[-1], [0])
    assert state(model)[:2] == before[:2]


def test_unsplit_head_gives_back_plain_layers_and_flags(tmp_path):
    model = functional_cnn(seed=6)
    model.get_layer("conv").trainable = False  # the user's own choice survives the round trip
    flags = [layer.trainable for layer in model._flatten_layers()]
    split_head(model, model.get_layer("head"), TRAIN)
    model.compile(OPTIMIZERS["adamw_decay"](), "mse")
    model.fit(X, Y, epochs=1, batch_size=32, verbose=0)
    split_values = predict(model)
    path = tmp_path / "split.keras"
    model.save(path)
    returned = unsplit_head(model, model.get_layer("head"))
    assert [v.path for v in returned] == ["head/kernel", "head/bias"]
    assert [layer.trainable for layer in model._flatten_layers()] == flags
    assert all(v.constraint is None for v in model.weights)
    assert np.array_equal(predict(model), split_values)  # the current values, kept units frozen
    model.compile(OPTIMIZERS["adamw_decay"](), "mse")
    model.fit(X, Y, epochs=1, batch_size=32, verbose=0)
    assert np.abs(predict(model) - split_values)[:, KEEP].max() > 1e-4  # plain training again
    loaded = keras.saving.load_model(path)  # saved while split: unsplit it after loading
    unsplit_head(loaded, loaded.get_layer("head"))
    assert [layer.trainable for layer in loaded._flatten_layers()] == flags
    with pytest.raises(ValueError, match=r"^layer: .*not split"):
        unsplit_head(loaded, loaded.get_layer("head"))


LOAD = ("import os, sys; os.environ['KERAS_BACKEND'] = 'tensorflow'\n"
        "import keras, numpy as np\n"
        "for path in sys.argv[1:3]:\n"
        "    try:\n"
        "        model = keras.saving.load_model(path)\n"
        "    except Exception as error:\n"
        "        text = str(error)\n"
        "        tail = text[-300:].replace('\\n', ' ')\n"
        "        print('FAILED', type(error).__name__, len(text), tail)\n"
        "    else:\n"
        "        print('LOADED', 'selective_update' in sys.modules)\n"
        "        np.save(sys.argv[3], model.predict(np.load(sys.argv[4]), verbose=0))\n")


def test_keras_files_without_the_package(tmp_path):
    """Split: a short error naming selective_update (was a 21,584-character TypeError, mostly
    the frozen copy); after unsplit_head: plain Keras 3 loads it. One fresh process loads both."""
    model = functional_cnn(seed=7)
    split_head(model, model.get_layer("head"), TRAIN)
    model.save(tmp_path / "split.keras")
    unsplit_head(model, model.get_layer("head"))
    model.save(tmp_path / "plain.keras")
    np.save(tmp_path / "x.npy", X_EVAL)
    out = subprocess.run([sys.executable, "-c", LOAD, str(tmp_path / "split.keras"),
                          str(tmp_path / "plain.keras"), str(tmp_path / "y.npy"),
                          str(tmp_path / "x.npy")], capture_output=True, text=True, timeout=300,
                         env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert out.returncode == 0, out.stderr[-2000:]
    split_said, plain_said = out.stdout.splitlines()[:2]
    words = split_said.split()
    assert words[:2] == ["FAILED", "TypeError"] and int(words[2]) < 5000, split_said
    assert "selective_update" in split_said
    assert plain_said.split() == ["LOADED", "False"]
    # Another process may sum in another order: the same weights, equal to float32 rounding.
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), predict(model), rtol=1e-5, atol=1e-6)


def test_keras_3_works_after_the_tf1_module_imported_tensorflow():
    # This module imported selective_update.tf1 (TensorFlow) first.
    assert keras.__version__.startswith("3.") and keras.backend.backend() == "tensorflow"


TF_KERAS = ("import os, logging\n"
            "env = {k: os.environ.get(k) for k in ('TF_USE_LEGACY_KERAS', "
            "'TF_CPP_MIN_LOG_LEVEL', 'KERAS_BACKEND')}\n"
            "{imports}\n"
            "import tensorflow as tf\n"
            "layer = tf.keras.layers.Dense(3)\n"
            "assert layer(tf.ones((2, 4))).shape == (2, 3)\n"
            "from tensorflow import keras as tk\n"
            "assert tk.layers.Dense(2) is not None\n"
            "assert {k: os.environ.get(k) for k in env} == {**env, 'KERAS_BACKEND': "
            "env['KERAS_BACKEND'] or os.environ.get('KERAS_BACKEND')}, os.environ\n"
            "print('tf.keras ok', logging.getLogger('tensorflow').level)\n")


@pytest.mark.parametrize("imports, log_level", [
    ("import tensorflow as tf; import selective_update.keras", None),  # the lines
    pytest.param("import selective_update.tf1, selective_update.keras, selective_update.torch",
                 "0", marks=pytest.mark.slow),
])
def test_importing_the_package_leaves_tf_keras_and_the_environment(imports, log_level):
    """Fresh process: tf.keras works after the import, and TF_USE_LEGACY_KERAS,
    TF_CPP_MIN_LOG_LEVEL (unset, or the user's 0) are as they were."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_USE_LEGACY_KERAS", "TF_CPP_MIN_LOG_LEVEL")}
    if log_level is not None:
        env["TF_CPP_MIN_LOG_LEVEL"] = log_level
    code = TF_KERAS.replace("{imports}", imports)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("tf.keras ok")
