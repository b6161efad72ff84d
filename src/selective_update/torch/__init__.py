"""PyTorch: the study's runner and the helpers for your own model.

Runner (the same public surface as selective_update.tf1): NAME, configure, make_steps, run,
seed_demo, project_step, train. Your own model: split_head, unsplit_head, NullSpaceProjector,
LayerSubspaceProjector, audit; PromiseWarning says where a promise will not hold as the model is
set up. Everything else stays importable from its module (selective_update.torch.runner,
.split_head, .audit, ...); the bench's cases live in .bench_cases, which no face exports.
"""
from __future__ import annotations

from ..notices import PromiseWarning
from .audit import audit
from .layer_subspace import LayerSubspaceProjector
from .null_space_projector import NullSpaceProjector
from .runner import NAME, RUNNER, configure
from .seed_demo import seed_demo
from .split_head import split_head, unsplit_head

run, train, make_steps, project_step = (RUNNER.run, RUNNER.train, RUNNER.make_steps,
                                        RUNNER.project_step)

__all__ = ["LayerSubspaceProjector", "NAME", "NullSpaceProjector", "PromiseWarning", "audit",
           "configure", "make_steps", "project_step", "run", "seed_demo", "split_head", "train",
           "unsplit_head"]
