"""Warnings of the helpers for your own model: once per helper and cause, at the user's line.

Framework-free: a warning points at the first frame outside this package and outside the
frameworks' own modules (torch, keras, tensorflow, named by their module, never imported here),
which is the user's call.
"""
from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

PACKAGE_DIR = str(Path(__file__).resolve().parent)
FRAMEWORKS = ("torch", "keras", "tensorflow")  # their frames are never the user's line


class PromiseWarning(UserWarning):
    """Warn that a helper's promise will not hold as the model is set up: what moves, and why."""


class CostWarning(UserWarning):
    """Warn that a helper's step will cost more than its budget, before the first step."""


def caller_stacklevel() -> int:
    """Return the stacklevel, for a warnings.warn in the calling function, of the first frame
    outside this package and the frameworks (the user's line)."""
    package = os.path.join(PACKAGE_DIR, "")
    frame, level = sys._getframe(1), 1
    while frame is not None and _internal(frame, package):
        frame, level = frame.f_back, level + 1
    return level if frame is not None else 1


def _internal(frame, package):
    filename = frame.f_code.co_filename
    module = str(frame.f_globals.get("__name__", "")).split(".")[0]
    return filename.startswith((package, "<frozen ")) or module in FRAMEWORKS


def warn_once(owner, cause, message, category=PromiseWarning):
    """Warn `message` once per owner and cause, pointing at the user's line (see caller_stacklevel).

    Python's own filter shows a warning once per text and line; a message that carries a number
    would be shown every step, so the owner remembers the causes it has warned about.
    """
    seen = owner.__dict__.setdefault("_warned_causes", set())
    if cause in seen:
        return False
    seen.add(cause)
    warnings.warn(message, category, stacklevel=caller_stacklevel())
    return True
