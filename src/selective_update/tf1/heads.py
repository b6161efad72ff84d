"""Keep chosen outputs of your own TF1 graph fixed: dense_heads (approach a), masked_loss (b).

dense_heads builds the TF1 answer's first approach into any graph: one kernel vector and one bias
per output unit, joined by tf.stack, so the optimizer can be given only the trained units' heads
(`minimize(loss, var_list=heads.var_list(train))`); the kept units' variables are never in a
var_list, so no optimizer slot, L2 term or momentum ever touches them.

Checkpoint names (tf.compat.v1.train.Saver, tf.train.Checkpoint by variable): unit k of
`dense_heads(x, units, "head")` is `head/kernel_{k}` (shape (d_in,)) and `head/bias_{k}` (shape ()),
k = 0..units-1.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .framework import tf
from ..validation import check_int, check_outputs, fail


v1 = tf.compat.v1


@dataclass(frozen=True)
class Heads:
    """The per-unit variables dense_heads made: kernels[k] (d_in,) and biases[k] () of unit k."""

    name: str
    kernels: tuple
    biases: tuple

    @property
    def units(self) -> int:
        return len(self.kernels)

    def var_list(self, train) -> list:
        """Return the trained units' variables, for minimize(..., var_list=...)."""
        train = check_outputs("train", train, self.units)
        return [self.kernels[k] for k in train] + [self.biases[k] for k in train]

    def checkpoint_names(self) -> list:
        """Return the variables' names as a checkpoint stores them, kernels first."""
        return [v.name.split(":")[0] for v in self.kernels + self.biases]

    def kernel(self):
        """Return the (d_in, units) kernel as one tensor (tf.stack of the heads)."""
        return tf.stack(self.kernels, axis=1)

    def bias(self):
        """Return the (units,) bias as one tensor."""
        return tf.stack(self.biases)


def _check_2d(name, tensor):
    """Check a float 2-D tensor with a known last dimension; return that dimension."""
    if not tf.is_tensor(tensor) and not isinstance(tensor, tf.Variable):
        fail(name, type(tensor).__name__, "a float 2-D tensor (batch, features) of the graph")
    shape = tensor.shape
    if shape.rank != 2 or shape[-1] is None or not tensor.dtype.is_floating:
        fail(name, f"a {tensor.dtype.name} tensor of shape {shape}",
             "a float 2-D tensor (batch, features) with a known feature size")
    return int(shape[-1])


def _name_is_taken(name):
    if tf.executing_eagerly():
        return False  # eager variables are not looked up by name
    graph = v1.get_default_graph()
    return graph.unique_name(name, mark_as_used=False) != name or any(
        v.name.startswith(f"{name}/") for v in v1.global_variables())


def _initial(name, value, shape, dtype):
    value = np.asarray(value)
    if value.shape != shape or not np.all(np.isfinite(value)):
        fail(name, f"an array of shape {value.shape}", f"finite numbers of shape {shape}")
    return value.astype(dtype)


def dense_heads(inputs, units, name, *, kernel=None, bias=None, seed=0):
    """Build a dense layer as one variable per output unit; return (outputs, heads).

    outputs = inputs @ tf.stack(kernels, axis=1) + tf.stack(biases). kernel (d_in, units) and
    bias (units,): starting values (e.g. a trained layer's); by default Glorot-uniform from
    numpy's generator seeded with `seed`, and zeros.
    """
    d_in = _check_2d("inputs", inputs)
    units = check_int("units", units, 1)
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9.][A-Za-z0-9_.\-]*", name):
        fail("name", name, "a name of letters, digits, '_', '-', '.' (TF scope rules, no '/')")
    if _name_is_taken(name):
        fail("name", name, "a name this graph does not use yet (dense_heads made it already?)")
    dtype = inputs.dtype.as_numpy_dtype
    if kernel is None:
        limit = np.sqrt(6.0 / (d_in + units))
        kernel = np.random.default_rng(seed).uniform(-limit, limit, (d_in, units))
    kernel = _initial("kernel", kernel, (d_in, units), dtype)
    bias = _initial("bias", np.zeros(units) if bias is None else bias, (units,), dtype)
    with tf.name_scope(f"{name}/"):  # trailing '/': exactly this scope, no _1 suffix
        kernels = tuple(v1.Variable(kernel[:, k], name=f"kernel_{k}", use_resource=True)
                        for k in range(units))
        biases = tuple(v1.Variable(bias[k], name=f"bias_{k}", use_resource=True)
                       for k in range(units))
        heads = Heads(name, kernels, biases)
        outputs = tf.add(tf.matmul(inputs, heads.kernel()), heads.bias(), name="outputs")
    return outputs, heads


def masked_loss(outputs, targets, train):
    """Return mean((mask * (outputs - targets))**2), mask 1 on the train outputs: approach (b).

    Its gradient is zero for the other outputs, which keeps them fixed only with plain gradient
    descent, var_list restricted to the last layer, no L2 term and no optimizer state left from
    earlier steps (momentum and Adam slots move zero-gradient variables).
    """
    n_out = _check_2d("outputs", outputs)
    train = check_outputs("train", train, n_out)
    if not tf.is_tensor(targets) and not isinstance(targets, (np.ndarray, list, tuple)):
        fail("targets", type(targets).__name__, "a tensor or array shaped like outputs")
    shape = targets.shape if tf.is_tensor(targets) else tf.TensorShape(np.shape(targets))
    if not shape.is_compatible_with(outputs.shape):
        fail("targets", f"shape {shape}", f"the shape of outputs, {outputs.shape}")
    targets = tf.convert_to_tensor(targets, dtype=outputs.dtype)  # checked first: no stray op
    mask = np.zeros(n_out, dtype=outputs.dtype.as_numpy_dtype)
    mask[list(train)] = 1.0
    return tf.reduce_mean(tf.square(tf.constant(mask) * (outputs - targets)))
