"""A promise as a small value (how strong, and where it holds), and the rules that give it.

Each strategy of the registry names one rule; a rule reads the optimizer set-up and returns a
Promise. str(Promise) is the name the study writes (`exact`, `batch_exact`, `first_order`,
`reference_first_order`, ...), and PROMISE_NAMES maps the names back, so nothing parses them.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

# exact: bitwise on every input; exact on a set: within BATCH_EXACT_TOL there; first_order: the
# leak there is second order in lr; no_loss_rise: no earlier task's loss on its memory rises, to
# first order (GEM's: weaker than first_order, which holds the outputs themselves); none.
STRENGTHS = ("exact", "first_order", "no_loss_rise", "none")
# everywhere: every input; batch: the training batch; reference: run(reference=...)'s inputs;
# minibatch: each step's own mini-batch, across that step only (run(batch_size=...) without a
# reference: the rows of earlier steps are free to move).
PLACES = ("everywhere", "batch", "reference", "minibatch")


@dataclass(frozen=True)
class Promise:
    """What a strategy guarantees for the kept outputs: a strength and where it holds."""

    strength: str
    where: str = "batch"

    def __post_init__(self):
        if self.strength not in STRENGTHS or self.where not in PLACES:
            raise ValueError(f"Promise: got ({self.strength!r}, {self.where!r}); allowed: a "
                             f"strength of {STRENGTHS} and a place of {PLACES}")

    def __str__(self) -> str:
        if self.strength == "none":
            return "none"
        if self.where == "everywhere":
            return "exact"
        if self.where == "batch":
            return "batch_exact" if self.strength == "exact" else "first_order"
        return f"{self.where}_{self.strength}"

    @property
    def promised(self) -> bool:
        """Something is promised (a verdict can fail)."""
        return self.strength != "none"


NONE = Promise("none")
EXACT = Promise("exact", "everywhere")
# Every promise the study can write, by its name.
PROMISE_NAMES = MappingProxyType({str(p): p for p in (
    EXACT, Promise("exact"), Promise("first_order"), NONE,
    *(Promise(s, w) for w in ("reference", "minibatch") for s in ("exact", "first_order")),
    Promise("no_loss_rise", "reference"))})


@dataclass(frozen=True)
class SetUp:
    """The optimizer set-up a promise depends on (promise()'s arguments, checked).

    where: the place a protecting strategy protects: its reference inputs, each step's
    mini-batch (batch_size without a reference), or the batch.
    """

    optimizer: str
    weight_decay: float
    warm_start_steps: int
    where: str
    options: dict


# --- the rules (each strategy of the registry names one) ----------------------------------------

def exact_everywhere(setup: SetUp) -> Promise:
    """Exact on every input, under any optimizer, decay and warm start.

    Structural: what the kept outputs depend on never reaches the optimizer."""
    return EXACT


def nothing(setup: SetUp) -> Promise:
    """None (no guarantee)."""
    return NONE


def first_order_where_protected(setup: SetUp) -> Promise:
    """First order on the protected inputs.

    A projected step: the leak on the protected inputs is second order."""
    return Promise("first_order", setup.where)


def exact_where_protected(setup: SetUp) -> Promise:
    """Exact on the protected inputs (within BATCH_EXACT_TOL).

    A projected step corrected back: the kept outputs on the protected inputs are restored."""
    return Promise("exact", setup.where)


def exact_when_stateless(setup: SetUp) -> Promise:
    """Exact with sgd, or from a fresh optimizer state, without decay; else none.

    A zero gradient freezes a weight only when no decay and no leftover state move it."""
    stateless = setup.optimizer == "sgd" or setup.warm_start_steps == 0
    return EXACT if setup.weight_decay == 0 and stateless else NONE


def first_order_when_sums_gradients(setup: SetUp) -> Promise:
    """First order on the protected inputs with sgd, or fresh momentum, without decay; else none.

    Only sgd's step, or fresh momentum's (a sum of earlier compensated gradients), is made of
    compensated gradients: each has no first-order effect where it was taken, so the leak is
    second order. Decay adds lr * wd * theta and Adam rescales each coordinate: none. On
    mini-batches, earlier steps' gradients were compensated on other rows: sgd only."""
    momentum_ok = setup.where != "minibatch" and setup.warm_start_steps == 0
    sums = setup.optimizer == "sgd" or (setup.optimizer == "momentum" and momentum_ok)
    return first_order_where_protected(setup) if setup.weight_decay == 0 and sums else NONE


def exact_at_full_energy(setup: SetUp) -> Promise:
    """Exact on the protected inputs at energy 1.0; else none.

    Every direction of each layer's protected inputs removed: each layer's output there stays."""
    return exact_where_protected(setup) if setup.options["energy"] == 1.0 else NONE


def no_memory_loss_rise_with_sgd(setup: SetUp) -> Promise:
    """No earlier task's memory loss rises, to first order, with sgd and no decay; else none.

    GEM's projected gradient g~ has <g~, g_k> >= 0 for every earlier task's memory gradient g_k,
    so an sgd step changes each memory loss by -lr <g~, g_k> + O(lr^2). Momentum, Adam and decay
    change the gradient after the projection."""
    if setup.where == "reference" and setup.optimizer == "sgd" and setup.weight_decay == 0:
        return Promise("no_loss_rise", "reference")
    return NONE
