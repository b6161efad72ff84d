"""NullSpaceProjector: every parameter trains; each step the optimizer took is projected onto the
null space of the kept outputs' Jacobian at chosen inputs."""
from __future__ import annotations

import warnings

import torch

from ..core.runs import RestoreWarning
from ..settings import GAUSS_NEWTON_MAX_STEPS, RESTORE_TOL
from ..validation import fail
from .kept_outputs import KeptOutputs, Linearized

class NullSpaceProjector:
    """Project each optimizer step onto the null space of the kept outputs' Jacobian at inputs.

    The step projected is the one the optimizer took (after momentum, Adam and weight decay),
    seen through optimizer step hooks. Only parameters of model that the optimizer holds are
    projected; the Jacobian is never materialized (see Linearized: Gram form J J^T built from
    torch.func vjp/jvp products while kept x n <= parameters, else the parameter form J^T J).
    corrected=True then takes Gauss-Newton steps until the kept outputs at inputs are back
    within RESTORE_TOL of their values at attach() (at most GAUSS_NEWTON_MAX_STEPS; warns if not).
    The forward pass must be deterministic (dropout off, BatchNorm in eval mode).
    """

    def __init__(self, model, keep, inputs, *, corrected=False, output_fn=None):
        if not isinstance(corrected, bool):
            fail("corrected", corrected, "True or False")
        self._probe = KeptOutputs(model, keep, inputs, output_fn)  # validates; changes nothing
        self.model, self.keep, self.inputs = model, self._probe.keep, inputs
        self.corrected, self.output_fn = corrected, output_fn
        self.optimizer, self.last = None, {}
        self._f = self._handles = self._before = self._target = None

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
        names = [n for n, p in self.model.named_parameters() if id(p) in held]
        if not names:
            fail("optimizer", type(optimizer).__name__, "an optimizer holding model's parameters")
        self._f = KeptOutputs(self.model, self.keep, self.inputs, self.output_fn, names)
        self._target = self._f(self._f.flat()).detach()
        self._handles = [optimizer.register_step_pre_hook(self._snapshot),
                         optimizer.register_step_post_hook(self._project)]
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

    def _snapshot(self, optimizer, args, kwargs):
        self._before = self._f.flat().clone()

    def _project(self, optimizer, args, kwargs):
        old = self._before
        lin = Linearized(self._f, old)
        step = self._f.flat() - old
        theta = old + (step - lin.pinv(lin.jv(step)))
        steps, residual = 0, None
        if self.corrected:
            theta, steps, residual = self._restore(theta, lin)
        self._f.write(theta)
        self.last = {"gauss_newton_steps": steps, "residual": residual}

    def _restore(self, theta, lin):
        """Take Gauss-Newton steps until the kept outputs at inputs are back at their target.

        The step's own linearization is reused (a chord step: one vjp, no new Gram) while the
        residual keeps falling 10x per step; otherwise the next step re-linearizes.
        """
        tol = RESTORE_TOL.get(str(theta.dtype).removeprefix("torch."), 1e-5)
        with torch.no_grad():
            r = self._f(theta) - self._target
        err, steps = float(r.abs().max()), 0
        while err > tol and steps < GAUSS_NEWTON_MAX_STEPS:
            theta = theta - lin.pinv(r)
            with torch.no_grad():
                r = self._f(theta) - self._target
            err, previous, steps = float(r.abs().max()), err, steps + 1
            if err > 0.1 * previous:
                lin = Linearized(self._f, theta)
        if err > tol:
            warnings.warn(f"NullSpaceProjector: kept outputs still {err:.3g} from their target "
                          f"after {steps} Gauss-Newton steps (tolerance {tol:g})",
                          RestoreWarning, stacklevel=3)
        return theta, steps, err
