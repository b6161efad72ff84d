"""split_head and unsplit_head: the TF1 answer's approach (a) for any nn.Module: exact for every
input, optimizer, weight decay and warm start, and undone by unsplit_head."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..validation import check_outputs, fail
from ..notices import warn_once
from .model_checks import check_module, describe, name_of, running_stat_modules, shared_with


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


class _Split:
    """What split_head changed, for unsplit_head: flags before, hooks added (a plain object,
    so nn.Module does not register the parameters it refers to)."""

    def __init__(self, flags, handles, names):
        self.flags, self.handles, self.names = flags, handles, names


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


def _check_head(model, head):
    check_module("model", model)
    if not isinstance(head, nn.Linear):
        fail("head", describe(head), "an nn.Linear inside model")
    if not any(m is head for m in model.modules()):
        fail("head", describe(head), "an nn.Linear inside model (this one is not in it)")


def _running_stats_hook(record):
    def hook(module, args):
        if module.training:
            warn_once(record, "running statistics",
                      f"split_head: {record.names[module]} runs in train mode and updates its "
                      "running statistics, which move the kept outputs (buffers are not "
                      "parameters: the split does not hold them); put it in eval mode while "
                      "training, e.g. model.get_submodule("
                      f"{record.names[module]!r}).eval() after model.train()")
    return hook


def split_head(model, head, train) -> list:
    """Let only the `train` rows of the nn.Linear `head` change; freeze everything else in model.

    Each of head.weight and head.bias gets a parametrization (torch.nn.utils.parametrize) that
    reads the kept rows from a frozen buffer, so they stay bitwise fixed whatever an optimizer
    does; every other parameter of model gets requires_grad=False and grad=None, which every
    torch.optim optimizer skips (no step, no decay, no state update). Pass model.parameters() or
    the returned list to any optimizer, built before or after this call. model.state_dict() keeps
    the plain keys and shapes (head.weight, head.bias), so it loads into an unmodified copy
    (save through state_dict(): torch refuses to pickle a parametrized module whole).

    Refused (one-line ValueError, model untouched): a head whose weight another module shares
    (a tied embedding would train and move the kept outputs); a second split in one model
    (unsplit_head the first). Warned (PromiseWarning, once, at the first forward pass in train
    mode): BatchNorm-like modules whose running statistics a forward pass in train mode updates;
    put them in eval mode. Outputs computed after the head (a softmax in forward) mix the kept
    rows with the trained ones: the promise is on the head's outputs.
    Returns [head's trained weight parameter, bias parameter]. unsplit_head undoes it.
    """
    _check_head(model, head)
    if _split_rows(head) is not None:
        fail("head", describe(head), "a layer not split yet (split_head split this one already)")
    if parametrize.is_parametrized(head):
        fail("head", describe(head), "an nn.Linear without other parametrizations")
    split = [name_of(model, m) for m in model.modules() if _split_rows(m) is not None]
    if split:
        fail("head", describe(head), f"a Linear of a model without a split head ({split[0]!r} "
             "is split: unsplit_head(model, that layer) first)")
    for name in ("weight", "bias"):
        value = getattr(head, name)
        tied = shared_with(model, value, head) if value is not None else []
        if tied:
            fail("head", f"{describe(head)} whose {name} is also {tied[0]}",
                 f"a Linear whose {name} no other module shares (untie it first: "
                 f"head.{name} = nn.Parameter(head.{name}.detach().clone()))")
    train = check_outputs("train", train, head.out_features)
    # Everything validated: from here on the model changes.
    flags = [(p, p.requires_grad) for p in model.parameters()]
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
    record = _Split(flags, [head.register_state_dict_post_hook(_state_dict_post_hook),
                            head.register_load_state_dict_pre_hook(_load_pre_hook)],
                    {m: n for n, m in running_stat_modules(model)})
    record.handles += [m.register_forward_pre_hook(_running_stats_hook(record))
                       for m in record.names]
    head.parametrizations.weight[0].split = record
    return trained


def unsplit_head(model, head) -> list:
    """Undo split_head: plain parameters holding the current values, flags as before the split.

    head.weight and head.bias become plain Parameters again, holding what the split layer
    computes now (the kept rows' frozen values, the trained rows' values); they are the same
    Parameter objects an optimizer built after the split holds. Every parameter of model gets
    back the requires_grad it had before split_head. Returns [head.weight, head.bias].
    """
    _check_head(model, head)
    rows = _split_rows(head)
    if rows is None:
        fail("head", describe(head), "a Linear that split_head split (this one is not split)")
    record = rows.split
    for name in ("weight", "bias"):
        if parametrize.is_parametrized(head, name):
            parametrize.remove_parametrizations(head, name, leave_parametrized=True)
    for handle in record.handles:
        handle.remove()
    for p, flag in record.flags:
        p.requires_grad_(flag)
    return [p for p in (head.weight, head.bias) if p is not None]
