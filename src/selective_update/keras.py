"""Keep chosen outputs of your own Keras 3 model fixed: split_head (TensorFlow backend).

The mechanism, and why: trainable flags plus a kernel constraint, not a split layer.
- Every layer except the chosen Dense gets trainable=False, so no optimizer sees its variables
  (no gradient step, no weight decay, no slots), and BatchNorm runs in inference mode.
- The Dense keeps one kernel and one bias. Their constraint, `KeepUnits`, puts the kept units'
  columns back bitwise from a frozen copy. Keras applies a variable's constraint after every
  optimizer update, after Adam, momentum and (decoupled) weight decay. So a kept column cannot
  drift, whatever the optimizer did to it in between.
- A split layer would need the Dense replaced inside the user's graph: a rebuilt functional model,
  and no way to do it for a subclassed one. The constraint changes no graph, no layer class and no
  weight name or shape. The model saves and loads as .keras with its plain Dense, and the loaded
  model still keeps the promise, because the constraint and the flags are in the saved config.
- Costs, documented: the kept columns still get gradients, and the optimizer keeps slots for
  them (wasted work, never applied). The frozen copy lives in the constraint's config, so it is
  in the .keras file twice.
- Loading other weights into the layer later (load_weights) does not update that copy: the next
  step puts the old kept columns back. Call split_head on a fresh model instead.

`import selective_update.keras` before `keras.saving.load_model` so that KeepUnits is registered.
"""
from __future__ import annotations

import base64
import os

import numpy as np

from .quiet_import import quiet_import
from .validation import check_outputs, fail

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
keras = quiet_import("keras")


@keras.saving.register_keras_serializable(package="selective_update")
class KeepUnits(keras.constraints.Constraint):
    """Put the kept units (last axis) of a kernel or bias back to a frozen copy after updates."""

    def __init__(self, frozen, train, inner=None):
        if isinstance(frozen, dict):  # from get_config
            frozen = np.frombuffer(base64.b64decode(frozen["data"]),
                                   dtype=frozen["dtype"]).reshape(frozen["shape"])
        self.frozen = np.array(frozen)
        self.train = tuple(int(k) for k in train)
        if isinstance(inner, dict):
            inner = keras.constraints.deserialize(inner)
        self.inner = inner
        mask = np.zeros(self.frozen.shape[-1], dtype=bool)
        mask[list(self.train)] = True
        self.mask = mask  # broadcasts over the kernel's input axis

    def __call__(self, w):
        if self.inner is not None:
            w = self.inner(w)
        return keras.ops.where(self.mask, w, keras.ops.cast(self.frozen, w.dtype))

    def get_config(self):
        """Return a JSON-able config; the frozen copy is stored exactly, as base64 bytes."""
        frozen = np.ascontiguousarray(self.frozen)
        return {"frozen": {"dtype": frozen.dtype.str, "shape": list(frozen.shape),
                           "data": base64.b64encode(frozen.tobytes()).decode("ascii")},
                "train": list(self.train),
                "inner": None if self.inner is None else keras.constraints.serialize(self.inner)}


def _describe(layer):
    """Name a layer in one line."""
    return f"{type(layer).__name__}(name={getattr(layer, 'name', '?')!r})"


def _freeze_all_but(root, target):
    """Set trainable=False on every layer under root except target and the layers holding it."""
    for layer in root._flatten_layers(include_self=False, recursive=False):
        if layer is target:
            continue
        if any(sub is target for sub in layer._flatten_layers()):
            _freeze_all_but(layer, target)
        else:
            layer.trainable = False


def split_head(model, layer, train) -> list:
    """Let only the `train` units of the Dense `layer` change; freeze everything else in model.

    Call it on a built model (any warm start before is fine), then compile and fit: every kept
    output of model stays bitwise unchanged under any optimizer, weight decay or momentum.
    Returns [layer.kernel, layer.bias] (the variables that still train, in their train units).
    """
    if not isinstance(model, keras.Model):
        fail("model", type(model).__name__, "a keras.Model")
    if not isinstance(layer, keras.layers.Dense):
        fail("layer", _describe(layer), "a keras.layers.Dense inside model")
    if not any(sub is layer for sub in model._flatten_layers()):
        fail("layer", _describe(layer), "a Dense inside model (this one is not in it)")
    if not layer.built:
        fail("layer", _describe(layer), "a built Dense (build or call the model first)")
    if getattr(layer, "quantization_mode", None) or getattr(layer, "lora_enabled", False):
        fail("layer", _describe(layer), "a Dense without quantization or LoRA")
    if isinstance(layer.kernel.constraint, KeepUnits):
        fail("layer", _describe(layer), "a Dense not split yet (split_head split this one already)")
    train = check_outputs("train", train, layer.units)
    # Everything validated: from here on the model changes.
    _freeze_all_but(model, layer)
    layer.trainable = True
    trained = [layer.kernel] + ([layer.bias] if layer.use_bias else [])
    for variable, attribute in zip(trained, ("kernel_constraint", "bias_constraint")):
        constraint = KeepUnits(keras.ops.convert_to_numpy(variable), train, variable.constraint)
        variable.constraint = constraint
        setattr(layer, attribute, constraint)  # saved in the layer's config
    for variable in model.trainable_variables:  # a subclassed model's own weights, if any
        if not any(variable is v for v in trained):
            variable.trainable = False
    model.train_function = None  # a compiled model retraces fit with the new trainable list
    return trained
