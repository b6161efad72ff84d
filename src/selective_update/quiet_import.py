"""Import TensorFlow (or Keras) once, with its C++ start-up chatter kept off the terminal.

Framework-free: tf1/ and keras.py name the module to import.
"""
from __future__ import annotations

import importlib
import os
import sys

# Set only while TensorFlow imports, then put back as the user had them: TF_CPP_MIN_LOG_LEVEL 2
# keeps C++ INFO/WARNING lines of the start-up off the terminal; TF_USE_LEGACY_KERAS 1 skips the
# eager import of Keras 3 inside `import tensorflow` (~2 s). tf.keras reads the variable again
# when first used, so with it restored tf.keras is Keras 3 as usual.
IMPORT_ENVIRONMENT = {"TF_CPP_MIN_LOG_LEVEL": "2", "TF_USE_LEGACY_KERAS": "1"}


def quiet_import(name):
    if name in sys.modules and "tensorflow" in sys.modules:
        return sys.modules[name]
    saved_env = {key: os.environ.get(key) for key in IMPORT_ENVIRONMENT}
    for key, value in IMPORT_ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        sys.stderr.flush()
        os.dup2(devnull, 2)
        module = importlib.import_module(name)
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
