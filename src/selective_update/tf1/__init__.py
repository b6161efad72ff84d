"""TensorFlow 1 (tf.compat.v1): the study's runner and the helpers for your own graph.

Runner (the same public surface as selective_update.torch): NAME, configure, make_steps, run,
seed_demo, project_step, make_optimizer. Your own graph: dense_heads, masked_loss.
"""
from __future__ import annotations

from .heads import Heads, dense_heads, masked_loss
from .optim import TorchEpsAdamOptimizer, make_optimizer
from .runner import NAME, configure, make_steps, project_step, run
from .seed_demo import seed_demo

__all__ = ["Heads", "NAME", "TorchEpsAdamOptimizer", "configure", "dense_heads", "make_optimizer",
           "make_steps", "masked_loss", "project_step", "run", "seed_demo"]
