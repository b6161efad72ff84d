"""Which strategies a scenario runs, with which settings, and what a setting costs.

Both scenarios take every strategy of the registry (core.STRATEGIES), so a strategy that lands
later takes part without changes here. A strategy's settings come from what it is:
- a strategy whose step solves a Gram system over its protected inputs (Strategy.solves: the
  null-space projections, compensated_gradient) protects the batch ("reference=batch": each
  step's mini-batch) or a reference set of kept fit digits ("reference=64", "reference=all"),
  within the cost rule;
- another user of reference inputs (core.strategies.REFERENCE_USERS: layer_subspace, distill)
  protects every kept fit digit, which costs it little;
- a strategy with run() options (core.strategies.OPTION_USERS) is swept over the values the grid
  lists for them ("energy=0.9"); an option the grid does not list runs at its default;
- the bounds are labelled by their setting (settings.BOUND_SETTINGS): all_params is "joint"
  training, masked_loss "fine-tuning".
"""
from __future__ import annotations

import itertools
import warnings

from .. import core
from ..core.strategies import OPTION_USERS, REFERENCE_USERS
from ..settings import BOUND_SETTINGS

NONE = "none"


CEILING, FLOOR = (next(s for s, label in BOUND_SETTINGS.items() if label == name)
                  for name in ("joint", "fine-tuning"))


def points(strategy, grid) -> dict:
    """Return the grid whose optimizers, lrs and epochs a strategy is swept over: the ceiling's
    own `bound` points (more epochs, its own lrs), the grid's for every other strategy."""
    return {**grid, **grid["bound"]} if strategy == CEILING and "bound" in grid else grid


def strategies():
    """Return the strategies the class scenarios run (the registry's order): every one but those
    that keep a Memory's loss (gem, ewc), which the rotations benchmark runs as its authors do."""
    return [name for name, s in core.STRATEGIES.items() if not s.memory]


def options_of(strategy) -> list:
    """Return the run() options a strategy takes (energy, grow, distill_weight, ...)."""
    return [name for name, users in OPTION_USERS.items() if strategy in users]


def settings_for(strategy, grid) -> list:
    """Return the setting labels one strategy is swept over.

    grid: "references" (projections) and "options" ({option: [values]}).
    """
    if core.STRATEGIES[strategy].solves:
        return [f"reference={r}" for r in grid["references"]]
    swept = [(name, grid.get("options", {}).get(name)) for name in options_of(strategy)]
    swept = [(name, values) for name, values in swept if values]
    if swept:  # every combination of the listed values (one option today)
        names = [name for name, _ in swept]
        return [",".join(f"{n}={v}" for n, v in zip(names, combo))
                for combo in itertools.product(*(values for _, values in swept))]
    return [BOUND_SETTINGS.get(strategy, NONE)]


def parse(setting) -> dict:
    """Return a setting label's values ({"reference": "64"}, {"energy": "0.9"}; {} for none)."""
    if "=" not in setting:
        return {}
    return dict(part.split("=", 1) for part in setting.split(","))


def run_kwargs(strategy, setting, reference_for) -> dict:
    """Turn a setting into su.run keyword arguments.

    reference_for(size): the reference inputs for "batch" (None), a number, or "all".
    """
    values = parse(setting)
    kwargs = {}
    for name, value in values.items():
        if name != "reference":  # "4" is an integer option, "10.0" a real one (as the grid wrote)
            kwargs[name] = int(value) if value.lstrip("-").isdigit() else float(value)
    size = values.get("reference")
    if size is None and strategy in REFERENCE_USERS and not core.STRATEGIES[strategy].solves:
        size = "all"  # layer_subspace and distill protect every kept fit digit
    if size is not None:
        reference = reference_for(size)
        if reference is not None:
            kwargs["reference"] = reference
    return kwargs


def protected_count(setting, batch_size, reference_for) -> int:
    """Return how many inputs a projection's setting protects per step (0 for other settings)."""
    size = parse(setting).get("reference")
    if size is None:
        return 0
    return batch_size if size == "batch" else len(reference_for(size))


def work(strategy, n_keep, n_protected, n_params, corrected_factor) -> float:
    """Estimate a Gram solve's work per step: min(m, P)^2 max(m, P), m = n_keep x n_protected
    (times corrected_factor with Gauss-Newton corrections); 0 for the strategies without a solve."""
    s = core.STRATEGIES[strategy]
    if not s.solves or not n_protected:
        return 0.0
    m, P = n_keep * n_protected, n_params
    return float(min(m, P) ** 2 * max(m, P) * (corrected_factor if s.corrected else 1))


def tier(strategy, amount, max_work, quick=False) -> str:
    """Return how much of the sweep a setting gets: "full", "reduced" (projections) or "skipped"
    (work per step above max_work)."""
    if amount > max_work:
        return "skipped"
    return "reduced" if core.STRATEGIES[strategy].solves and not quick else "full"


def run_quietly(strategy, framework, **kwargs):
    """Run su.run where a large reference or an unconverged correction is expected, not news."""
    import selective_update as su

    with warnings.catch_warnings():  # a reference larger than the null space is the point here
        warnings.simplefilter("ignore", core.TrivialNullSpaceWarning)
        # a correction that stops above its tolerance on the reference: the held-out drift,
        # which the scenarios report, is measured either way
        warnings.simplefilter("ignore", core.RestoreWarning)
        return su.run(strategy, framework, **kwargs)
