"""TensorFlow 1 (tf.compat.v1): the study's runner and the helpers for your own graph.

Runner (the same public surface as selective_update.torch): NAME, configure, make_steps, run,
train, seed_demo, project_step; v1_optimizer (tf.compat.v1.train optimizers matching torch's).
Your own graph: dense_heads, masked_loss.
"""
from __future__ import annotations

from .heads import Heads, dense_heads, masked_loss
from .optim import TorchEpsAdamOptimizer, v1_optimizer
from .framework import configure
from .runner import NAME, RUNNER
from .seed_demo import seed_demo

run, train, make_steps, project_step = (RUNNER.run, RUNNER.train, RUNNER.make_steps,
                                        RUNNER.project_step)

__all__ = ["Heads", "NAME", "TorchEpsAdamOptimizer", "configure", "dense_heads", "make_steps",
           "masked_loss", "project_step", "run", "seed_demo", "train", "v1_optimizer"]
