"""PyTorch: the study's runner and the helpers for your own model.

Runner (the same public surface as selective_update.tf1): NAME, configure, make_steps, run,
seed_demo, project_step, train; torch_optimizer. Your own model: split_head, unsplit_head,
NullSpaceProjector, LayerSubspaceProjector, audit; PromiseWarning says where a promise will not
hold as the model is set up.
"""
from __future__ import annotations

from .audit import Audit, audit
from .jacobian import (JacobianNullSpaceStep, cuda_available, device_name, project_step_jacobian,
                       projection_cases)
from ..notices import PromiseWarning
from .helper_cases import helper_cases
from .helper_cases import model_facts as helper_model_facts
from .layer_subspace import LayerSubspaceProjector
from .projector import NullSpaceProjector
from .runner import NAME, RUNNER, configure, torch_optimizer
from .seed_demo import seed_demo
from .split_head import KeepRows, split_head, unsplit_head

run, train, make_steps, project_step = (RUNNER.run, RUNNER.train, RUNNER.make_steps,
                                        RUNNER.project_step)

__all__ = ["Audit", "JacobianNullSpaceStep", "KeepRows", "LayerSubspaceProjector", "NAME",
           "NullSpaceProjector", "PromiseWarning", "audit", "configure", "cuda_available",
           "device_name", "helper_cases", "helper_model_facts", "make_steps", "project_step",
           "project_step_jacobian", "projection_cases", "run", "seed_demo", "split_head",
           "torch_optimizer", "train", "unsplit_head"]
