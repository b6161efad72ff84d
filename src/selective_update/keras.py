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
  model still keeps the promise, because the constraint and the flags are in the saved config;
  the frozen copy is saved in the weights file, next to the kernel (the config only names the
  trained units), so a file saved while split that is loaded without this package stops with a
  short TypeError naming selective_update>KeepUnits. unsplit_head first to share a plain file.
- Costs, documented: the kept columns still get gradients, and the optimizer keeps slots for
  them (wasted work, never applied). The frozen copy is in the weights file twice.
- Loading a plain weights file into the split layer later (load_weights) does not update that
  copy: the next step puts the old kept columns back. Call split_head on a fresh model instead.
- A softmax on the layer's units mixes them: the kept units' logits stay bitwise, their
  probabilities do not (split_head warns).

`import selective_update.keras` before `keras.saving.load_model` so that KeepUnits is registered.
TensorFlow is imported the quiet way (quiet_import), which leaves tf.keras and the environment as
they were.
"""
from __future__ import annotations

import base64
import os
import warnings

import numpy as np

from .notices import PromiseWarning
from .quiet_import import quiet_import
from .validation import check_outputs, fail

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
keras = quiet_import("keras")


# Keras walks KerasSaveable attributes of a layer when it saves and loads weights: the frozen copy
# travels in the weights file, next to the kernel it keeps, and the layer config stays short.
try:
    from keras.src.saving.keras_saveable import KerasSaveable
except ImportError:  # another Keras: the frozen copy goes into the config (the older format)
    KerasSaveable = object


@keras.saving.register_keras_serializable(package="selective_update")
class KeepUnits(keras.constraints.Constraint, KerasSaveable):
    """Put the kept units (last axis) of a kernel or bias back to a frozen copy after updates."""

    def __init__(self, frozen=None, train=(), inner=None):
        if isinstance(frozen, dict):  # a config saved by the older format
            frozen = np.frombuffer(base64.b64decode(frozen["data"]),
                                   dtype=frozen["dtype"]).reshape(frozen["shape"])
        self.frozen = None if frozen is None else np.array(frozen)
        self.train = tuple(int(k) for k in train)
        if isinstance(inner, dict):
            inner = keras.constraints.deserialize(inner)
        self.inner = inner
        self.flags = None  # trainable flags of the model before split_head, for unsplit_head

    def __call__(self, w):
        if self.inner is not None:
            w = self.inner(w)
        if self.frozen is None:
            raise ValueError("KeepUnits: got no frozen copy of the kept units; allowed: a "
                             "constraint made by split_head or loaded with the model's weights")
        mask = np.zeros(self.frozen.shape[-1], dtype=bool)
        mask[list(self.train)] = True  # broadcasts over the kernel's input axis
        return keras.ops.where(mask, w, keras.ops.cast(self.frozen, w.dtype))

    def get_config(self):
        """Return a JSON-able config: the trained units (the frozen copy is in the weights)."""
        config = {"train": list(self.train),
                  "inner": None if self.inner is None else keras.constraints.serialize(
                      self.inner)}
        if KerasSaveable is object:
            frozen = np.ascontiguousarray(self.frozen)
            config["frozen"] = {"dtype": frozen.dtype.str, "shape": list(frozen.shape),
                                "data": base64.b64encode(frozen.tobytes()).decode("ascii")}
        return config

    def _obj_type(self):
        return "Operation"  # the kind whose attributes Keras's saving skips (none of ours)

    def save_own_variables(self, store):
        """Write the frozen copy (and the flags unsplit_head restores) into the weights file."""
        store["frozen"] = self.frozen
        if self.flags is not None:
            store["flags"] = np.asarray(self.flags, dtype=np.int8)

    def load_own_variables(self, store):
        """Read the frozen copy back; a plain weights file (no entry) leaves it as it is."""
        if "frozen" in store:
            self.frozen = np.array(store["frozen"])
        if "flags" in store:
            self.flags = [bool(f) for f in np.asarray(store["flags"])]

    def __reduce__(self):  # KerasSaveable pickles through a .keras archive; a constraint is small
        state = (self.frozen, self.train, self.inner)
        return (_rebuild_keep_units, (state, self.flags))


def _rebuild_keep_units(state, flags):
    constraint = KeepUnits(*state)
    constraint.flags = flags
    return constraint


def _describe(layer):
    """Name a layer in one line."""
    return f"{type(layer).__name__}(name={getattr(layer, 'name', '?')!r})"


def _check_layer(model, layer):
    if not isinstance(model, keras.Model):
        fail("model", type(model).__name__, "a keras.Model")
    if not isinstance(layer, keras.layers.Dense):
        fail("layer", _describe(layer), "a keras.layers.Dense inside model")
    if not any(sub is layer for sub in model._flatten_layers()):
        fail("layer", _describe(layer), "a Dense inside model (this one is not in it)")


def _freeze_all_but(root, target):
    """Set trainable=False on every layer under root except target and the layers holding it."""
    for layer in root._flatten_layers(include_self=False, recursive=False):
        if layer is target:
            continue
        if any(sub is target for sub in layer._flatten_layers()):
            _freeze_all_but(layer, target)
        else:
            layer.trainable = False


def _flags(model):
    """Return every layer's and variable's trainable flag, in a fixed order."""
    return ([layer.trainable for layer in model._flatten_layers()]
            + [v.trainable for v in model.weights])


def _set_flags(model, flags):
    layers, variables = model._flatten_layers(), model.weights
    for layer, flag in zip(layers, flags):  # outer layers first: a layer's flag cascades inward
        layer.trainable = flag
    for variable, flag in zip(variables, flags[len(layers):]):
        variable.trainable = flag


MIXING = ("softmax", "log_softmax")  # activations whose output for one unit reads every unit
# What may follow the split Dense, by class name (layers and keras.ops alike): ops that read each
# unit on its own keep the promise readable after them; ops that mix units void it after them.
UNIT_WISE = frozenset(
    "Activation ReLU LeakyReLU PReLU ELU Dropout AlphaDropout GaussianDropout GaussianNoise "
    "Identity Rescaling Reshape Flatten Concatenate Cast Relu Relu6 Sigmoid Tanh Elu Selu Gelu "
    "Silu Swish Softplus Softsign LeakyRelu HardSigmoid HardSilu HardTanh Mish Exp Log Log1p Abs "
    "Negative Square Sqrt Clip Add Subtract Multiply Divide TrueDivide Maximum Minimum Power "
    "Where".split())
MIXING_OPS = frozenset(
    "Softmax LogSoftmax Dense EinsumDense LayerNormalization UnitNormalization "
    "GroupNormalization Normalize Sum Mean Max Min Logsumexp Matmul Dot Einsum Argmax Argmin "
    "Sort TopK Cumsum Cumprod".split())


def _activation_name(op):
    return getattr(getattr(op, "activation", None), "__name__", "")


def _after(layer):
    """Return ([what mixes the layer's units after it], [ops it cannot tell about]), walking
    the functional graph from the layer to the model's outputs (a subclassed model's call()
    leaves no graph to walk)."""
    mixing, unknown = [], []
    if _activation_name(layer) in MIXING:
        mixing.append(f"its activation {_activation_name(layer)}")
    seen, todo = set(), [layer]
    while todo:
        for node in getattr(todo.pop(), "_outbound_nodes", []):
            op = getattr(node, "operation", None)
            if op is None or id(op) in seen:
                continue
            seen.add(id(op))
            kind = type(op).__name__
            if kind in MIXING_OPS or _activation_name(op) in MIXING:
                mixing.append(f"{op.name!r} after it ({kind})")
            elif kind in UNIT_WISE:
                todo.append(op)
            else:
                unknown.append(f"{op.name!r} ({kind})")
    return mixing, unknown


def split_head(model, layer, train) -> list:
    """Let only the `train` units of the Dense `layer` change; freeze everything else in model.

    Call it on a built model (any warm start before is fine), then compile and fit: every kept
    unit of the layer stays bitwise unchanged under any optimizer, weight decay or momentum.
    The promise is on the layer's units before any softmax: a softmax activation, or any layer
    or keras.ops call between it and the outputs that mixes units (softmax, normalization, a
    Dense, a reduction), moves the kept values after it as the trained units learn; split_head
    says so in a PromiseWarning (use activation=None and from_logits=True), and says which ops
    it cannot classify. A subclassed model's call() leaves no graph to walk: nothing is checked.
    Returns [layer.kernel, layer.bias] (the variables that still train, in their train units).
    unsplit_head undoes it.
    """
    _check_layer(model, layer)
    if not layer.built:
        fail("layer", _describe(layer), "a built Dense (build or call the model first)")
    if getattr(layer, "quantization_mode", None) or getattr(layer, "lora_enabled", False):
        fail("layer", _describe(layer), "a Dense without quantization or LoRA")
    if isinstance(layer.kernel.constraint, KeepUnits):
        fail("layer", _describe(layer), "a Dense not split yet (split_head split this one already)")
    split = [sub.name for sub in model._flatten_layers() if isinstance(sub, keras.layers.Dense)
             and isinstance(getattr(sub.kernel, "constraint", None), KeepUnits)]
    if split:
        fail("layer", _describe(layer), f"a Dense of a model without a split layer ({split[0]!r} "
             "is split: unsplit_head(model, that layer) first)")
    train = check_outputs("train", train, layer.units)
    # Everything validated: from here on the model changes.
    flags = _flags(model)
    _freeze_all_but(model, layer)
    layer.trainable = True
    trained = [layer.kernel] + ([layer.bias] if layer.use_bias else [])
    for variable, attribute in zip(trained, ("kernel_constraint", "bias_constraint")):
        constraint = KeepUnits(keras.ops.convert_to_numpy(variable), train, variable.constraint)
        constraint.flags = flags
        variable.constraint = constraint
        setattr(layer, attribute, constraint)  # saved in the layer's config
    for variable in model.trainable_variables:  # a subclassed model's own weights, if any
        if not any(variable is v for v in trained):
            variable.trainable = False
    model.train_function = None  # a compiled model retraces fit with the new trainable list
    mixing, unknown = _after(layer)
    if mixing:
        warnings.warn(f"split_head: {', '.join(mixing)} mixes the units of {layer.name!r}: the "
                      "kept units' values before it stay bitwise, but after it they move as the "
                      "trained units learn; split a Dense with activation=None and put the softmax "
                      "in the loss (from_logits=True)", PromiseWarning, stacklevel=2)
    if unknown:
        warnings.warn(f"split_head: cannot tell whether {', '.join(unknown)} after "
                      f"{layer.name!r} keeps its units apart; the kept units stay bitwise at "
                      f"{layer.name!r}, check what follows it before reading them after",
                      PromiseWarning, stacklevel=2)
    return trained


def unsplit_head(model, layer) -> list:
    """Undo split_head: the layer's plain constraints back, every trainable flag as before.

    The kernel and bias keep their current values (the kept units' frozen values, the trained
    units' values). A compiled model's optimizer gets slots for every variable that trains now,
    its state carried over where it had one. The model then saves to a .keras file that Keras
    loads without this package, optimizer state included. A model loaded from a file saved
    while split gets the flags saved with it.
    Returns [layer.kernel, layer.bias].
    """
    _check_layer(model, layer)
    if not isinstance(layer.kernel.constraint, KeepUnits):
        fail("layer", _describe(layer), "a Dense that split_head split (this one is not split)")
    flags = layer.kernel.constraint.flags
    variables = [layer.kernel] + ([layer.bias] if layer.use_bias else [])
    for variable, attribute in zip(variables, ("kernel_constraint", "bias_constraint")):
        inner = variable.constraint.inner
        variable.constraint = inner
        setattr(layer, attribute, inner)
    if flags is not None and len(flags) == len(model._flatten_layers()) + len(model.weights):
        _set_flags(model, flags)
    else:  # no record (another model object): Keras's default, everything trainable
        _set_flags(model, [True] * (len(model._flatten_layers()) + len(model.weights)))
    _rebuild_optimizer(model)
    model.train_function = None
    return variables


def _rebuild_optimizer(model):
    """Give a compiled model's built optimizer slots for every trainable variable (the split
    built them for the Dense alone), keeping the values it has by variable path: the saved file
    then loads with its optimizer state whole."""
    old = getattr(model, "optimizer", None)
    if old is None or not getattr(old, "built", False):
        return
    new = type(old).from_config(old.get_config())
    new.build(model.trainable_variables)
    values = {v.path: v for v in old.variables}
    for variable in new.variables:
        value = values.get(variable.path)
        if value is not None and tuple(value.shape) == tuple(variable.shape):
            variable.assign(value)
    model.optimizer = new
