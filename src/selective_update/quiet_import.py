"""Import TensorFlow (or Keras) once, with its C++ start-up chatter kept off the terminal.

Framework-free: tf1/ and keras.py name the module to import.
"""
from __future__ import annotations

import importlib
import os
import sys

# Set only while TensorFlow imports, where the user has not set them, then put back as the user
# had them (a library leaves process-wide state alone). TF_CPP_MIN_LOG_LEVEL 2 keeps C++
# INFO/WARNING lines off the terminal (one "Not handling type DT_DOUBLE" per op): TensorFlow reads
# it once, at its first log line, which the import writes, so it holds for the session ops too,
# while a level the user set (0 to see them) wins. TF_USE_LEGACY_KERAS 1 skips the eager import of
# Keras 3 inside `import tensorflow` (~2 s); tf.keras reads the variable again when first used, so
# once it is put back tf.keras is Keras 3 as usual (left set, tf.keras would fail with "Keras
# cannot be imported").
IMPORT_ENVIRONMENT = {"TF_CPP_MIN_LOG_LEVEL": "2", "TF_USE_LEGACY_KERAS": "1"}


def quiet_import(name):
    """Import `tensorflow` or `keras` with fd 2 silenced while TF starts up and probes devices.

    Python warnings, logging levels and the environment are left as they were.
    """
    if name in sys.modules and "tensorflow" in sys.modules:
        return sys.modules[name]
    saved_env = {key: os.environ.get(key) for key in IMPORT_ENVIRONMENT}
    for key, value in IMPORT_ENVIRONMENT.items():
        os.environ.setdefault(key, value)
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
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
