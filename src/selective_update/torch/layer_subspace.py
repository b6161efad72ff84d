"""LayerSubspaceProjector: the study's layer_subspace (GPM, Adam-NSCL) for any model built of
nn.Linear and nn.Conv2d layers.

Forward hooks collect each layer's inputs on the protected inputs once (a Conv2d's unfolded into
patches, as GPM does); algorithms/subspace.py keeps, per layer, the top singular directions of
[inputs, 1] that hold `energy` and takes their part out of every step the optimizer took (after
momentum, Adam and decay). The rows `train` of the head are not projected. With energy=1.0 no
step changes any layer's output on the protected inputs, so by induction the kept outputs stay
put there to rounding, while directions the inputs do not span still train.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from ..algorithms import subspace
from ..core.runs import TrivialNullSpaceWarning
from ..core.strategies import ENERGY
from ..validation import check_outputs, check_real, fail
from . import ops
from .kept_jacobian import conv_supported
from ..notices import warn_once
from .kept_outputs import check_inputs
from .model_checks import (check_initialised, check_module, describe, evaluation,
                           shared_with)
from .step_hooks import StepHooks


def _inputs_rows(module, x):
    """Return a layer's inputs as rows (samples x positions, features), float64 numpy."""
    if isinstance(module, nn.Conv2d):
        x = F.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride)
        x = x.transpose(1, 2)  # (n, L, D): one row per patch
    return x.reshape(-1, x.shape[-1]).to(torch.float64).cpu().numpy()


class LayerSubspaceProjector(StepHooks):
    """Project each optimizer step off the protected inputs' directions of every layer.

    model: an nn.Module; its nn.Linear and nn.Conv2d layers (groups=1, zero padding) called on
    inputs are projected. head: the nn.Linear whose rows `train` learn freely. inputs: the
    protected batch. energy in (0, 1]: the share of each layer's squared singular values whose
    directions are protected (1.0: all of them: the kept outputs stay fixed on inputs).
    Every other parameter (norms, embeddings, attention's in_proj, layers not called on inputs)
    gets requires_grad=False at attach(), and a PromiseWarning lists them; detach() gives back
    the flags. Nothing in model changes before attach() succeeds. Refused at construction: NaN
    or inf in inputs or in a layer's inputs, uninitialised lazy parameters. RNN layers (nn.LSTM,
    nn.GRU) are not projected: they are frozen, and the Linear layers around them train.
    """

    def __init__(self, model, head, train, inputs, energy=ENERGY.default):
        check_module("model", model)
        if not isinstance(head, nn.Linear) or not any(m is head for m in model.modules()):
            fail("head", describe(head), "an nn.Linear inside model")
        if parametrize.is_parametrized(head):
            fail("head", describe(head), "an nn.Linear without parametrizations (unsplit it)")
        train = check_outputs("train", train, head.out_features)
        energy = check_real("energy", energy, 0.0, strict=True)
        if energy > 1.0:
            fail("energy", energy, "a number in (0, 1]")
        check_inputs(inputs)
        check_initialised("model", model, "LayerSubspaceProjector")
        seen = self._collect(model, inputs)
        if head not in seen:
            fail("head", describe(head), "an nn.Linear that model calls on inputs")
        super().__init__(model)
        self.head, self.train, self.energy = head, train, energy
        self.layers, self.ranks = [], {}
        for name, module in model.named_modules():
            if module not in seen:
                continue
            h = np.concatenate([_inputs_rows(module, x) for x in seen[module]])
            if not np.isfinite(h).all():  # numpy's SVD fails on NaN and hangs on inf
                fail("inputs", f"a batch on which {name!r} receives NaN or inf",
                     "inputs whose every layer's inputs are finite (check the model's weights)")
            U = subspace.basis(h, energy, bias=module.bias is not None)
            U = torch.as_tensor(U, dtype=module.weight.dtype, device=module.weight.device)
            u_b = U[-1:] if module.bias is not None else torch.zeros_like(U[:1])
            U_W = U[:-1] if module.bias is not None else U
            mask = torch.ones(1, module.out_channels if isinstance(module, nn.Conv2d)
                              else module.out_features, dtype=U.dtype, device=U.device)
            if module is head:
                mask[0, list(train)] = 0.0  # the trained rows stay free
            self.layers.append((module, U_W.contiguous(), u_b.contiguous(), mask))
            self.ranks[name] = (U.shape[1], U.shape[0])
        projected = {id(getattr(m, a)) for m, *_ in self.layers for a in ("weight", "bias")
                     if getattr(m, a) is not None}
        self.frozen = [(n, p) for n, p in model.named_parameters() if id(p) not in projected]
        self._flags = []
        if all(r == d for (r, d) in self.ranks.values()):
            warn_once(self, "trivial", "LayerSubspaceProjector: the protected inputs span every "
                      "direction of every layer: only the head's train rows can learn",
                      TrivialNullSpaceWarning)

    @staticmethod
    def _collect(model, inputs):
        """Run model on inputs once with hooks; return {layer: [its inputs, one per call]}."""
        seen, handles = {}, []

        def hook(module, args, output):
            seen.setdefault(module, []).append(args[0].detach())

        for _, module in model.named_modules():
            if (isinstance(module, nn.Linear) or conv_supported(module)) \
                    and not parametrize.is_parametrized(module) \
                    and not any(shared_with(model, t, module) for t in module.parameters(False)):
                handles.append(module.register_forward_hook(hook))
        try:
            # Grad on: a fused fast path (TransformerEncoderLayer) skips its submodules without it.
            with evaluation(model), torch.enable_grad():
                model(inputs)
        except Exception as error:  # noqa: BLE001  (any failure means the inputs do not fit)
            first = str(error).splitlines()[0] if str(error) else type(error).__name__
            fail("inputs", f"a tensor of shape {tuple(inputs.shape)}",
                 f"a batch model can run ({type(error).__name__}: {first[:160]})")
        finally:
            for handle in handles:
                handle.remove()
        return seen

    def _prepare(self, params):
        held = {id(p) for _, p in params}
        self._parts = [(module, U_W, u_b, mask, module.weight,
                        module.bias if module.bias is not None and id(module.bias) in held
                        else None)
                       for module, U_W, u_b, mask in self.layers if id(module.weight) in held]
        if not self._parts:
            fail("optimizer", "an optimizer without the projected layers' weights",
                 "an optimizer holding model's nn.Linear or nn.Conv2d weights")
        self.params = [p for *_, w, b in self._parts for p in (w, b) if p is not None]
        # Everything validated: from here on the model changes (a refused attach() changed none).
        self._flags = [(p, p.requires_grad) for _, p in self.frozen]
        for _, p in self.frozen:
            p.requires_grad_(False)
            p.grad = None
        if self.frozen:
            names = [n for n, _ in self.frozen]
            shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
            warn_once(self, "frozen", f"LayerSubspaceProjector froze {len(names)} parameters "
                      "outside the projected nn.Linear/nn.Conv2d layers, whose steps would move "
                      f"the kept outputs: {shown}")

    def _project_step(self, old):
        before = dict(zip(map(id, self.params), old))
        with torch.no_grad():
            for module, U_W, u_b, mask, weight, bias in self._parts:
                dW = (weight - before[id(weight)]).reshape(weight.shape[0], -1)
                db = bias - before[id(bias)] if bias is not None else torch.zeros_like(mask[0])
                (cW,), (cb,) = subspace.correction(ops, [(U_W, u_b)], [dW.T], [db], mask)
                weight.sub_(cW.T.reshape(weight.shape))
                if bias is not None:
                    bias.sub_(cb)

    def detach(self):
        """Stop projecting, and give the frozen parameters back their requires_grad flags."""
        super().detach()
        for p, flag in self._flags:
            p.requires_grad_(flag)
        self._flags = []
