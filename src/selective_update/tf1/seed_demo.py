"""The seed's TF1 demo as written: placeholders, one GradientDescentOptimizer, three minimize();
then the question's direct answer, tf.gradients(out, var_list, grad_ys=G') on the same optimizer.
"""
from __future__ import annotations

from .. import core
from ..algorithms import compensated
from . import ops
from .framework import tf, v1
from .framework import session
from .runner import NAME


def seed_demo(params, data, *, lr=0.1, steps=1, keep=(0,), train=(1,)) -> core.SeedDemo:
    """Replay the seed's demo as written: one GradientDescentOptimizer, three minimize() ops;
    then train_op_compensated: G = [0, -1] per sample becomes G' = [-alpha, -1] (alpha in the
    graph) and tf.gradients(out, var_list, grad_ys=G') is applied."""
    config = core.check_run("all_params", NAME, params=params, data=data, keep=keep,
                            train=train, optimizer="sgd", lr=lr, steps=steps)
    if core.n_layers(params) != 2:
        raise ValueError("params: the seed's demo has one hidden layer; allowed: W1, b1, W2, b2")
    dt = tf.float64
    n, n_out = data.y.shape
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(dt, (n, data.x.shape[1]), name="x")
        y = v1.placeholder(dt, (n, n_out), name="y")
        W1 = v1.Variable(params["W1"], name="W1", use_resource=True)
        b1 = v1.Variable(params["b1"], name="b1", use_resource=True)
        W2 = v1.Variable(params["W2"], name="W2", use_resource=True)
        b2 = v1.Variable(params["b2"], name="b2", use_resource=True)
        hidden = tf.sigmoid(tf.matmul(x, W1) + b1)
        out = tf.matmul(hidden, W2) + b2
        mask = tf.constant(core.output_mask(n_out, config.train), dt)
        loss = tf.reduce_mean(tf.square(out - y))
        loss2 = tf.reduce_mean(tf.square(mask * out - mask * y))
        # lr as a float64 tensor: the seed's Python float would become float32 0.1 (1e-8 off)
        optimizer = v1.train.GradientDescentOptimizer(tf.constant(config.lr, dt))
        train_ops = {"train_op2": optimizer.minimize(loss2, var_list=[W2, b2]),
                     "train_op12": optimizer.minimize(loss, var_list=[W2, b2]),
                     "train_op_all": optimizer.minimize(loss)}
        G = tf.constant(core.question_gradient(n, n_out, config.train), dt)
        G_prime, alpha = compensated.compensate(ops, [W1, W2], [x, hidden], G, config.keep)
        var_list = [W1, b1, W2, b2]
        grads = tf.gradients(out, var_list, grad_ys=G_prime)
        # G' is a constant's correction, so nothing orders the forward pass's reads before the
        # updates; every gradient first (as minimize's loss does), then apply
        with tf.control_dependencies(grads):
            train_ops[core.COMPENSATED_PHASE] = optimizer.apply_gradients(zip(grads, var_list))
        init = v1.global_variables_initializer()
    feed = {x: data.x, y: data.y}
    with session(graph) as sess:
        sess.run(init)
        record = [tuple(sess.run([hidden, out], feed))]
        for phase, _ in core.SEED_PHASES:
            for _ in range(config.steps):
                sess.run(train_ops[phase], feed)
            record.append(tuple(sess.run([hidden, out], feed)))
        compensation = sess.run([alpha, G_prime], feed)  # before the phase's first step
        for _ in range(config.steps):
            sess.run(train_ops[core.COMPENSATED_PHASE], feed)
        record.append(tuple(sess.run([hidden, out], feed)))
    return core.make_seed_demo(config, record, *compensation)
