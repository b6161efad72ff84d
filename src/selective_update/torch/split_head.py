"""split_head: the TF1 answer's approach (a) for any nn.Module: exact for every input, optimizer,
weight decay and warm start."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..validation import check_outputs, fail
from .kept_outputs import check_module, describe

class KeepRows(nn.Module):
    """Parametrization: a frozen copy of the tensor, except `train` rows read from the original."""

    def __init__(self, value, train):
        super().__init__()
        mask = torch.zeros(value.shape[0], dtype=torch.bool, device=value.device)
        mask[list(train)] = True
        self.register_buffer("frozen", value.detach().clone())  # persistent: loads with the model
        self.register_buffer("mask", mask.reshape((-1,) + (1,) * (value.dim() - 1)),
                             persistent=False)
        self.train_rows = tuple(train)

    def forward(self, original):
        # The kept rows come bitwise from `frozen`: whatever an optimizer does to the original's
        # kept rows (decay, momentum, Adam moments) never reaches the layer.
        return torch.where(self.mask, original, self.frozen)


def _split_rows(module):
    """Return the KeepRows on module.weight, or None."""
    if not parametrize.is_parametrized(module, "weight"):
        return None
    return next((p for p in module.parametrizations.weight if isinstance(p, KeepRows)), None)


def _state_dict_post_hook(module, state_dict, prefix, local_metadata):
    """Write the split layer under its plain keys (weight, bias), as an unsplit copy expects."""
    for name in ("weight", "bias"):
        if parametrize.is_parametrized(module, name):
            for key in [k for k in state_dict if k.startswith(f"{prefix}parametrizations.{name}.")]:
                del state_dict[key]
            state_dict[prefix + name] = getattr(module, name).detach()


def _load_pre_hook(module, state_dict, prefix, *args):
    """Read plain keys (weight, bias) into the split layer: original and frozen copy alike."""
    for name in ("weight", "bias"):
        if parametrize.is_parametrized(module, name) and prefix + name in state_dict:
            value = state_dict.pop(prefix + name)
            state_dict[f"{prefix}parametrizations.{name}.original"] = value
            state_dict[f"{prefix}parametrizations.{name}.0.frozen"] = value


def split_head(model, head, train) -> list:
    """Let only the `train` rows of the nn.Linear `head` change; freeze everything else in model.

    Each of head.weight and head.bias gets a parametrization (torch.nn.utils.parametrize) that
    reads the kept rows from a frozen buffer, so they stay bitwise fixed whatever an optimizer
    does; every other parameter of model gets requires_grad=False and grad=None, which every
    torch.optim optimizer skips (no step, no decay, no state update). Pass model.parameters() or
    the returned list to any optimizer, built before or after this call. model.state_dict() keeps
    the plain keys and shapes (head.weight, head.bias), so it loads into an unmodified copy
    (save through state_dict(): torch refuses to pickle a parametrized module whole).
    Buffers that a forward pass updates (BatchNorm statistics) are not parameters: put those
    layers in eval mode. Returns [head's trained weight parameter, bias parameter].
    """
    check_module("model", model)
    if not isinstance(head, nn.Linear):
        fail("head", describe(head), "an nn.Linear inside model")
    if not any(m is head for m in model.modules()):
        fail("head", describe(head), "an nn.Linear inside model (this one is not in it)")
    if _split_rows(head) is not None:
        fail("head", describe(head), "a layer not split yet (split_head split this one already)")
    if parametrize.is_parametrized(head):
        fail("head", describe(head), "an nn.Linear without other parametrizations")
    train = check_outputs("train", train, head.out_features)
    # Everything validated: from here on the model changes.
    for p in model.parameters():
        p.requires_grad_(False)
        p.grad = None  # a stale gradient would still be stepped by an existing optimizer
    trained = []
    for name in ("weight", "bias"):
        value = getattr(head, name)
        if value is None:
            continue
        # No right_inverse: the original stays the same Parameter object with the same shape,
        # so an optimizer built before the call (and its warm-start state) still fits it.
        parametrize.register_parametrization(head, name, KeepRows(value, train))
        original = getattr(head.parametrizations, name).original
        original.requires_grad_(True)
        trained.append(original)
    head.register_state_dict_post_hook(_state_dict_post_hook)
    head.register_load_state_dict_pre_hook(_load_pre_hook)
    return trained
