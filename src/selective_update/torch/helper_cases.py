"""The helpers' speed cases for the bench (part `helpers`, issue 15): the ~55k-parameter CNN a
practitioner would write, and one training step with each helper against a plain AdamW step.

float32 on CPU; the bench pins the threads (configure). Every case owns a copy of the same model
and optimizer; a step is zero_grad, forward and cross-entropy on 128 images, backward, step.
`python -m selective_update.torch.helper_cases N [THREADS]` prints the peak RSS (MB) of a fresh
process that attaches a NullSpaceProjector on N protected images and takes two steps.
"""
from __future__ import annotations

import copy
import resource
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

from ..notices import PromiseWarning
from .layer_subspace import LayerSubspaceProjector
from .projector import NullSpaceProjector
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


if __name__ == "__main__":  # python -m selective_update.torch.helper_cases N [THREADS]
    torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 1)
    print(f"{peak_rss_mb(int(sys.argv[1])):.0f}")
