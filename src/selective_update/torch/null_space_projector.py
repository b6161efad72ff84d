"""NullSpaceProjector: every parameter trains; each step the optimizer took is projected onto the
null space of the kept outputs' Jacobian at chosen inputs."""
from __future__ import annotations

import time

import torch
from torch import nn

from ..algorithms.solve import psd_factor, psd_solve
from ..core.runs import RestoreWarning, TrivialNullSpaceWarning
from ..notices import PromiseWarning, warn_once
from ..settings import (CHORD_RATE, FAST_GRAM_RTOL, FAST_SWEEPS, GAUSS_NEWTON_MAX_STEPS,
                        PROJECTION_SWEEPS, RESTORE_TOL, TRIVIAL_SHARE)
from ..validation import check_real, fail
from . import ops
from .kept_jacobian import KeptJacobian
from .kept_outputs import KeptOutputs
from .model_checks import evaluation, module_trail
from .projector_cost import estimate, warn_over_budget
from .step_hooks import StepHooks

# One step moving the kept outputs at inputs by more than this share of their scale is warned
# about, once: at that learning rate the first-order projection protects little.
LEAK_SHARE = 0.01
# Half precision: Gauss-Newton restores the kept outputs to this many of the dtype's eps times
# their scale (the rounding of the written parameters and of the forward pass leaves a floor:
# 0.3-1 eps on the tests' CNNs, up to 2.6 eps in float16 on the bench's; 1e-5 of float32 is not
# reachable there), or to how far a random one-unit-in-the-last-place move of every parameter
# moves them, where that is more.
HALF_RESTORE_EPS = 4.0
# attach() times the per-sample pass on these many protected inputs and four times as many (the
# first pass of a process carries torch.func's set-up: it runs on one input, untimed).
DRY_INPUTS = 4
STEP_BUDGET_S, MEMORY_BUDGET_GB = 5.0, 4.0  # the defaults above which attach() warns

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


def _norm(tensors):
    return sum(float((t * t).sum()) for t in tensors) ** 0.5


def _refusal(error, trail):
    """Fail in one line naming where the dry projection broke and a fix."""
    text = str(error).splitlines()[0] if str(error) else ""
    where = f"module {trail[-1]!r}" if trail and trail[-1] else "the model"
    hint = next((h for key, h in HINTS if key in text),
                "layers that torch.func.vmap and jacrev can differentiate per sample")
    fail("model", f"{where} failing a dry projection ({type(error).__name__}: {text[:160]})",
         f"a model the projector can differentiate per sample in eval mode; fix: {hint}")


def restore_tolerance(dtype, scale) -> float:
    """Return the Gauss-Newton tolerance for a model of this dtype whose kept outputs have this
    scale: RESTORE_TOL where the study sets one, else HALF_RESTORE_EPS of the dtype's eps."""
    name = str(dtype).removeprefix("torch.")
    tol = RESTORE_TOL.get(name, HALF_RESTORE_EPS * torch.finfo(dtype).eps)
    return tol * max(1.0, scale)


class NullSpaceProjector(StepHooks):
    """Project each optimizer step onto the null space of the kept outputs' Jacobian at inputs.

    The step projected is the one the optimizer took (after momentum, Adam and weight decay),
    seen through optimizer step hooks. Only parameters of model that the optimizer holds are
    projected. The kept outputs are those of the model in eval mode (dropout off, running
    statistics), whatever mode you train in; the Jacobian's blocks (kept_jacobian.py) come from
    one vmap/jacrev pass per step and J Jᵀ is factored once per step in float64 (the study's
    solver, algorithms/solve.py; a float32 model's rows first enter it through a float32 product
    and a float32 factor, swept in float64 and kept only when the projection holds to
    FAST_GRAM_RTOL, and projector.last says which). corrected=True then takes Gauss-Newton
    steps, reusing that factor, until the kept outputs at inputs are back within RESTORE_TOL
    (relative to their scale; bfloat16 and float16: HALF_RESTORE_EPS of their eps) of their
    values at attach(), at most GAUSS_NEWTON_MAX_STEPS.

    attach() refuses (ValueError naming the module) a model it cannot differentiate, after a dry
    projection on a few inputs; it says the estimated cost of a step (projector.estimate:
    seconds, peak MB) and warns (CostWarning) above step_budget_s or memory_budget_gb; it warns
    when the constraints leave no direction to train (TrivialNullSpaceWarning). Every step it
    names modules whose running statistics move (PromiseWarning); its first step warns when the
    projection removed nearly all of the step, or all of its effect on the other outputs; and a
    step that moves the kept outputs by more than LEAK_SHARE of their scale is warned about once
    (the learning rate is too large for a first-order projection). A projection that fails
    inside optimizer.step() puts the parameters and the optimizer state back, then raises.
    Refused at construction: NaN or inf in inputs, RNN layers (nn.LSTM, nn.GRU: torch.func has
    no per-sample rule; split_head and LayerSubspaceProjector work on them), a model returning
    other than a tensor without output_fn, uninitialised lazy parameters.
    """

    def __init__(self, model, keep, inputs, *, corrected=False, output_fn=None,
                 step_budget_s=STEP_BUDGET_S, memory_budget_gb=MEMORY_BUDGET_GB):
        if not isinstance(corrected, bool):
            fail("corrected", corrected, "True or False")
        self.budget = (check_real("step_budget_s", step_budget_s, 0.0, strict=True),
                       check_real("memory_budget_gb", memory_budget_gb, 0.0, strict=True))
        if isinstance(model, nn.Module):
            rnn = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.RNNBase)]
            if rnn:
                fail("model", f"a model with {type(rnn[0][1]).__name__} {rnn[0][0]}",
                     "a model without nn.LSTM, nn.GRU or nn.RNN (torch.func has no per-sample "
                     "rule for them); for such a model use split_head or LayerSubspaceProjector")
        probe = KeptOutputs(model, keep, inputs, output_fn, helper="NullSpaceProjector")
        super().__init__(model)
        self.keep, self.inputs = probe.keep, inputs
        self.corrected, self.output_fn = corrected, output_fn
        self.last, self.estimate = {}, {}
        self._jac = self._target = self._tol = self._gram = self._previous = None
        self._steps, self._scale = 0, 1.0

    def _prepare(self, params):
        with module_trail(self.model) as trail:
            try:
                jac = KeptJacobian(self.model, self.keep, self.inputs, self.output_fn, params)
                self._jac = jac
                fast, pass_seconds = self._dry_run(jac)
                size = sum(p.numel() for p in jac.params)
                share = self._dry_share(jac) if jac.m >= size else 1.0
                if self.corrected:
                    self._kept()
            except Exception as error:  # noqa: BLE001  (any failure: refuse, nothing changed)
                self._jac = None
                _refusal(error, trail)
        self.params = jac.params
        self._target = self._kept()
        self._scale = float(self._target.abs().max())
        self._tol = restore_tolerance(self.params[0].dtype, self._scale)
        if self.params[0].dtype in (torch.bfloat16, torch.float16):
            self._tol = max(self._tol, self._rounding_floor())
        if share <= TRIVIAL_SHARE:
            warn_once(self, "trivial", f"NullSpaceProjector: {jac.m} constraints span every "
                      f"direction of the {size} parameters the optimizer holds: projected "
                      "steps are zero and nothing trains (protect fewer inputs or outputs)",
                      TrivialNullSpaceWarning)
        self.estimate = estimate(jac, pass_seconds, fast)
        warn_over_budget(self, self.estimate, *self.budget)

    def _dry_run(self, jac):
        """Linearize at one input and project a random step there (refuses a model torch.func
        cannot differentiate), then time the pass at DRY_INPUTS and 4 * DRY_INPUTS inputs, and
        one J v and Jᵀ a at the latter. Return (whether the rows are float32, (a, b, c): the
        pass over n inputs takes about a + b * n seconds, a J v and a Jᵀ a c * n seconds)."""
        lin = jac.linearize(self.inputs[:1])
        fast = lin.fast
        factor = psd_factor(ops, lin.exact().gram())
        v = self._random_step(jac)
        self._project_vector(lin, factor, v)
        times = []
        for count in sorted({min(len(self.inputs), c) for c in (DRY_INPUTS, 4 * DRY_INPUTS)}):
            start = time.perf_counter()
            lin = jac.linearize(self.inputs[:count])
            times.append((count, time.perf_counter() - start))
        start = time.perf_counter()
        lin.jtv(lin.jv(v))
        vectors = (time.perf_counter() - start) / times[-1][0]
        (n1, t1), (n2, t2) = times[0], times[-1]
        slope = max(0.0, (t2 - t1) / (n2 - n1)) if n2 > n1 else t1 / n1
        return fast, (max(0.0, t1 - slope * n1), slope, vectors)

    def _rounding_floor(self):
        """Return how far the kept outputs move when every parameter moves one unit in the last
        place of its dtype, at random: what writing them in half precision cannot undo."""
        old = [p.detach().clone() for p in self.params]
        generator = torch.Generator(device="cpu").manual_seed(0)
        self.write([torch.nextafter(p, torch.where(
            torch.rand(p.shape, generator=generator) < 0.5, -torch.inf, torch.inf).to(p))
            for p in old])
        try:
            return float((self._kept() - self._target).abs().max())
        finally:
            self.write(old)

    @staticmethod
    def _random_step(jac):
        generator = torch.Generator(device="cpu").manual_seed(0)
        return [torch.randn(p.shape, generator=generator, dtype=torch.float64).to(p.device)
                for p in jac.params]

    def _dry_share(self, jac):
        """Project a random step on every input; return the share of its norm that is kept."""
        v = self._random_step(jac)
        _, kept = self._factor_and_project(jac.linearize(), v)
        return _norm(kept) / _norm(v)

    def _kept(self):
        """Return the kept outputs at inputs now (eval mode), float64, input major."""
        with evaluation(self.model), torch.no_grad():
            out = self._jac.wrapper(self.inputs)
        return out.index_select(1, self._jac.index).reshape(-1).to(torch.float64)

    def _outputs(self):
        with evaluation(self.model), torch.no_grad():
            return self._jac.wrapper(self.inputs).to(torch.float64)

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
        if not all(bool(torch.isfinite(s).all()) for s in step):
            raise FloatingPointError(
                "NullSpaceProjector: the optimizer's step holds NaN or inf, so there is nothing "
                "to project (in float16, Adam's eps=1e-8 rounds to 0: use eps=1e-4, or bfloat16)")
        self.write(old)  # linearize where the step started
        lin = self._jac.linearize()
        if not self.corrected:
            self._check_leak(lin.kept)
        factor, projected = self._factor_and_project(lin, step)
        if self._steps == 0:
            self._check_first_step(lin, old, step, projected)
        self.write([o + s.to(o.dtype) for o, s in zip(old, projected)])
        steps, residual = 0, None
        if self.corrected:
            steps, residual = self._restore(lin, factor)
        self._steps += 1
        self.last = {"gauss_newton_steps": steps, "residual": residual, "gram": self._gram}

    def _check_leak(self, kept_now, leak=None):
        """Warn once when a step moved the kept outputs by more than LEAK_SHARE of their scale:
        leak given (before a correction), or the change since the last step's start."""
        if leak is None:
            previous, self._previous = self._previous, kept_now
            if previous is None:
                return
            leak = float((kept_now - previous).abs().max())
        scale = max(1.0, self._scale)
        if leak <= max(LEAK_SHARE * scale, self._tol):  # not below the dtype's resolution
            return
        if self.corrected:
            advice = ("Gauss-Newton put them back on inputs only, so held-out inputs may drift "
                      "more than with no helper; lower the learning rate (the leak falls 4x "
                      "when it halves) or protect more inputs")
        else:
            advice = ("at this learning rate the first-order projection protects little; lower "
                      "the learning rate (the leak falls 4x when it halves), use corrected=True, "
                      "or protect more inputs")
        warn_once(self, "leak", f"NullSpaceProjector: one step moved the kept outputs at inputs "
                  f"by {leak:.3g}, {leak / scale:.1%} of their scale {scale:.3g}; {advice}",
                  PromiseWarning)

    def _check_first_step(self, lin, old, step, projected):
        """Warn when the first real step's projection removed nearly all of the step, or all of
        its effect on the outputs not kept (a LoRA adapter with B = 0: J has zero columns where
        the step does nothing)."""
        share = _norm(projected) / max(_norm(step), 1e-300)
        effect = None
        others = [j for j in range(lin.outputs.shape[1]) if j not in self.keep]
        if others and share > TRIVIAL_SHARE:
            moved = []
            for change in (step, projected):
                self.write([o + s.to(o.dtype) for o, s in zip(old, change)])
                moved.append(float((self._outputs() - lin.outputs)[:, others].abs().max()))
            self.write(old)
            if moved[0] > 0:
                effect = moved[1] / moved[0]
        if share <= TRIVIAL_SHARE or (effect is not None and effect <= TRIVIAL_SHARE):
            what = (f"{1 - share:.1%} of the step" if share <= TRIVIAL_SHARE else
                    f"all but {effect:.2g} of its effect on the outputs not kept")
            warn_once(self, "trivial", f"NullSpaceProjector: the first step's projection removed "
                      f"{what}: the constraints leave nothing that trains (protect fewer inputs "
                      "or outputs, or train parameters that reach the other outputs)",
                      TrivialNullSpaceWarning)

    def _factor_and_project(self, lin, v):
        """Factor J Jᵀ and project v. A float32 model's rows enter J Jᵀ through a float32
        product, factored in float32 and then, if the projection still leaves more than
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
        residual falls by CHORD_RATE per step; otherwise the next step re-linearizes. A residual
        that stops falling at a fresh linearization is the rounding floor of the parameters'
        dtype: the steps stop there.
        """
        r = self._kept() - self._target
        err, steps, fresh = float(r.abs().max()), 0, False
        self._check_leak(None, err)
        while err > self._tol and steps < GAUSS_NEWTON_MAX_STEPS:
            correction = lin.jtv(_solve(factor, r))
            self.write([p.detach() - c.to(p.dtype) for p, c in zip(self.params, correction)])
            r = self._kept() - self._target
            err, previous, steps = float(r.abs().max()), err, steps + 1
            if err > CHORD_RATE * previous and err > self._tol:
                if fresh and err >= 0.5 * previous:
                    break  # no progress even at a fresh linearization
                lin = self._jac.linearize().exact()  # a restore needs every direction
                factor, fresh = psd_factor(ops, lin.gram()), True
        if err > self._tol:
            warn_once(self, "restore", f"NullSpaceProjector: kept outputs still {err:.3g} from "
                      f"their target after {steps} Gauss-Newton steps (tolerance {self._tol:.3g}"
                      ", relative to their scale); shown once: projector.last has each step's "
                      "residual", RestoreWarning)
        return steps, err
