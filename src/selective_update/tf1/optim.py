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
