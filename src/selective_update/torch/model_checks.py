"""What the torch helpers check on a user's model: names, running statistics, shared weights; the
evaluation mode their own passes run in; their warnings, pointed at the user's line."""
from __future__ import annotations

import contextlib

from torch import nn
from torch.nn.parameter import is_lazy

from ..notices import warn_once
from ..validation import fail


def describe(module):
    """Name a module in one line: its class, and its sizes for a Linear."""
    if isinstance(module, nn.Linear):
        return f"Linear(in_features={module.in_features}, out_features={module.out_features})"
    return type(module).__name__


def check_module(name, model):
    if not isinstance(model, nn.Module):
        fail(name, type(model).__name__, "a torch.nn.Module")


def check_initialised(name, model, helper):
    """Refuse a model whose lazy modules (nn.LazyLinear, ...) have not made their parameters yet."""
    lazy = [n for n, p in model.named_parameters() if is_lazy(p)]
    if lazy:
        fail(name, f"a model with uninitialised lazy parameters ({', '.join(lazy[:3])})",
             f"an initialised model: run one forward pass (model(x)) before {helper}")


def name_of(model, module):
    """Return module's name inside model ('' for model itself, '?' when it is not inside)."""
    return next((n for n, m in model.named_modules(remove_duplicate=False) if m is module), "?")


def running_stat_modules(model):
    """Return [(name, module)] whose forward in train mode updates running statistics (buffers)."""
    return [(n, m) for n, m in model.named_modules()
            if getattr(m, "track_running_stats", False)
            and getattr(m, "running_mean", None) is not None]


def shared_with(model, tensor, owner):
    """Return the names under which modules other than owner hold this very parameter."""
    return [f"{n}.{p}" if n else p for n, m in model.named_modules(remove_duplicate=False)
            if m is not owner for p, t in m.named_parameters(recurse=False) if t is tensor]


@contextlib.contextmanager
def evaluation(model):
    """Run the helpers' own passes in eval mode (no dropout, running statistics) with the math
    attention kernel, which every torch.func transform differentiates; flags put back after."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        for m, mode in modes:
            m.training = mode


def warn_running_stats(owner, model, helper):
    """Warn about modules that update running statistics and are in train mode now, each named
    once, all of them in one warning (they move the kept outputs)."""
    warned = owner.__dict__.setdefault("_warned_stats", set())
    moving = [n for n, m in running_stat_modules(model) if m.training and n not in warned]
    if moving:
        warned.update(moving)
        warn_once(owner, f"running statistics {moving}",
                  f"{helper}: {', '.join(moving)} in train mode update running statistics, which "
                  "move the kept outputs (buffers are not parameters: nothing keeps them); put "
                  "those modules in eval mode while training, e.g. "
                  + "; ".join(f"model.get_submodule({n!r}).eval()" for n in moving)
                  + " after model.train()")


@contextlib.contextmanager
def module_trail(model):
    """Yield the list of modules whose forward pass is running (names, outermost first): what
    is left in it after an exception names the module that raised."""
    trail = []

    def enter(name):
        def hook(module, args):
            trail.append(name)
        return hook

    def leave(module, args, output):
        if trail:
            trail.pop()

    handles = []
    for name, module in model.named_modules():
        handles += [module.register_forward_pre_hook(enter(name)),
                    module.register_forward_hook(leave)]
    try:
        yield trail
    finally:
        for handle in handles:
            handle.remove()
