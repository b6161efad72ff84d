"""What both projectors share: attach to an optimizer through its step hooks, see the step it
took, and put parameters and optimizer state back when a projection fails."""
from __future__ import annotations

import copy

import torch

from ..validation import fail
from .model_checks import running_stat_modules, warn_running_stats


def snapshot_state(optimizer):
    """Return a copy of the optimizer's per-parameter state (tensors cloned)."""
    return {p: {k: v.clone() if torch.is_tensor(v) else copy.deepcopy(v) for k, v in s.items()}
            for p, s in optimizer.state.items()}


def restore_state(optimizer, saved):
    """Put back a snapshot_state: state the step created is dropped."""
    optimizer.state.clear()
    optimizer.state.update(saved)


class StepHooks:
    """Attach to one optimizer; subclasses set up in _prepare(params) and project in
    _project_step(old) the step from the values `old` to the parameters' values now. Before
    every step, modules whose running statistics move the kept outputs are named (each once)."""

    owner = "projector"

    def __init__(self, model):
        self.model, self.optimizer = model, None
        self.params, self._handles, self._before, self._stats = [], None, None, []

    def attach(self, optimizer):
        """Project every later optimizer.step() of this optimizer; return self."""
        if not isinstance(optimizer, torch.optim.Optimizer):
            fail("optimizer", type(optimizer).__name__, "a torch.optim.Optimizer")
        if self.optimizer is not None:
            fail("optimizer", type(optimizer).__name__,
                 "an optimizer, once: this projector is attached already (detach() first)")
        if getattr(optimizer, "_null_space_projector", None) is not None:
            fail("optimizer", type(optimizer).__name__,
                 "an optimizer without a projector (another one is attached to it)")
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        params = [(n, p) for n, p in self.model.named_parameters() if id(p) in held]
        if not params:
            fail("optimizer", type(optimizer).__name__, "an optimizer holding model's parameters")
        self._prepare(params)  # may refuse; nothing is attached yet
        self._stats = running_stat_modules(self.model)
        warn_running_stats(self, self.model, type(self).__name__)
        self._handles = [optimizer.register_step_pre_hook(self._snapshot),
                         optimizer.register_step_post_hook(self._after_step)]
        self.optimizer = optimizer
        optimizer._null_space_projector = self
        return self

    def detach(self):
        """Stop projecting: remove the hooks from the optimizer."""
        if self.optimizer is not None:
            for handle in self._handles:
                handle.remove()
            self.optimizer._null_space_projector = None
        self.optimizer = self._handles = self._before = None

    def _prepare(self, params):
        raise NotImplementedError

    def _project_step(self, old):
        raise NotImplementedError

    def write(self, values):
        """Copy values into the projected parameters."""
        with torch.no_grad():
            for p, value in zip(self.params, values):
                p.copy_(value)

    def _snapshot(self, optimizer, args, kwargs):
        if any(m.training for _, m in self._stats):  # model.train() in the loop is seen
            warn_running_stats(self, self.model, type(self).__name__)
        self._before = ([p.detach().clone() for p in self.params], snapshot_state(optimizer))

    def _after_step(self, optimizer, args, kwargs):
        old, state = self._before
        try:
            self._project_step(old)
        except Exception as error:
            self.write(old)
            restore_state(optimizer, state)
            error.add_note(f"{type(self).__name__}: the projection failed inside "
                           "optimizer.step(); parameters and optimizer state are back as they "
                           "were before that step")
            raise
        finally:
            self._before = None
