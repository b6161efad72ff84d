"""The bench's torch cases; no public face exports them (the bench imports this module).

- The helpers' speed cases (part `helpers`): the ~55k-parameter CNN a practitioner would write,
  and one training step with each helper against a plain AdamW step. float32 on CPU; the bench
  pins the threads (configure). Every case owns a copy of the same model and optimizer; a step is
  zero_grad, forward and cross-entropy on 128 images, backward, step.
  `python -m selective_update.torch.bench_cases N [THREADS]` prints the peak RSS (MB) of a fresh
  process that attaches a NullSpaceProjector on N protected images and takes two steps.
- The Jacobian baseline (parts `table` and `sweep`): null-space projection through the
  materialized Jacobian (torch.func.jacrev + pinv), the slow, obviously-right way the layer-wise
  Gram form is checked and timed against. Built from public pieces only (the runner's
  torch_optimizer and project_step, nullspace.forward), so it does not depend on how the
  runner's step is written.
"""
from __future__ import annotations

import copy
import resource
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import core
from ..algorithms import nullspace
from ..notices import PromiseWarning
from . import ops
from .layer_subspace import LayerSubspaceProjector
from .null_space_projector import NullSpaceProjector
from .runner import project_step, torch_optimizer
from .split_head import split_head

BATCH = 128
KEEP, TRAIN = tuple(range(9)), (9,)  # nine classes kept, the tenth learned
# Small, so that the corrected step needs few Gauss-Newton iterations (the speed row compares a
# corrected step to its uncorrected twin "when one iteration suffices"; the bench says how many).
LR = 1e-4
SIZE = 16  # 16 x 16 single-channel images


class HelperCNN(nn.Module):
    """Two 3x3 convs (16 and 32 channels, each followed by a 2x2 max-pool), 512 -> 96 -> 10."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
        self.hidden = nn.Linear(32 * 4 * 4, 96)
        self.head = nn.Linear(96, 10)

    def forward(self, x):
        return self.head(torch.relu(self.hidden(self.features(x))))


def model_facts() -> dict:
    """Describe the bench's CNN for its rows: sizes text and parameter count."""
    return dict(sizes="cnn 1x16x16: conv16-conv32-512-96-10",
                n_params=sum(p.numel() for p in HelperCNN().parameters()))


def _images(n, seed):
    return torch.rand(n, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


class Step:
    """One training step of a model with its own optimizer (and helper, if any)."""

    def __init__(self, model, optimizer, x, y, helper=None):
        self.model, self.optimizer, self.x, self.y, self.helper = model, optimizer, x, y, helper
        self.gauss_newton_steps = []  # per step, for a corrected projector

    def __call__(self):
        self.optimizer.zero_grad()
        nn.functional.cross_entropy(self.model(self.x), self.y).backward()
        self.optimizer.step()
        last = getattr(self.helper, "last", None) or {}
        if last.get("gauss_newton_steps"):
            self.gauss_newton_steps.append(last["gauss_newton_steps"])


class _Setup:
    """The model, data and protected images every case starts from."""

    def __init__(self, seed, n_protected):
        torch.manual_seed(seed)
        self.model = HelperCNN()
        self.x = _images(BATCH, seed + 1)
        self.y = torch.randint(0, 10, (BATCH,), generator=torch.Generator().manual_seed(seed))
        self.reference = _images(n_protected, seed + 2)

    def fresh(self):
        """Return a copy of the model and an AdamW optimizer over all its parameters."""
        model = copy.deepcopy(self.model)
        return model, torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01)

    def null_space(self, n, corrected=False):
        model, opt = self.fresh()
        helper = NullSpaceProjector(model, KEEP, self.reference[:n], corrected=corrected)
        return Step(model, opt, self.x, self.y, helper.attach(opt))


def helper_cases(protected=(64, 512), energy=0.97, seed=0) -> dict:
    """Return {case name: Step}: plain, split_head, null_space_<n> for each n in protected,
    null_space_corrected_<n> for the smallest n, layer_subspace_<n> for the largest."""
    setup = _Setup(seed, max(protected))
    cases = {"plain": Step(*setup.fresh(), setup.x, setup.y)}
    model, opt = setup.fresh()
    split_head(model, model.head, TRAIN)
    cases["split_head"] = Step(model, opt, setup.x, setup.y)
    for n in protected:
        cases[f"null_space_{n}"] = setup.null_space(n)
    cases[f"null_space_corrected_{min(protected)}"] = setup.null_space(min(protected), True)
    model, opt = setup.fresh()
    with warnings.catch_warnings():  # every parameter is a Linear's or a Conv2d's: none frozen
        warnings.simplefilter("error", PromiseWarning)
        helper = LayerSubspaceProjector(model, model.head, TRAIN, setup.reference, energy=energy)
    cases[f"layer_subspace_{max(protected)}"] = Step(model, opt, setup.x, setup.y,
                                                     helper.attach(opt))
    return cases


def peak_rss_mb(n, seed=0) -> float:
    """Attach a NullSpaceProjector on n protected images, take two steps; return peak RSS (MB)."""
    case = _Setup(seed, n).null_space(n)
    for _ in range(2):
        case()
    return _peak_rss_kb() / 1024


def _peak_rss_kb() -> float:
    """This process image's peak RSS in kB: VmHWM, which a new program starts afresh (ru_maxrss
    keeps the high-water mark of the process that forked it: a large bench parent would show)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux and others: kilobytes


# --- the Jacobian baseline -----------------------------------------------------------------------

def project_step_jacobian(Ws, bs, x, keep, dWs, dbs):
    """Project a step with the materialized Jacobian (torch.func.jacrev): the slow baseline."""
    sizes = [t.numel() for pair in zip(Ws, bs) for t in pair]
    shapes = [t.shape for pair in zip(Ws, bs) for t in pair]
    flat = torch.cat([t.reshape(-1) for pair in zip(Ws, bs) for t in pair])

    def kept(theta):
        parts = [p.reshape(s) for p, s in zip(torch.split(theta, sizes), shapes)]
        return nullspace.kept_outputs(ops, parts[0::2], parts[1::2], x, keep).reshape(-1)

    J = torch.func.jacrev(kept)(flat)
    step = torch.cat([t.reshape(-1) for pair in zip(dWs, dbs) for t in pair])
    projected = step - torch.linalg.pinv(J) @ (J @ step)
    parts = [p.reshape(s) for p, s in zip(torch.split(projected, sizes), shapes)]
    return parts[0::2], parts[1::2]


class JacobianNullSpaceStep:
    """One torch null_space step (masked loss, sgd, project, apply) with a given projection."""

    def __init__(self, params, data, *, keep, train, lr, dtype, device, project):
        dt = getattr(torch, dtype)

        def leaf(a):
            return torch.tensor(np.asarray(a), dtype=dt, device=device, requires_grad=True)

        L = core.n_layers(params)
        self.Ws = [leaf(params[f"W{l}"]) for l in range(1, L + 1)]
        self.bs = [leaf(params[f"b{l}"]) for l in range(1, L + 1)]
        self.x = torch.as_tensor(data.x, dtype=dt, device=device)
        self.y = torch.as_tensor(data.y, dtype=dt, device=device)
        self.mask = torch.as_tensor(core.output_mask(data.y.shape[1], train), dtype=dt,
                                    device=device)
        self.keep = keep
        self.opt = torch_optimizer("sgd", self.Ws + self.bs, lr)
        self.project = project

    def __call__(self):
        _, out = nullspace.forward(ops, self.Ws, self.bs, self.x)
        params = self.Ws + self.bs
        grads = torch.autograd.grad(((self.mask * (out - self.y)) ** 2).mean(), params)
        for p, g in zip(params, grads):
            p.grad = g
        with torch.no_grad():
            old = [p.clone() for p in params]
            self.opt.step()
            L = len(self.Ws)
            steps = [p - o for p, o in zip(params, old)]
            dWs, dbs = self.project(old[:L], old[L:], self.x, self.keep, steps[:L], steps[L:])
            for p, o, d in zip(params, old, dWs + dbs):
                p.copy_(o + d)


def projection_cases(params, data, *, keep, dtype, device, jacobian):
    """Return {name: callable} projecting a random step with the Gram form (and the Jacobian)."""
    dt = getattr(torch, dtype)
    L = core.n_layers(params)
    Ws = [torch.as_tensor(params[f"W{l}"], dtype=dt, device=device) for l in range(1, L + 1)]
    bs = [torch.as_tensor(params[f"b{l}"], dtype=dt, device=device) for l in range(1, L + 1)]
    x = torch.as_tensor(data.x, dtype=dt, device=device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    dWs = [1e-3 * torch.randn(W.shape, generator=gen, dtype=dt).to(device) for W in Ws]
    dbs = [1e-3 * torch.randn(b.shape, generator=gen, dtype=dt).to(device) for b in bs]
    cases = {"projection_gram": lambda: project_step(Ws, bs, x, keep, dWs, dbs)}
    if jacobian:
        cases["projection_jacobian"] = lambda: project_step_jacobian(Ws, bs, x, keep, dWs, dbs)
    return cases


if __name__ == "__main__":  # python -m selective_update.torch.bench_cases N [THREADS]
    torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 1)
    print(f"{peak_rss_mb(int(sys.argv[1])):.0f}")
