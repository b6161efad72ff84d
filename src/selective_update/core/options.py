"""run()'s strategy options and reference inputs: who uses them, their defaults, their checks."""
from __future__ import annotations

from types import MappingProxyType

import numpy as np

from ..settings import DEFAULT_DISTILL_WEIGHT, DEFAULT_ENERGY, DEFAULT_GROW
from ..validation import check_int, check_real, fail

# run()'s strategy options: which strategies use each (any other value than None elsewhere is a
# ValueError, so a typo never becomes a silent no-op) and its default.
OPTION_USERS = MappingProxyType({"energy": ("layer_subspace",), "grow": ("grow",),
                                 "distill_weight": ("distill",)})
OPTION_DEFAULTS = MappingProxyType({"energy": DEFAULT_ENERGY, "grow": DEFAULT_GROW,
                                    "distill_weight": DEFAULT_DISTILL_WEIGHT})
# Strategies whose protection moves to the reference inputs when run() gets reference= (every
# strategy records the reference outputs).
REFERENCE_USERS = ("null_space", "null_space_corrected", "compensated_gradient", "layer_subspace",
                   "distill")


def check_options(strategy, **options) -> dict:
    """Check run()'s strategy options; return them with defaults filled in for their users."""
    checks = {"energy": lambda v: check_real("energy", v, 0.0, strict=True),
              "grow": lambda v: check_int("grow", v, 1),
              "distill_weight": lambda v: check_real("distill_weight", v, 0.0)}
    resolved = {}
    for name, value in options.items():
        users = OPTION_USERS[name]
        if strategy not in users:
            if value is not None:
                fail(name, value, f"None with strategy {strategy!r} ({name} is an option of "
                     f"{', '.join(users)} only)")
            resolved[name] = None
            continue
        value = OPTION_DEFAULTS[name] if value is None else checks[name](value)
        if name == "energy" and value > 1.0:
            fail("energy", value, "a share of the squared singular values in (0, 1]")
        resolved[name] = value
    return resolved


def check_reference(reference, data):
    """Check None or a finite (n_ref, n_in) array of reference inputs; return float64 or None."""
    if reference is None:
        return None
    width = data.x.shape[1]
    allowed = f"None or a finite non-empty 2-D array (n_ref, {width}) of inputs"
    if not isinstance(reference, np.ndarray):
        fail("reference", type(reference).__name__, allowed)
    if (reference.ndim != 2 or not len(reference) or reference.shape[1] != width
            or not np.issubdtype(reference.dtype, np.number)):
        fail("reference", f"array of shape {reference.shape}", allowed)
    if not np.all(np.isfinite(reference)):
        fail("reference", "non-finite values", allowed)
    return np.array(reference, dtype=np.float64)


def options_for(strategy, run_kwargs) -> dict:
    """Return run_kwargs without the strategy options that `strategy` does not use."""
    return {k: v for k, v in run_kwargs.items()
            if k not in OPTION_USERS or strategy in OPTION_USERS[k]}
