"""Import TensorFlow (or Keras) once, with its C++ start-up chatter kept off the terminal.

Framework-free: tf1/ and keras.py name the module to import.
"""
from __future__ import annotations

import importlib
import os
import sys


def quiet_import(name):
    """Import `tensorflow` or `keras` with fd 2 silenced while TF starts up and probes devices.

    TF_CPP_MIN_LOG_LEVEL 2 keeps C++ INFO/WARNING lines (one "Not handling type DT_DOUBLE" per
    op) off the terminal while errors stay; Python warnings are untouched.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # `import tensorflow` eagerly imports Keras 3 (~2 s); TF skips it with this set and tf_keras
    # not installed. Nothing but selective_update.keras uses Keras, and it imports keras itself.
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    if name in sys.modules and "tensorflow" in sys.modules:
        return sys.modules[name]
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        sys.stderr.flush()
        os.dup2(devnull, 2)  # absl logs "no cuda drivers" to fd 2 before any setting applies
        module = importlib.import_module(name)
        # Probe the devices now, inside the redirect: a machine with libcuda but no GPU logs a
        # "failed call to cuInit" error at the first probe (else at the first Session).
        sys.modules["tensorflow"].config.list_physical_devices()
        return module
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)

