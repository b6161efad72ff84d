"""TensorFlow, imported once and quietly, for the tf1 folder."""
from __future__ import annotations

from ..quiet_import import quiet_import

tf = quiet_import("tensorflow")
v1 = tf.compat.v1
