"""The TF1 helpers in a graph written here (a small CNN through tf.nn), not the study's MLP."""
import numpy as np
import pytest

from selective_update.tf1 import dense_heads, masked_loss
from selective_update.tf1.framework import tf, v1

KEEP, TRAIN = [0, 2, 3], [1, 4]
RNG = np.random.default_rng(0)
X, X_EVAL = RNG.random((48, 8, 8, 1)), RNG.random((40, 8, 8, 1))
Y = RNG.normal(size=(48, 5))


def f64(value):
    return tf.constant(value, tf.float64)


def build(name="head"):
    """A user's graph: conv -> ReLU -> dense_heads, with its placeholders and heads."""
    x = v1.placeholder(tf.float64, (None, 8, 8, 1), name="x")
    y = v1.placeholder(tf.float64, (None, 5), name="y")
    filters = v1.Variable(np.random.default_rng(1).normal(size=(3, 3, 1, 3)), name="conv",
                          use_resource=True)
    h = tf.reshape(tf.nn.relu(tf.nn.conv2d(x, filters, 1, "VALID")), (-1, 3 * 6 * 6))
    out, heads = dense_heads(h, 5, name, seed=2)
    return x, y, out, heads


def session(graph):
    return v1.Session(graph=graph, config=v1.ConfigProto(inter_op_parallelism_threads=1,
                                                         intra_op_parallelism_threads=1))


@pytest.mark.parametrize("optimizer", ["adam", "momentum"])
def test_dense_heads_var_list_keeps_outputs_bitwise(optimizer):
    graph = tf.Graph()
    with graph.as_default():
        x, y, out, heads = build()
        lr = f64(0.02)
        opt = (v1.train.AdamOptimizer(lr) if optimizer == "adam"
               else v1.train.MomentumOptimizer(lr, f64(0.9)))
        loss = tf.reduce_mean(tf.square(out - y))
        warm = opt.minimize(loss)  # every variable: the kept heads get slots too
        trained = heads.var_list(TRAIN)
        decay = 0.1 * tf.add_n([tf.reduce_sum(tf.square(v)) for v in trained])
        step = opt.minimize(loss + decay, var_list=trained)  # full loss, L2, warm slots
        init = v1.global_variables_initializer()
    with session(graph) as sess:
        sess.run(init)
        for _ in range(3):
            sess.run(warm, {x: X, y: Y})
        before = sess.run(out, {x: X_EVAL})
        for _ in range(5):
            sess.run(step, {x: X, y: Y})
        after = sess.run(out, {x: X_EVAL})
    assert np.array_equal(after[:, KEEP], before[:, KEEP])
    assert np.abs(after[:, TRAIN] - before[:, TRAIN]).max() > 1e-2


def test_masked_loss_is_exact_only_for_plain_gradient_descent():
    graph = tf.Graph()
    with graph.as_default():
        x, y, out, heads = build()
        loss2 = masked_loss(out, y, TRAIN)
        every_head = heads.var_list(range(5))  # the answer's var_list=[W2, b2]
        gd = v1.train.GradientDescentOptimizer(f64(0.1)).minimize(loss2, var_list=every_head)
        momentum = v1.train.MomentumOptimizer(f64(0.1), f64(0.9))
        warm = momentum.minimize(tf.reduce_mean(tf.square(out - y)), var_list=every_head)
        masked_momentum = momentum.minimize(loss2, var_list=every_head)
        init = v1.global_variables_initializer()
    with session(graph) as sess:
        sess.run(init)
        before = sess.run(out, {x: X_EVAL})
        for _ in range(3):
            sess.run(gd, {x: X, y: Y})
        after_gd = sess.run(out, {x: X_EVAL})
        assert np.array_equal(after_gd[:, KEEP], before[:, KEEP])
        assert np.abs(after_gd[:, TRAIN] - before[:, TRAIN]).max() > 1e-3
        sess.run(warm, {x: X, y: Y})
        before = sess.run(out, {x: X_EVAL})
        sess.run(masked_momentum, {x: X, y: Y})  # zero gradient, non-zero momentum slot
        assert np.abs(sess.run(out, {x: X_EVAL})[:, KEEP] - before[:, KEEP]).max() > 1e-3


def test_checkpoint_names_and_round_trip(tmp_path):
    graph = tf.Graph()
    with graph.as_default():
        x, y, out, heads = build("my_head")
        step = v1.train.GradientDescentOptimizer(f64(0.1)).minimize(
            masked_loss(out, y, TRAIN), var_list=heads.var_list(TRAIN))
        init, saver = v1.global_variables_initializer(), v1.train.Saver()
    names = [f"my_head/kernel_{k}" for k in range(5)] + [f"my_head/bias_{k}" for k in range(5)]
    assert heads.checkpoint_names() == names
    with session(graph) as sess:
        sess.run(init)
        sess.run(step, {x: X, y: Y})
        expected = sess.run(out, {x: X_EVAL})
        path = saver.save(sess, str(tmp_path / "model"))
    stored = dict(tf.train.list_variables(path))
    assert all(stored[n] == ([3 * 6 * 6] if "kernel" in n else []) for n in names)
    fresh = tf.Graph()
    with fresh.as_default():
        x, _, out, _ = build("my_head")
        saver = v1.train.Saver()
    with session(fresh) as sess:
        saver.restore(sess, path)
        assert np.array_equal(sess.run(out, {x: X_EVAL}), expected)


def test_bad_input_is_refused_before_the_graph_changes():
    graph = tf.Graph()
    with graph.as_default():
        x, y, out, heads = build()
        h = v1.placeholder(tf.float64, (None, 4))
        cases = [
            (lambda: dense_heads(h, 3, "head"), "name"),  # made already
            (lambda: dense_heads(h, 3, "a/b"), "name"),
            (lambda: dense_heads(h, 0, "c"), "units"),
            (lambda: dense_heads(x, 3, "d"), "inputs"),  # 4-D
            (lambda: dense_heads(h, 3, "e", kernel=np.zeros((3, 3))), "kernel"),
            (lambda: heads.var_list([5]), "train"),
            (lambda: heads.var_list([]), "train"),
            (lambda: heads.var_list([1, 1]), "train"),
            (lambda: masked_loss(out, y, [7]), "train"),
            (lambda: masked_loss(out, np.zeros((2, 3)), TRAIN), "targets"),
        ]
        for call, name in cases:
            n_ops = len(graph.get_operations())
            with pytest.raises(ValueError, match=rf"^{name}: got .*; allowed: ") as info:
                call()
            assert "\n" not in str(info.value)
            assert len(graph.get_operations()) == n_ops


def test_tf_keras_works_in_the_process_that_imported_the_tf1_helpers():
    """quiet_import set TF_USE_LEGACY_KERAS only while TensorFlow imported (left set, tf.keras
    would fail for the whole process); a fresh process checks it too (tests/test_keras.py)."""
    assert tf.keras.layers.Dense(3)(tf.ones((2, 4))).shape == (2, 3)
