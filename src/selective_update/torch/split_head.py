"""split_head and unsplit_head: the TF1 answer's approach (a) for any nn.Module: exact for every
input, optimizer, weight decay and warm start, and undone by unsplit_head.

The split checks its own promise at every access of the head's weight (every forward pass),
where a habit would break it: a frozen copy shared with the trained tensor, a row mask that is
not the one it made, parameters unfrozen again, a write to the head's weight lost in a
temporary. Each is held (put right) or refused, and named.
"""
from __future__ import annotations

import warnings

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..notices import PromiseWarning, caller_stacklevel, warn_once
from ..validation import check_outputs, fail
from .model_checks import (check_initialised, check_module, describe, name_of,
                           running_stat_modules, shared_with)

INT_OF_SIZE = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _rows_differing(a, b):
    """Return the row indices where a and b differ bit for bit (NaN equals the same NaN)."""
    ints = INT_OF_SIZE[a.element_size()]
    return (a.view(ints) != b.view(ints)).reshape(a.shape[0], -1).any(1).nonzero().flatten()


class KeepRows(nn.Module):
    """Parametrization: a frozen copy of the tensor, except `train` rows read from the original."""

    def __init__(self, value, train):
        super().__init__()
        self.train_rows = tuple(train)
        self.register_buffer("frozen", value.detach().clone())  # persistent: loads with the model
        self.register_buffer("mask", self.row_mask(value), persistent=False)
        self.split = None  # the _Split record (set by split_head): what the checks read
        # What the checks carry between forward passes, in a plain dict (nn.Module's
        # __setattr__ costs more than the checks): the tensor last returned with the original's
        # version then, and the mask tensor whose rows were last checked.
        self.seen = {"last": None, "mask": None}

    def row_mask(self, like):
        """Return the boolean mask of the trained rows, shaped to broadcast over `like`."""
        mask = torch.zeros(like.shape[0], dtype=torch.bool, device=like.device)
        mask[list(self.train_rows)] = True
        return mask.reshape((-1,) + (1,) * (like.dim() - 1))

    def forward(self, original):
        # The kept rows come bitwise from `frozen`: whatever an optimizer does to the original's
        # kept rows (decay, momentum, Adam moments) never reaches the layer.
        checked = (self.split is not None and isinstance(original, nn.Parameter)
                   and not original.is_meta  # not inside torch.func, a compile, a meta model
                   and not torch.compiler.is_compiling())
        if checked:
            self._check(original)
        value = torch.where(self.mask, original, self.frozen)
        if checked:
            self.seen["last"] = (value, original._version)
        return value

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self.mask = self.row_mask(self.frozen)  # not saved: made again, where frozen now lives
        if self.split is not None:
            self.split.watched = None  # a load with assign=True replaces parameters

    def _check(self, original):
        """Hold the split's promise at this access, or refuse in one line naming the habit."""
        if self.frozen.untyped_storage().data_ptr() == original.untyped_storage().data_ptr():
            self.frozen = self.frozen.clone()  # no step has run since they were tied
            warn_once(self.split, "shared", "split_head: the frozen copy of the head had become "
                      "the very tensor the optimizer trains (a load_state_dict(..., assign=True) "
                      "or an assignment); split_head gave it its own copy again")
        mask = self.mask
        if mask is not self.seen["mask"]:
            rows = mask.reshape(-1).nonzero().flatten().tolist()
            if rows != sorted(self.train_rows):
                fail("head", f"a split layer whose row mask trains rows {rows[:8]} (made for "
                     f"{list(self.train_rows)})", "a model moved with to_empty() and then loaded "
                     "(model.load_state_dict(sd) makes the mask again), or split_head after the "
                     "weights are loaded")
            self.seen["mask"] = mask
        if self.seen["last"] is not None:
            self._land_writes(original, mask)
        if self.split.flags_guard is self:
            self.split.refreeze()

    def _land_writes(self, original, mask):
        """Find in-place writes to the tensor last returned (head.weight[9] = v, .data[9] = v,
        copy_): trained rows land in the original; kept rows are refused."""
        (last, version), self.seen["last"] = self.seen["last"], None
        last, frozen = last.detach(), self.frozen
        ints = INT_OF_SIZE[last.element_size()]
        if not torch.equal(torch.where(mask, frozen.view(ints), last.view(ints)),
                           frozen.view(ints)):
            kept = _rows_differing(last, torch.where(mask, last, frozen)).tolist()
            fail("head", f"a write to the kept rows {kept[:8]} of the split head's tensor (lost: "
                 "they are read from a frozen copy)", f"writes to the trained rows "
                 f"{list(self.train_rows)}, or unsplit_head(model, head), write, and split_head "
                 "again")
        if original._version == version:  # no step since: a difference is the user's write
            now = original.detach()
            if not torch.equal(torch.where(mask, last.view(ints), now.view(ints)),
                               now.view(ints)):
                rows = _rows_differing(torch.where(mask, last, now), now)
                with torch.no_grad():
                    original[rows] = last[rows]


class _Split:
    """What split_head changed, for its checks and for unsplit_head: flags before, hooks added,
    the model and head (a plain object, so nn.Module does not register what it refers to)."""

    def __init__(self, model, head, flags, handles, names):
        self.model, self.head, self.flags, self.handles, self.names = (model, head, flags,
                                                                       handles, names)
        self.flags_guard = None  # the KeepRows that re-freezes the body (the weight's)
        self.warned_stats = set()
        self.watched = None  # made at the first check, again after every load

    def trained(self):
        """Return the parameters split_head trains (the head's originals, as loaded now)."""
        return [getattr(self.head.parametrizations, n).original for n in ("weight", "bias")
                if parametrize.is_parametrized(self.head, n)]

    def watch(self):
        """List (module, name, parameter) for every parameter split_head froze: the per-forward
        check reads these few dict entries instead of walking the model."""
        trained = {id(p) for p in self.trained()}
        self.watched = [(m, n, p) for m in self.model.modules()
                        for n, p in m._parameters.items()
                        if p is not None and id(p) not in trained]

    def refreeze(self):
        """Put requires_grad=False back on every parameter but the trained ones, and say so."""
        if self.watched is None:
            self.watch()
        for module, name, p in self.watched:
            if module._parameters.get(name) is not p:  # replaced (a load with assign=True)
                self.watch()
                break
            if p.requires_grad:
                break
        else:
            return  # the usual case: every frozen parameter still frozen
        trained = {id(p) for p in self.trained()}
        unfrozen = [(n, p) for n, p in self.model.named_parameters()
                    if p.requires_grad and id(p) not in trained]
        if not unfrozen:
            return
        for _, p in unfrozen:
            p.requires_grad_(False)
            p.grad = None
        names = ", ".join(n for n, _ in unfrozen[:4]) + (", ..." if len(unfrozen) > 4 else "")
        warn_once(self, "requires_grad", f"split_head: {len(unfrozen)} parameters outside the "
                  f"trained rows had requires_grad=True again ({names}; e.g. "
                  "model.requires_grad_(True)), which would move the kept outputs; split_head "
                  "set it back to False (unsplit_head(model, head) first to train them)")


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
    """Read plain keys (weight, bias) into the split layer: original and frozen copy alike (a
    copy of its own for the frozen one, which load_state_dict(assign=True) would else tie)."""
    for name in ("weight", "bias"):
        if parametrize.is_parametrized(module, name) and prefix + name in state_dict:
            value = state_dict.pop(prefix + name)
            state_dict[f"{prefix}parametrizations.{name}.original"] = value
            state_dict[f"{prefix}parametrizations.{name}.0.frozen"] = value.detach().clone()


def _check_head(model, head):
    check_module("model", model)
    if not isinstance(head, nn.Linear):
        fail("head", describe(head), "an nn.Linear inside model")
    if not any(m is head for m in model.modules()):
        fail("head", describe(head), "an nn.Linear inside model (this one is not in it)")


def _running_stats_hook(record):
    def hook(module, args):
        if not module.training:
            return
        moving = [n for m, n in record.names.items() if m.training]
        new = [n for n in moving if n not in record.warned_stats]
        if new:  # every module in train mode, each named once, when it first matters
            record.warned_stats.update(new)
            warnings.warn(
                f"split_head: {', '.join(new)} "
                + ("runs in train mode and updates" if len(new) == 1 else
                   "run in train mode and update") + " running statistics, which move the kept "
                "outputs (buffers are "
                "not parameters: the split does not hold them); put them in eval mode while "
                "training, e.g. " + "; ".join(f"model.get_submodule({n!r}).eval()" for n in new)
                + " after model.train()", PromiseWarning, stacklevel=caller_stacklevel())
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

    Checked at every forward pass (not inside torch.compile or torch.func): a frozen copy tied to
    the trained tensor gets its own copy back; parameters unfrozen again (model.requires_grad_
    (True)) are frozen again, with a PromiseWarning; an in-place write to head.weight or
    head.bias (it is a temporary) lands in the original where it wrote trained rows, and is
    refused (ValueError) where it wrote kept rows; a row mask not made from `train` (to_empty()
    without a load) is refused. The mask is made again at every load_state_dict.

    Refused (one-line ValueError, model untouched): a head whose weight another module shares
    (a tied embedding would train and move the kept outputs); a second split in one model
    (unsplit_head the first); uninitialised lazy parameters. Warned (PromiseWarning, at the
    first forward pass in train mode, naming every such module): BatchNorm-like modules whose
    running statistics a forward pass in train mode updates; put them in eval mode. Outputs
    computed after the head (a softmax in forward) mix the kept rows with the trained ones: the
    promise is on the head's outputs.
    Returns [head's trained weight parameter, bias parameter]. unsplit_head undoes it.
    """
    _check_head(model, head)
    check_initialised("model", model, "split_head")
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
    flags = [(n, p, p.requires_grad) for n, p in model.named_parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
        p.grad = None  # a stale gradient would still be stepped by an existing optimizer
    trained, rows = [], []
    for name in ("weight", "bias"):
        value = getattr(head, name)
        if value is None:
            continue
        # No right_inverse: the original stays the same Parameter object with the same shape,
        # so an optimizer built before the call (and its warm-start state) still fits it.
        rows.append(KeepRows(value, train))
        parametrize.register_parametrization(head, name, rows[-1])
        original = getattr(head.parametrizations, name).original
        original.requires_grad_(True)
        trained.append(original)
    record = _Split(model, head, flags,
                    [head.register_state_dict_post_hook(_state_dict_post_hook),
                     head.register_load_state_dict_pre_hook(_load_pre_hook)],
                    {m: n for n, m in running_stat_modules(model)})
    record.handles += [m.register_forward_pre_hook(_running_stats_hook(record))
                       for m in record.names]
    record.flags_guard = rows[0]
    for keep_rows in rows:
        keep_rows.split = record
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
            getattr(head.parametrizations, name)[0].split = None  # no checks while removing
            parametrize.remove_parametrizations(head, name, leave_parametrized=True)
    for handle in record.handles:
        handle.remove()
    now = dict(model.named_parameters())
    held = {id(p) for p in now.values()}
    for name, p, flag in record.flags:  # by name where a load with assign=True replaced it
        target = p if id(p) in held else now.get(name)
        if target is not None:
            target.requires_grad_(flag)
    return [p for p in (head.weight, head.bias) if p is not None]
