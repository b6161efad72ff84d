"""Framework-free core: data, strategies and their promises, masks, validation, metrics."""
from __future__ import annotations

import numbers
import warnings
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

from .options import OPTION_USERS, REFERENCE_USERS, check_options, check_reference
from .settings import RESTORE_TOL
from .validation import check_choice, check_disjoint, check_int, check_outputs, check_real, fail

OPTIMIZERS = ("sgd", "momentum", "adam", "adamw")
FRAMEWORKS = ("tf1", "torch")
DTYPES = ("float32", "float64")
# exact: every input; batch_exact / reference_exact: within BATCH_EXACT_TOL on the batch / the
# reference inputs; first_order / reference_first_order: the leak there is second order; none.
PROMISES = ("exact", "batch_exact", "first_order", "none", "reference_exact",
            "reference_first_order")
DEVICES = ("cpu", "cuda")

@dataclass(frozen=True)
class Strategy:
    """Describe one way of training the `train` outputs while leaving `keep` alone."""

    name: str
    summary: str
    source: str
    trains: str  # "all" | "last_layer" | "train_heads": which variables the optimizer updates
    loss: str  # "full" | "masked" | "output_gradient"
    projected: bool = False
    corrected: bool = False
    subspace: bool = False  # the step is projected off each layer's protected input directions


STRATEGIES = MappingProxyType({s.name: s for s in (
    Strategy("all_params", "Full loss on every output; the optimizer updates every variable.",
             "seed: train_op_all", trains="all", loss="full"),
    Strategy("last_layer", "Full loss; only the last layer (W2, b2) is in var_list.",
             "seed, old answer: train_op12", trains="last_layer", loss="full"),
    Strategy("output_gradient",
             "Back-propagate G (0 on kept outputs, -1/n per sample on trained outputs) to every "
             "variable: tf.gradients(out, vars, grad_ys=G) / out.backward(G).",
             "the question itself", trains="all", loss="output_gradient"),
    Strategy("masked_loss", "Loss on mask * out (mask is 1 on trained outputs); every variable.",
             "seed's mask without var_list", trains="all", loss="masked"),
    Strategy("masked_last_layer",
             "Loss on mask * out; only the last layer (W2, b2) is in var_list.",
             "seed: train_op2", trains="last_layer", loss="masked"),
    Strategy("split_head",
             "One variable per output unit, joined with tf.stack / torch.stack; only the trained "
             "heads are given to the optimizer.",
             "seed: first approach (var_list=[W_h_to_out2, b_h_to_out2])", trains="train_heads",
             loss="masked"),
    Strategy("null_space",
             "Masked loss, every parameter; the optimizer's proposed step is projected onto the "
             "null space of the kept outputs' Jacobian over the batch (layer-wise Gram form).",
             "beyond the answer (OGD/GPM family)", trains="all", loss="masked", projected=True),
    Strategy("null_space_corrected",
             "null_space, then Gauss-Newton steps (minimum-norm, layer-wise Gram form) until the "
             "kept outputs on the batch are back to their values before the step.",
             "beyond the answer", trains="all", loss="masked", projected=True, corrected=True),
    Strategy("layer_subspace",
             "Masked loss, every parameter; the optimizer's step of every hidden layer and of the "
             "kept output columns is projected off the top singular directions (energy) of that "
             "layer's inputs (with a 1 for the bias) on the protected inputs, taken once at start.",
             "GPM (Saha et al., ICLR 2021), Adam-NSCL (Wang et al., CVPR 2021): step, not gradient",
             trains="all", loss="masked", subspace=True),
    Strategy("grow",
             "Add `grow` hidden units to each hidden layer (zero weights to the kept outputs and "
             "to the old units, never in the optimizer); train the new units and trained heads.",
             "Progressive Networks (Rusu et al., 2016): function-preserving growth",
             trains="grown", loss="masked"),
    Strategy("distill",
             "Masked loss + distill_weight * mean squared change of the kept outputs on the "
             "protected inputs since the start; every variable.",
             "Learning without Forgetting (Li & Hoiem, 2016)", trains="all", loss="distill"),
)})

class TrivialNullSpaceWarning(UserWarning):
    """Warn that the kept constraints outnumber the parameters."""


class RestoreWarning(UserWarning):
    """Warn that Gauss-Newton corrections stopped above their tolerance (a broken promise)."""


@dataclass(frozen=True)
class Data:
    """Hold a training batch and held-out inputs (numpy float64)."""

    x: np.ndarray
    y: np.ndarray
    x_eval: np.ndarray
    y_eval: np.ndarray


def _toy_split(rng, n, noise):
    x = rng.random((n, 3))
    y = np.stack([x.sum(axis=1), (x ** 2).sum(axis=1) + noise * rng.random(n)], axis=1)
    return x, y


def make_toy_data(n_sample=8, n_eval=256, seed=0, noise=0.01) -> Data:
    """Draw the seed's data: x ~ U[0,1)^3, y1 = sum(x), y2 = sum(x^2) + noise * U[0,1)."""
    check_int("n_sample", n_sample, 1)
    check_int("n_eval", n_eval, 1)
    check_int("seed", seed, 0)
    check_real("noise", noise, 0.0)
    rng = np.random.default_rng(seed)
    x, y = _toy_split(rng, n_sample, noise)
    x_eval, y_eval = _toy_split(rng, n_eval, noise)
    return Data(x, y, x_eval, y_eval)


def init_params(sizes=(3, 4, 2), seed=0, stddev=0.1) -> dict:
    """Draw N(0, stddev) weights and biases for an MLP with the given layer widths."""
    sizes = tuple(sizes) if isinstance(sizes, (list, tuple)) else sizes
    if (not isinstance(sizes, tuple) or len(sizes) < 3
            or not all(isinstance(s, numbers.Integral) and s >= 1 for s in sizes)):
        raise ValueError(f"sizes: got {sizes!r}; allowed: input, hidden layer(s) and output "
                         "widths, at least 3 positive integers")
    if sizes[-1] < 2:
        raise ValueError(f"sizes: got {sizes!r}; allowed: at least 2 outputs")
    check_int("seed", seed, 0)
    check_real("stddev", stddev, 0.0)
    rng = np.random.default_rng(seed)
    params = {}
    for layer, (d_in, d_out) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
        params[f"W{layer}"] = rng.normal(0.0, stddev, (d_in, d_out))
        params[f"b{layer}"] = rng.normal(0.0, stddev, d_out)
    return params


def n_layers(params) -> int:
    """Count the weight layers of a params dict."""
    return sum(1 for name in params if name.startswith("W"))


def layer_sizes(params) -> tuple:
    """Return (input, hidden..., output) widths of a params dict."""
    L = n_layers(params)
    return (params["W1"].shape[0],) + tuple(params[f"W{l}"].shape[1] for l in range(1, L + 1))


def promise(strategy, optimizer, *, weight_decay=0.0, warm_start_steps=0, reference=None,
            energy=None, grow=None, distill_weight=None) -> str:
    """Say what a strategy guarantees for the kept outputs under this optimizer set-up.

    reference: None, or the reference inputs (any array, or True): the protected inputs of
    null_space, null_space_corrected, layer_subspace and distill become the reference inputs.

    | strategy                         | promise (where it holds)                            |
    |----------------------------------|-----------------------------------------------------|
    | split_head, grow                 | exact: every input, any optimizer, decay, warm start |
    | masked_last_layer                | exact with sgd, or fresh state and no decay; else none |
    | null_space                       | first_order on the batch; reference_first_order     |
    | null_space_corrected             | batch_exact; reference_exact with a reference       |
    | layer_subspace, energy=1.0       | batch_exact; reference_exact with a reference       |
    | layer_subspace, energy<1; distill; all_params, last_layer, output_gradient, masked_loss |
    |                                  | none                                                |
    """
    check_choice("strategy", strategy, STRATEGIES)
    check_choice("optimizer", optimizer, OPTIMIZERS)
    check_real("weight_decay", weight_decay, 0.0)
    check_int("warm_start_steps", warm_start_steps, 0)
    options = check_options(strategy, energy=energy, grow=grow, distill_weight=distill_weight)
    on_reference = (reference is not None and reference is not False
                    and strategy in REFERENCE_USERS)
    if strategy in ("split_head", "grow"):
        return "exact"
    if strategy == "null_space":
        return "reference_first_order" if on_reference else "first_order"
    if strategy == "null_space_corrected" or (strategy == "layer_subspace"
                                              and options["energy"] == 1.0):
        return "reference_exact" if on_reference else "batch_exact"
    if strategy == "masked_last_layer":
        # A zero gradient freezes a weight only when no decay and no leftover state move it.
        stateless = optimizer == "sgd" or warm_start_steps == 0
        return "exact" if weight_decay == 0 and stateless else "none"
    return "none"


def train_mask(n_out, train, dtype="float64") -> np.ndarray:
    """Return the 0/1 row mask that is 1 on the trained outputs."""
    mask = np.zeros(n_out, dtype=dtype)
    mask[list(train)] = 1.0
    return mask


def output_gradient(n, n_out, train, dtype="float64") -> np.ndarray:
    """Return the question's G: 0 on other outputs, -1 on trained ones, averaged over the batch."""
    return np.tile(-train_mask(n_out, train, dtype) / n, (n, 1))


def drift(outputs, keep) -> np.ndarray:
    """Return, per step, the max |change| of the kept outputs since step 0."""
    kept = outputs[:, :, list(keep)]
    return np.abs(kept - kept[:1]).max(axis=(1, 2))


def mse(outputs, y, cols=None) -> np.ndarray:
    """Return the mean squared error per step, over samples and the given output columns."""
    cols = slice(None) if cols is None else list(cols)
    return ((outputs[..., cols] - y[..., cols]) ** 2).mean(axis=(-2, -1))


@dataclass
class RunResult:
    """Hold what one run measured: outputs per step on x and x_eval, losses, final params."""

    strategy: str
    framework: str
    optimizer: str
    keep: tuple
    train: tuple
    outputs: np.ndarray  # (steps+1, n, n_out) on data.x
    eval_outputs: np.ndarray  # (steps+1, n_eval, n_out) on data.x_eval
    loss: np.ndarray  # (steps+1,) full MSE
    train_loss: np.ndarray  # (steps+1,) MSE of the train outputs
    params: dict  # grow: the grown layers
    step_seconds: np.ndarray
    config: dict = field(default_factory=dict)
    reference_outputs: np.ndarray | None = None  # (steps+1, n_ref, n_out); None without reference
    restore_residual: np.ndarray | None = None  # (steps,) final Gauss-Newton residual per step

    @property
    def drift_train(self) -> np.ndarray:
        return drift(self.outputs, self.keep)

    @property
    def drift_eval(self) -> np.ndarray:
        return drift(self.eval_outputs, self.keep)

    @property
    def drift_reference(self):
        """Per step, the max |change| of the kept outputs on the reference inputs (or None)."""
        return None if self.reference_outputs is None else drift(self.reference_outputs,
                                                                 self.keep)

    @property
    def promise(self) -> str:
        c = self.config
        return promise(self.strategy, self.optimizer, weight_decay=c["weight_decay"],
                       warm_start_steps=c["warm_start_steps"],
                       reference=c.get("n_reference") is not None,
                       **{k: c.get(k) for k in OPTION_USERS})


def make_result(cfg, outputs, eval_outputs, params, step_seconds, reference_outputs=None,
                restore_residual=None) -> RunResult:
    """Assemble a RunResult from per-step outputs (numpy, any float dtype)."""
    outputs = np.asarray(outputs)
    eval_outputs = np.asarray(eval_outputs)
    y = cfg["data"].y.astype(outputs.dtype)
    config = {k: v for k, v in cfg.items() if k not in ("params", "data", "reference")}
    reference = cfg.get("reference")
    config["n_reference"] = None if reference is None else len(reference)
    if restore_residual is not None:
        restore_residual = np.asarray(restore_residual, dtype=np.float64)
        warn_if_not_restored(restore_residual, cfg["dtype"])
    return RunResult(
        strategy=cfg["strategy"], framework=cfg["framework"], optimizer=cfg["optimizer"],
        keep=cfg["keep"], train=cfg["train"], outputs=outputs, eval_outputs=eval_outputs,
        loss=mse(outputs, y), train_loss=mse(outputs, y, cfg["train"]),
        params={k: np.asarray(v) for k, v in params.items()},
        step_seconds=np.asarray(step_seconds, dtype=np.float64), config=config,
        reference_outputs=None if reference_outputs is None else np.asarray(reference_outputs),
        restore_residual=restore_residual,
    )


def warn_if_not_restored(residual, dtype):
    """Warn (RestoreWarning) when a step's Gauss-Newton corrections stopped above tolerance."""
    tol = RESTORE_TOL[dtype]
    bad = np.flatnonzero(~(residual <= tol))
    if len(bad):
        warnings.warn(f"restore: Gauss-Newton stopped at kept-output residual "
                      f"{residual[bad].max():.3g} > {tol:g} in {len(bad)} of {len(residual)} "
                      f"steps (first: step {bad[0] + 1}); the promise is broken",
                      RestoreWarning, stacklevel=4)


# --- validation of a run's arguments (one line naming the parameter, before any work) -------

def check_params(params, data):
    """Check a params dict (W1, b1, ..., WL, bL) whose shapes chain from data.x to data.y."""
    allowed = "a dict W1, b1, ..., WL, bL (L >= 2) of float arrays whose shapes chain from data.x"
    if not isinstance(params, dict) or "W1" not in params:
        fail("params", type(params).__name__ if not isinstance(params, dict) else sorted(params),
             allowed)
    L = n_layers(params)
    expected = {f"{p}{l}" for l in range(1, L + 1) for p in "Wb"}
    if L < 2 or set(params) != expected:
        fail("params", sorted(params), allowed)
    width = data.x.shape[1]
    for l in range(1, L + 1):
        W, b = np.asarray(params[f"W{l}"]), np.asarray(params[f"b{l}"])
        if W.ndim != 2 or W.shape[0] != width or b.shape != (W.shape[1],):
            raise ValueError(f"params: W{l} {W.shape} / b{l} {b.shape} do not fit input width "
                             f"{width}; allowed: W{l} ({width}, d), b{l} (d,)")
        if not (np.all(np.isfinite(W)) and np.all(np.isfinite(b))):
            fail("params", f"non-finite values in layer {l}", "finite numbers")
        width = W.shape[1]
    if data.y.shape[1] != width or data.y_eval.shape[1] != width:
        raise ValueError(f"params: {width} outputs but data.y has {data.y.shape[1]} columns; "
                         "allowed: as many outputs as target columns")
    if width < 2:
        fail("params", f"{width} output", "at least 2 outputs")


def check_data(data):
    """Check a Data of finite, non-empty 2-D arrays with matching lengths and widths."""
    if not isinstance(data, Data):
        fail("data", type(data).__name__, "a selective_update.Data (make_toy_data, load_dataset)")
    for name in ("x", "y", "x_eval", "y_eval"):
        a = getattr(data, name)
        if (not isinstance(a, np.ndarray) or a.ndim != 2 or len(a) == 0
                or not np.all(np.isfinite(a))):
            fail("data", f"{name} is not a finite non-empty 2-D array", "finite 2-D float arrays")
    if len(data.x) != len(data.y) or len(data.x_eval) != len(data.y_eval):
        fail("data", "x and y differ in length", "as many targets as inputs")
    if data.x.shape[1] != data.x_eval.shape[1]:
        fail("data", "x and x_eval differ in width", "the same input width")


def check_run(strategy, framework, *, params, data, keep=(0,), train=(1,), optimizer="sgd", lr=0.1,
              steps=1, weight_decay=0.0, warm_start_steps=0, dtype="float64", device="cpu",
              warm_start_lr=None, reference=None, energy=None, grow=None, distill_weight=None,
              warn=True) -> dict:
    """Validate every argument of run() and return them normalized; raise ValueError otherwise."""
    check_choice("strategy", strategy, STRATEGIES)
    check_choice("framework", framework, FRAMEWORKS)
    check_choice("optimizer", optimizer, OPTIMIZERS)
    check_real("lr", lr, 0.0, strict=True)
    check_int("steps", steps, 1)
    check_real("weight_decay", weight_decay, 0.0)
    check_int("warm_start_steps", warm_start_steps, 0)
    if warm_start_lr is not None:
        check_real("warm_start_lr", warm_start_lr, 0.0, strict=True)
    check_choice("dtype", dtype, DTYPES)
    check_choice("device", device, DEVICES)
    if framework == "tf1" and device != "cpu":
        fail("device", device, "'cpu' for framework tf1 (the cuda device is for torch)")
    check_data(data)
    check_params(params, data)
    n_out = data.y.shape[1]
    keep = check_outputs("keep", keep, n_out)
    train = check_outputs("train", train, n_out)
    check_disjoint(keep, train)
    options = check_options(strategy, energy=energy, grow=grow, distill_weight=distill_weight)
    reference = check_reference(reference, data)
    cfg = dict(strategy=strategy, framework=framework, params=params, data=data, keep=keep,
               train=train, optimizer=optimizer, lr=float(lr), steps=int(steps),
               weight_decay=float(weight_decay), warm_start_steps=int(warm_start_steps),
               warm_start_lr=float(lr if warm_start_lr is None else warm_start_lr),
               dtype=dtype, device=device)
    if reference is not None or any(v is not None for v in options.values()):
        cfg.update(reference=reference, **options)  # without them, cfg is as before (bitwise)
    if warn and STRATEGIES[strategy].projected:
        n = len(data.x) if reference is None else len(reference)
        warn_if_trivial_null_space(params, n, len(keep))
    return cfg


def protected_inputs(cfg) -> np.ndarray:
    """Return the inputs a strategy protects: the reference inputs, or else the batch."""
    reference = cfg.get("reference")
    return cfg["data"].x if reference is None else reference


def n_params(params) -> int:
    """Count the scalar parameters of a params dict."""
    return int(sum(np.asarray(v).size for v in params.values()))


def warn_if_trivial_null_space(params, n_sample, n_keep):
    """Warn when the kept constraints (samples x kept outputs) outnumber the parameters."""
    m, P = n_sample * n_keep, n_params(params)
    if m >= P:
        warnings.warn(f"null space: {m} kept constraints ({n_sample} samples x {n_keep} outputs) "
                      f">= {P} parameters; the null space may be trivial and the projected step "
                      "may vanish", TrivialNullSpaceWarning, stacklevel=3)


# --- the seed's demo: three train ops on one GradientDescentOptimizer, in its order -------------

SEED_PHASES = (("train_op2", "masked_last_layer"), ("train_op12", "last_layer"),
               ("train_op_all", "all_params"))


@dataclass
class SeedDemo:
    """Hold what the seed's demo prints after each phase: hidden, out, loss, loss2."""

    phases: tuple  # ("start", "train_op2", "train_op12", "train_op_all")
    hidden: np.ndarray  # (phases, n, d_hidden)
    outputs: np.ndarray  # (phases, n, n_out)
    loss: np.ndarray  # full MSE
    loss2: np.ndarray  # the seed's masked loss: mean((mask * (out - y))**2)

    def rows(self, keep=(0,), train=(1,)) -> list:
        """Return one dict per phase: max |change| of kept / trained outputs, loss, loss2."""
        rows = []
        for i, phase in enumerate(self.phases):
            prev = self.outputs[max(i - 1, 0)]
            change = np.abs(self.outputs[i] - prev)
            rows.append({"phase": phase, "out1_change": float(change[:, list(keep)].max()),
                         "out2_change": float(change[:, list(train)].max()),
                         "loss": float(self.loss[i]), "loss2": float(self.loss2[i])})
        return rows


def make_seed_demo(cfg, record) -> SeedDemo:
    """Assemble a SeedDemo from (hidden, outputs) pairs recorded after each phase."""
    hidden = np.stack([h for h, _ in record])
    outputs = np.stack([o for _, o in record])
    y = cfg["data"].y.astype(outputs.dtype)
    mask = train_mask(y.shape[1], cfg["train"], outputs.dtype)
    return SeedDemo(phases=("start",) + tuple(p for p, _ in SEED_PHASES), hidden=hidden,
                    outputs=outputs, loss=mse(outputs, y),
                    loss2=((mask * (outputs - y)) ** 2).mean(axis=(1, 2)))
