"""NullSpaceProjector: every parameter trains; each step the optimizer took is projected onto the
null space of the kept outputs' Jacobian at chosen inputs."""
from __future__ import annotations

import torch

from ..algorithms.solve import psd_factor, psd_solve
from ..core.runs import RestoreWarning, TrivialNullSpaceWarning
from ..settings import (CHORD_RATE, FAST_GRAM_RTOL, FAST_SWEEPS, GAUSS_NEWTON_MAX_STEPS,
                        PROJECTION_SWEEPS, RESTORE_TOL, TRIVIAL_SHARE)
from ..validation import fail
from . import ops
from .kept_jacobian import KeptJacobian
from .kept_outputs import KeptOutputs
from ..notices import warn_once
from .model_checks import evaluation, module_trail, warn_running_stats
from .step_hooks import StepHooks

VALUE_FLOW = "no Python control flow on tensor values (.item(), if x.sum() > 0) in forward"
HINTS = (("randomness", "put the module in eval mode or draw no random numbers in forward"),
         ("data-dependent", VALUE_FLOW), (".item()", VALUE_FLOW),
         ("attention", "the math attention kernel: torch.nn.attention.sdpa_kernel("
                       "SDPBackend.MATH)"))


def _solve(factor, r):
    """Return (J Jᵀ)⁻¹ r through the study's solver (a Cholesky factor, pinv where it failed),
    in the factor's dtype (float32 for a float32 model's first try), returned in float64."""
    solved = psd_solve(ops, factor, r.reshape(-1, 1).to(factor[0].dtype))
    return solved.reshape(-1).to(torch.float64)


def _refusal(error, trail):
    """Fail in one line naming where the dry projection broke and a fix."""
    text = str(error).splitlines()[0] if str(error) else ""
    where = f"module {trail[-1]!r}" if trail and trail[-1] else "the model"
    hint = next((h for key, h in HINTS if key in text),
                "layers that torch.func.vmap and jacrev can differentiate per sample")
    fail("model", f"{where} failing a dry projection ({type(error).__name__}: {text[:160]})",
         f"a model the projector can differentiate per sample in eval mode; fix: {hint}")


class NullSpaceProjector(StepHooks):
    """Project each optimizer step onto the null space of the kept outputs' Jacobian at inputs.

    The step projected is the one the optimizer took (after momentum, Adam and weight decay),
    seen through optimizer step hooks. Only parameters of model that the optimizer holds are
    projected. The kept outputs are those of the model in eval mode (dropout off, running
    statistics), whatever mode you train in; the Jacobian's blocks (kept_jacobian.py) come from
    one vmap/jacrev pass per step and J Jᵀ is factored once per step in float64 (the study's
    solver, algorithms/solve.py; a float32 model's explicit rows first enter it through a
    float32 product and a float32 factor, swept in float64 and kept only when the projection
    holds to FAST_GRAM_RTOL, and projector.last says which). corrected=True then takes
    Gauss-Newton steps, reusing that factor, until the kept outputs at inputs are back within
    RESTORE_TOL (relative to their scale) of their values at attach(), at most
    GAUSS_NEWTON_MAX_STEPS.

    attach() runs one dry projection and refuses (ValueError naming the module) a model it
    cannot differentiate; it warns when the constraints leave no direction to train
    (TrivialNullSpaceWarning) and when running statistics will move the kept outputs
    (PromiseWarning). A projection that fails inside optimizer.step() puts the parameters and
    the optimizer state back as they were before that step, then raises.
    """

    def __init__(self, model, keep, inputs, *, corrected=False, output_fn=None):
        if not isinstance(corrected, bool):
            fail("corrected", corrected, "True or False")
        probe = KeptOutputs(model, keep, inputs, output_fn)  # validates; changes nothing
        super().__init__(model)
        self.keep, self.inputs = probe.keep, inputs
        self.corrected, self.output_fn = corrected, output_fn
        self.last = {}
        self._jac = self._target = self._tol = self._gram = None

    def _prepare(self, params):
        with module_trail(self.model) as trail:
            try:
                jac = KeptJacobian(self.model, self.keep, self.inputs, self.output_fn, params)
                share = self._dry_run(jac)
            except Exception as error:  # noqa: BLE001  (any failure: refuse, nothing changed)
                _refusal(error, trail)
        self._jac, self.params = jac, jac.params
        self._target = self._kept()
        dtype = str(self.params[0].dtype).removeprefix("torch.")
        self._tol = RESTORE_TOL.get(dtype, 1e-5) * max(1.0, float(self._target.abs().max()))
        size = sum(p.numel() for p in self.params)
        if jac.m >= size and share <= TRIVIAL_SHARE:
            warn_once(self, "trivial", f"NullSpaceProjector: {jac.m} constraints span every "
                      f"direction of the {size} parameters the optimizer holds: projected "
                      "steps are zero and nothing trains (protect fewer inputs or outputs)",
                      TrivialNullSpaceWarning)
        warn_running_stats(self, self.model, "NullSpaceProjector")

    def _dry_run(self, jac):
        """Linearize and project a random step; return the share of its norm that is kept."""
        self._jac = jac
        lin = jac.linearize()
        generator = torch.Generator(device="cpu").manual_seed(0)
        v = [torch.randn(p.shape, generator=generator, dtype=torch.float64).to(p.device)
             for p in jac.params]
        _, kept = self._factor_and_project(lin, v)
        if self.corrected:
            self._kept()
        norm = sum(float((t * t).sum()) for t in v) ** 0.5
        return sum(float((t * t).sum()) for t in kept) ** 0.5 / norm

    def _kept(self):
        """Return the kept outputs at inputs now (eval mode), float64, kept output major."""
        with evaluation(self.model), torch.no_grad():
            out = self._jac.wrapper(self.inputs)
        return out.index_select(1, self._jac.index).T.reshape(-1).to(torch.float64)

    @staticmethod
    def _project_vector(lin, factor, v, first=None, sweeps=PROJECTION_SWEEPS, goal=None):
        """Return (v - Jᵀ (J Jᵀ)⁻¹ J v applied `sweeps` times, in float64, and its leak J v);
        first: J v. goal: stop as soon as the leak's largest entry is at most goal (without a
        goal the last leak is not computed: None)."""
        leak = lin.jv(v) if first is None else first
        for sweep in range(sweeps):
            v = [t - c for t, c in zip(v, lin.jtv(_solve(factor, leak)))]
            if goal is None and sweep + 1 == sweeps:
                return v, None  # no one reads the last leak
            leak = lin.jv(v)
            if goal is not None and float(leak.abs().max()) <= goal:
                break
        return v, leak

    def _project_step(self, old):
        step = [(p.detach() - o).to(torch.float64) for p, o in zip(self.params, old)]
        self.write(old)  # linearize where the step started
        lin = self._jac.linearize()
        factor, step = self._factor_and_project(lin, step)
        self.write([o + s.to(o.dtype) for o, s in zip(old, step)])
        steps, residual = 0, None
        if self.corrected:
            steps, residual = self._restore(lin, factor)
        self.last = {"gauss_newton_steps": steps, "residual": residual, "gram": self._gram}

    def _factor_and_project(self, lin, v):
        """Factor J Jᵀ and project v. A float32 model's explicit rows enter J Jᵀ through a
        float32 product, factored in float32 and then, if the projection still leaves more than
        FAST_GRAM_RTOL of J v, in float64; if that falls short too (an ill-conditioned J Jᵀ),
        everything is formed again in float64."""
        first = lin.jv(v)
        if lin.fast:
            goal = FAST_GRAM_RTOL * float(first.abs().max())
            gram = lin.gram()
            for dtype, sweeps in ((torch.float32, FAST_SWEEPS), (torch.float64, PROJECTION_SWEEPS)):
                factor = psd_factor(ops, gram.to(dtype))
                if not factor[2]:
                    continue  # not positive definite in this precision
                projected, leak = self._project_vector(lin, factor, v, first, sweeps, goal)
                if float(leak.abs().max()) <= goal:
                    self._gram = f"float32 rows, {str(dtype).removeprefix('torch.')} factor"
                    return factor, projected
            del gram, factor
            lin.exact()
            self._gram = "float64 (float32 rows fell short)"
            first = lin.jv(v)
        else:
            self._gram = "float64"
        factor = psd_factor(ops, lin.gram())
        return factor, self._project_vector(lin, factor, v, first)[0]

    def _restore(self, lin, factor):
        """Take Gauss-Newton steps until the kept outputs at inputs are back at their target.

        Each step reuses the step's factor (a chord step: one Jᵀ a, no new Gram) while the
        residual falls by CHORD_RATE per step; otherwise the next step re-linearizes.
        """
        r = self._kept() - self._target
        err, steps = float(r.abs().max()), 0
        while err > self._tol and steps < GAUSS_NEWTON_MAX_STEPS:
            correction = lin.jtv(_solve(factor, r))
            self.write([p.detach() - c.to(p.dtype) for p, c in zip(self.params, correction)])
            r = self._kept() - self._target
            err, previous, steps = float(r.abs().max()), err, steps + 1
            if err > CHORD_RATE * previous and err > self._tol:
                lin = self._jac.linearize().exact()  # a restore needs every direction
                factor = psd_factor(ops, lin.gram())
        if err > self._tol:
            warn_once(self, "restore", f"NullSpaceProjector: kept outputs still {err:.3g} from "
                      f"their target after {steps} Gauss-Newton steps (tolerance {self._tol:.3g}"
                      ", relative to their scale); shown once: projector.last has each step's "
                      "residual", RestoreWarning)
        return steps, err
