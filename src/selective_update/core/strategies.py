"""The strategies: each one's whole description in one record of the registry.

A record says what the optimizer is given (`trains`), what is differentiated (`loss`), what
happens to the step the optimizer took (`after`), the run() options it takes with their defaults,
whether it protects run(reference=...) inputs, and the rule that gives its promise. The math each
field names is written once in algorithms/ (strategy_step and the module it points to); both
frameworks' trainers only carry it out, and promise() only looks the rule up.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable

from ..validation import check_choice, check_int, check_real, fail
from . import promises
from .promises import PROMISE_NAMES, Promise, SetUp

OPTIMIZERS = ("sgd", "momentum", "adam", "adamw")
FRAMEWORKS = ("tf1", "torch")
DTYPES = ("float32", "float64")
PROMISES = tuple(PROMISE_NAMES)
DEVICES = ("cpu", "cuda")

# What each field's values mean (docs/methods.md's table is generated from these and the records).
TRAINS = MappingProxyType({
    "all": "every variable",
    "last_layer": "the last layer (W2, b2)",
    "train_heads": "the trained output units' heads (one variable per unit)",
    "grown": "new hidden units and the trained heads",
})
LOSSES = MappingProxyType({
    "full": "full MSE",
    "masked": "mask · (out − y)",
    "output_gradient": "back-propagate G",
    "distill": "masked + weight · kept change on the protected inputs",
    "compensated_gradient": "back-propagate G' = [−α, G₂]",
    "ewc": "masked + strength · Σ F (θ − θ*)² of the earlier tasks",
})
GRADIENTS = MappingProxyType({
    "as_is": "-",
    "gem_qp": "projected by GEM's dual QP (quadprog) against each earlier task's memory gradient",
})
AFTER = MappingProxyType({
    "none": "-",
    "project": "projected onto the kept outputs' null space",
    "project_corrected": "projected, then Gauss-Newton back",
    "subspace": "off each layer's protected input directions",
})


@dataclass(frozen=True)
class Option:
    """One run() option of a strategy: its name, default, check and what it means."""

    name: str
    default: float
    check: Callable
    meaning: str

    def resolve(self, value):
        """Return the checked value, or the default for None."""
        return self.default if value is None else self.check(value)


def _share(value):
    value = check_real("energy", value, 0.0, strict=True)
    if value > 1.0:
        fail("energy", value, "a share of the squared singular values in (0, 1]")
    return value


ENERGY = Option("energy", 0.99, _share, "share of the squared singular values each layer keeps")
# The new units' incoming weights are drawn N(0, settings.GROW_STDDEV); outgoing ones start at 0.
GROW = Option("grow", 8, lambda v: check_int("grow", v, 1), "new units per hidden layer")
DISTILL_WEIGHT = Option("distill_weight", 1.0, lambda v: check_real("distill_weight", v, 0.0),
                        "weight of the kept outputs' mean squared change")
EWC_STRENGTH = Option("ewc_strength", 1000.0, lambda v: check_real("ewc_strength", v, 0.0),
                      "weight of the earlier tasks' Fisher-weighted distance (GEM's ewc: 1000)")
GEM_MARGIN = Option("gem_margin", 0.5, lambda v: check_real("gem_margin", v, 0.0),
                    "lower bound of the QP's dual variables (GEM's code: 0.5)")


@dataclass(frozen=True)
class Strategy:
    """Describe one way of training the `train` outputs while leaving `keep` alone.

      trains: which variables the optimizer is given (its var_list): TRAINS
      loss: what is differentiated: LOSSES (compensated_gradient: algorithms.compensated; ewc:
        algorithms.memory)
      gradient: what happens to the gradient before the optimizer: GRADIENTS (algorithms.memory)
      after: what happens to the step the optimizer took: AFTER (project*: algorithms.nullspace
        and algorithms.protected; subspace: algorithms.subspace)
      options: its run() options (Option), with defaults
      reference: whether run(reference=...) moves its protection onto those inputs
      overlap: whether keep and train may share outputs (each shared output is trained on the
        batch and, by a strategy that protects, kept on run(reference=...)'s inputs, which it
        then needs; one that protects nothing only measures them); False where the kept outputs
        are frozen in the network itself
      memory: whether it needs run(reference=Memory(x, y, task)): earlier tasks' examples
        with their targets, whose loss it keeps
      carries: what it hands from run to run (RunResult.carry, run(carry=...))
      rule: the promises rule giving what it guarantees under an optimizer set-up
    """

    name: str
    summary: str
    source: str
    trains: str
    loss: str
    after: str = "none"
    gradient: str = "as_is"
    options: tuple = ()
    reference: bool = False
    overlap: bool = True
    memory: bool = False
    carries: tuple = ()
    rule: Callable = promises.nothing

    def __post_init__(self):
        for field_name, allowed in (("trains", TRAINS), ("loss", LOSSES), ("after", AFTER),
                                    ("gradient", GRADIENTS)):
            if getattr(self, field_name) not in allowed:
                raise ValueError(f"{field_name}: got {getattr(self, field_name)!r}; allowed: "
                                 f"{', '.join(allowed)}")

    @property
    def projected(self) -> bool:
        """The step is projected onto the kept outputs' null space (null_space*)."""
        return self.after in ("project", "project_corrected")

    @property
    def corrected(self) -> bool:
        """Gauss-Newton corrections follow the projection."""
        return self.after == "project_corrected"

    @property
    def subspace(self) -> bool:
        """The step is projected off each layer's protected input directions."""
        return self.after == "subspace"

    @property
    def masked(self) -> bool:
        """The loss reads the trained outputs only (mask * error, or a softmax over the trained
        columns: algorithms.strategy_step.loss)."""
        return self.loss not in ("full", "output_gradient")

    @property
    def solves(self) -> bool:
        """Each step solves a Gram system over the protected inputs (its cost grows with them):
        the null-space projections and compensated_gradient."""
        return self.projected or self.loss == "compensated_gradient"

    @property
    def starts(self) -> bool:
        """The strategy takes something from its start (layer bases, kept outputs to distill,
        the Fisher information of the memory)."""
        return self.subspace or self.loss in ("distill", "ewc")

    @property
    def option_names(self) -> tuple:
        return tuple(o.name for o in self.options)


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
             "seed: train_op2", trains="last_layer", loss="masked", overlap=False,
             rule=promises.exact_when_stateless),
    Strategy("split_head",
             "One variable per output unit, joined with tf.stack / torch.stack; only the trained "
             "heads are given to the optimizer.",
             "seed: first approach (var_list=[W_h_to_out2, b_h_to_out2])", trains="train_heads",
             loss="masked", overlap=False, rule=promises.exact_everywhere),
    Strategy("null_space",
             "Masked loss, every parameter; the optimizer's proposed step is projected onto the "
             "null space of the kept outputs' Jacobian over the batch (layer-wise Gram form).",
             "beyond the answer (OGD/GPM family)", trains="all", loss="masked", after="project",
             reference=True, rule=promises.first_order_where_protected),
    Strategy("compensated_gradient",
             "Back-propagate G' = [-alpha, G_2] instead of G = [0, G_2] (G: the masked loss's "
             "gradient with respect to the outputs): alpha, one number per sample and kept "
             "output, makes the kept outputs' first-order change on the batch zero (K_kk alpha = "
             "K_kt G_2, layer-wise Gram form). tf.gradients(out, vars, grad_ys=G') / "
             "torch.autograd.grad(out, params, grad_outputs=G'): one backward pass.",
             "the question in its own terms: change G", trains="all",
             loss="compensated_gradient", reference=True,
             rule=promises.first_order_when_sums_gradients),
    Strategy("null_space_corrected",
             "null_space, then Gauss-Newton steps (minimum-norm, layer-wise Gram form) until the "
             "kept outputs on the batch are back to their values before the step.",
             "beyond the answer", trains="all", loss="masked", after="project_corrected",
             reference=True, rule=promises.exact_where_protected),
    Strategy("layer_subspace",
             "Masked loss, every parameter; the optimizer's step of every hidden layer and of the "
             "kept output columns is projected off the top singular directions (energy) of that "
             "layer's inputs (with a 1 for the bias) on the protected inputs, taken once at start.",
             "GPM (Saha et al., ICLR 2021), Adam-NSCL (Wang et al., CVPR 2021): step, not gradient",
             trains="all", loss="masked", after="subspace", options=(ENERGY,), reference=True,
             rule=promises.exact_at_full_energy),
    Strategy("grow",
             "Add `grow` hidden units to each hidden layer (zero weights to the kept outputs and "
             "to the old units, never in the optimizer); train the new units and trained heads.",
             "Progressive Networks (Rusu et al., 2016): function-preserving growth",
             trains="grown", loss="masked", options=(GROW,), overlap=False,
             rule=promises.exact_everywhere),
    Strategy("distill",
             "Masked loss + distill_weight * mean squared change of the kept outputs on the "
             "protected inputs since the start; every variable.",
             "Learning without Forgetting (Li & Hoiem, 2016)", trains="all", loss="distill",
             options=(DISTILL_WEIGHT,), reference=True),
    Strategy("ewc",
             "Masked loss + ewc_strength * sum over the earlier tasks of F (theta - theta*)^2, "
             "F the squared gradient of the mean loss on a task's memory at theta*, its "
             "parameters when the next task starts (taken at this run's start for the memory "
             "given; the earlier ones carried); every variable.",
             "EWC (Kirkpatrick et al., 2017), as GEM's code computes it (model/ewc.py)",
             trains="all", loss="ewc", options=(EWC_STRENGTH,), reference=True, memory=True,
             carries=("fisher", "anchored")),
    Strategy("gem",
             "Masked loss, every variable; when the gradient lowers the memory loss of an "
             "earlier task to first order less than 0 (<g, g_k> < 0), it is replaced by the "
             "solution of GEM's dual QP (quadprog, margin gem_margin) against every earlier "
             "task's memory gradient g_k, before the optimizer.",
             "GEM (Lopez-Paz & Ranzato, NeurIPS 2017), as its code does it (model/gem.py)",
             trains="all", loss="masked", gradient="gem_qp", options=(GEM_MARGIN,),
             reference=True, memory=True, rule=promises.no_memory_loss_rise_with_sgd),
)})


# run()'s strategy options: which strategies take each (a value other than None elsewhere is a
# ValueError, so a typo never becomes a silent no-op), and the options by name.
OPTION_USERS = MappingProxyType({
    o.name: tuple(s.name for s in STRATEGIES.values() if o in s.options)
    for o in dict.fromkeys(o for s in STRATEGIES.values() for o in s.options)})
# Strategies whose protection moves to the reference inputs when run() gets reference= (every
# strategy records the reference outputs).
REFERENCE_USERS = tuple(s.name for s in STRATEGIES.values() if s.reference)


def check_options(strategy, **options) -> dict:
    """Check run()'s strategy options; return them with defaults filled in for their users."""
    described = STRATEGIES[strategy]
    resolved = {}
    for name, value in options.items():
        own = next((o for o in described.options if o.name == name), None)
        if own is None:
            if value is not None:
                fail(name, value, f"None with strategy {strategy!r} ({name} is an option of "
                     f"{', '.join(OPTION_USERS[name])} only)")
            resolved[name] = None
        else:
            resolved[name] = own.resolve(value)
    return resolved


def promise(strategy, optimizer, *, weight_decay=0.0, warm_start_steps=0, reference=None,
            batch_size=None, **options) -> str:
    """Say what a strategy guarantees for the kept outputs under this optimizer set-up.

    reference: None, or the reference inputs (any array, or True): a strategy that takes
    reference= then protects them (Strategy.reference).
    batch_size: None (every step on the whole batch) or run()'s mini-batch size. Without a
    reference, a promise on the batch then holds on each step's own mini-batch across that step
    (minibatch_exact, minibatch_first_order): the rows of earlier steps are free to move.
    options: the strategy's run() options (energy, grow, distill_weight; None: the default).

    The rule is the strategy's own (Strategy.rule, in core.promises); the table of every
    strategy's rule is docs/methods.md's.
    """
    return str(promise_of(strategy, optimizer, weight_decay=weight_decay,
                          warm_start_steps=warm_start_steps, reference=reference,
                          batch_size=batch_size, **options))


def promise_of(strategy, optimizer, *, weight_decay=0.0, warm_start_steps=0, reference=None,
               batch_size=None, **options) -> Promise:
    """Return promise()'s answer as a Promise value (strength, where)."""
    check_choice("strategy", strategy, STRATEGIES)
    check_choice("optimizer", optimizer, OPTIMIZERS)
    check_real("weight_decay", weight_decay, 0.0)
    check_int("warm_start_steps", warm_start_steps, 0)
    if batch_size is not None:
        check_int("batch_size", batch_size, 1)
    unknown = sorted(set(options) - set(OPTION_USERS))
    if unknown:
        raise TypeError(f"promise() got unexpected keyword argument(s) {unknown}; allowed: "
                        f"{', '.join(OPTION_USERS)}")
    described = STRATEGIES[strategy]
    resolved = check_options(strategy, **{name: options.get(name) for name in OPTION_USERS})
    on_reference = reference is not None and reference is not False and described.reference
    where = "reference" if on_reference else "minibatch" if batch_size is not None else "batch"
    return described.rule(SetUp(optimizer, float(weight_decay), int(warm_start_steps), where,
                                resolved))


def options_for(strategy, run_kwargs) -> dict:
    """Return run_kwargs without the strategy options that `strategy` does not use."""
    return {k: v for k, v in run_kwargs.items()
            if k not in OPTION_USERS or strategy in OPTION_USERS[k]}
