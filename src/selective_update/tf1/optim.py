"""TF1 optimizers that match the torch ones (re-exported by selective_update.tf1)."""
from __future__ import annotations

from ..settings import ADAM_BETAS, ADAM_EPS, MOMENTUM
from .framework import tf

v1 = tf.compat.v1


class TorchEpsAdamOptimizer(v1.train.AdamOptimizer):
    """AdamOptimizer with torch's eps placement: pass eps * sqrt(1 - beta2^t) as epsilon hat."""

    def _resource_apply_dense(self, grad, var):
        dt = grad.dtype.base_dtype
        beta1_power, beta2_power = (tf.cast(p, dt) for p in self._get_beta_accumulators())
        return tf.raw_ops.ResourceApplyAdam(
            var=var.handle, m=self.get_slot(var, "m").handle, v=self.get_slot(var, "v").handle,
            beta1_power=beta1_power, beta2_power=beta2_power, lr=tf.cast(self._lr_t, dt),
            beta1=tf.cast(self._beta1_t, dt), beta2=tf.cast(self._beta2_t, dt),
            epsilon=tf.cast(self._epsilon_t, dt) * tf.sqrt(1.0 - beta2_power), grad=grad,
            use_locking=self._use_locking)


def v1_optimizer(name, lr, *, stock_adam=False):
    """Build the tf.compat.v1.train optimizer that matches torch_optimizer of the same name."""
    # Hyperparameters as tensors of lr's dtype: a Python float would become a float32 constant
    # (0.9 -> 0.899999976) and cost float64 runs ~1e-7 (momentum) to ~1e-4 (adam) of agreement.
    def c(value):
        return tf.constant(value, lr.dtype)

    if name == "sgd":
        return v1.train.GradientDescentOptimizer(lr)
    if name == "momentum":
        return v1.train.MomentumOptimizer(lr, c(MOMENTUM))
    beta1, beta2 = ADAM_BETAS
    adam = v1.train.AdamOptimizer if stock_adam else TorchEpsAdamOptimizer
    return adam(lr, c(beta1), c(beta2), c(ADAM_EPS))


def apply_with_decay(opt, name, grads, variables, lr, weight_decay, before):
    """Return the op applying opt to variables after the ops `before`, with weight decay as torch
    applies it: for sgd, momentum and adam weight_decay * var is added to the gradient (coupled
    L2); adamw decays var *= 1 - lr * weight_decay before the Adam update (decoupled)."""
    if name == "adamw":
        with tf.control_dependencies(before):
            before = [tf.group(*[v.assign(v.read_value() * (1.0 - lr * weight_decay))
                                 for v in variables])]
    else:
        grads = [g + weight_decay * v for g, v in zip(grads, variables)]
    with tf.control_dependencies(before):
        return opt.apply_gradients(list(zip(grads, variables)))
