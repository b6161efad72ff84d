"""Check arguments before any work: each bad value raises one line naming it and what is allowed.

Every public function, notebook helper and command of the package validates through these, so
the messages read the same everywhere: ``<name>: got <value>; allowed: <what>``.
"""
from __future__ import annotations

import argparse
import math
import numbers
import os
from pathlib import Path

import numpy as np


def fail(name, value, allowed):
    """Raise ValueError('<name>: got <value>; allowed: <allowed>')."""
    raise ValueError(f"{name}: got {value!r}; allowed: {allowed}")


def check_choice(name, value, choices):
    """Check that value is one of the strings in choices."""
    if not isinstance(value, str) or value not in choices:
        fail(name, value, ", ".join(choices))
    return value


def is_int(value) -> bool:
    """Say whether value is an integer (numpy integers included, bool excluded)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def check_bool(name, value):
    """Check that value is True or False (numpy bools included); return it as a Python bool."""
    if not isinstance(value, (bool, np.bool_)):
        fail(name, value, "True or False")
    return bool(value)


def check_int(name, value, low):
    """Check that value is an integer >= low; return it as a Python int."""
    if not is_int(value) or value < low:
        fail(name, value, f"an integer >= {low}")
    return int(value)


def check_real(name, value, low, *, strict=False):
    """Check that value is a finite number >= low (> low when strict); return it as a float."""
    ok = (not isinstance(value, (bool, np.bool_)) and isinstance(value, numbers.Real)
          and math.isfinite(value) and (value > low if strict else value >= low))
    if not ok:
        fail(name, value, f"a finite number {'>' if strict else '>='} {low:g}")
    return float(value)


def check_outputs(name, value, n_out):
    """Check a non-empty sequence of distinct output indices in 0..n_out-1 (numpy accepted).

    A single integer counts as a one-element list. Returns a tuple of Python ints.
    """
    allowed = f"a non-empty list of distinct output indices in 0..{n_out - 1}"
    shown = value.tolist() if isinstance(value, np.ndarray) else value
    if is_int(value):
        value = (value,)
    if isinstance(value, np.ndarray):
        value = tuple(value.tolist()) if value.ndim == 1 else None
    if not isinstance(value, (list, tuple, range)) or not len(value):
        fail(name, shown, allowed)
    if not all(is_int(i) and 0 <= i < n_out for i in value) or len(set(value)) != len(value):
        fail(name, list(value) if isinstance(shown, range) else shown, allowed)
    return tuple(int(i) for i in value)


def check_disjoint(keep, train, overlap=""):
    """Check that the trained outputs are not also kept; overlap: where overlapping ones are
    allowed instead (said in the message), "" where they never are."""
    if set(keep) & set(train):
        fail("train", list(train), f"outputs disjoint from keep={list(keep)}{overlap}")


def check_list(name, value, check, describe):
    """Check a non-empty list without repeats whose items pass check (describe names them)."""
    if isinstance(value, tuple):
        value = list(value)
    if not isinstance(value, list) or not value:
        fail(name, value, "a non-empty list")
    for item in value:
        try:
            check(item)
        except ValueError:
            raise ValueError(f"{name}: got {value!r}; allowed: a non-empty list of "
                             f"{describe}") from None
    if len(set(value)) != len(value):
        fail(name, value, "a list without repeated values")
    return value


def check_folder(name, value):
    """Check None or a folder path (an existing file is refused)."""
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        fail(name, value, "None or a folder path")
    if Path(value).exists() and not Path(value).is_dir():
        fail(name, str(value), "None or a folder (this path is a file)")
    return str(value)


# --- argparse types: a bad option exits 2 naming it, before any work ------------------------------

def int_option(low):
    """Return an argparse type that parses a command-line integer >= low."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"got {text!r}; allowed: an integer >= {low}") \
                from None
        if value < low:
            raise argparse.ArgumentTypeError(f"got {value}; allowed: an integer >= {low}")
        return value
    return parse


positive_int_option = int_option(1)
non_negative_int_option = int_option(0)


def positive_seconds_option(text):
    """Parse a finite number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"got {text!r}; allowed: a number of seconds > 0") \
            from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"got {text}; allowed: a number of seconds > 0")
    return value


def out_dir_option(text):
    """Parse a folder path for reports (an existing file is refused)."""
    path = Path(text)
    if not text:
        raise argparse.ArgumentTypeError("got ''; allowed: a folder path")
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"got {text!r}; allowed: a folder (this path is a file)")
    if path.resolve().parent.exists() and not path.resolve().parent.is_dir():
        raise argparse.ArgumentTypeError(f"got {text!r}; allowed: a folder path")
    return path
