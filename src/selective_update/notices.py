"""Warnings of the helpers for your own model: once per helper and cause, at the user's line.

Framework-free: torch/ and keras.py name the folders a warning must not point into (the
framework's own files, this package's), and the first frame outside them is the user's call.
"""
from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

PACKAGE_DIR = str(Path(__file__).resolve().parent)


class PromiseWarning(UserWarning):
    """Warn that a helper's promise will not hold as the model is set up: what moves, and why."""


def caller_stacklevel(skip_dirs=()) -> int:
    """Return the stacklevel, for a warnings.warn in the calling function, of the first frame
    outside this package and the folders skip_dirs (the user's line)."""
    skip = tuple(os.path.join(d, "") for d in (PACKAGE_DIR, *skip_dirs))
    frame, level = sys._getframe(1), 1
    while frame is not None and (frame.f_code.co_filename.startswith(skip)
                                 or frame.f_code.co_filename.startswith("<frozen ")):
        frame, level = frame.f_back, level + 1
    return level if frame is not None else 1


def warn_once(owner, cause, message, category=PromiseWarning, skip_dirs=()):
    """Warn `message` once per owner and cause, pointing at the user's line (see caller_stacklevel).

    Python's own filter shows a warning once per text and line; a message that carries a number
    would be shown every step, so the owner remembers the causes it has warned about.
    """
    seen = owner.__dict__.setdefault("_warned_causes", set())
    if cause in seen:
        return False
    seen.add(cause)
    warnings.warn(message, category, stacklevel=caller_stacklevel(skip_dirs))
    return True
