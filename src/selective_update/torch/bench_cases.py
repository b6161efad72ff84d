"""The bench's torch cases; no public face exports them (the bench imports this module).

- The helpers' speed cases (part `helpers`): the ~55k-parameter CNN a practitioner would write,
  and one training step with each helper against a plain AdamW step. float32 on CPU; the bench
  pins the threads (configure). Every case owns a copy of the same model and optimizer; a step is
  zero_grad, forward and cross-entropy on 128 images, backward, step.
  The same projector steps in bfloat16 and float16 (HALF_LR), corrected and not.
- The Transformer case: a classifier of ~69k parameters keeping 10 of its 11 logits on 256
  protected sequences (2,560 constraints), AdamW at TRANSFORMER_LR: attach(), a step, the
  projector's estimate of it, peak RSS, each measured in a fresh process.
`python -m selective_update.torch.bench_cases cnn N [THREADS]` prints the peak RSS (MB) of a fresh
process that attaches a NullSpaceProjector on N protected images and takes two steps;
`... transformer N [THREADS]` prints the Transformer case's measurements as JSON.
"""
from __future__ import annotations

import copy
import json
import resource
import sys
import time
import warnings
from pathlib import Path

import numpy as np

import torch
from torch import nn

from ..notices import CostWarning, PromiseWarning
from .layer_subspace import LayerSubspaceProjector
from .null_space_projector import NullSpaceProjector
from .split_head import split_head

BATCH = 128
KEEP, TRAIN = tuple(range(9)), (9,)  # nine classes kept, the tenth learned
# Small, so that the corrected step needs few Gauss-Newton iterations (the speed row compares a
# corrected step to its uncorrected twin "when one iteration suffices"; the bench says how many).
LR = 1e-4
# Half precision moves a weight only by steps above its resolution (bfloat16: 2^-8 relative):
# at 1e-4 most AdamW updates round away, so the half-precision rows step at 1e-3.
HALF_LR = 1e-3
HALF_DTYPES = ("bfloat16", "float16")
SIZE = 16  # 16 x 16 single-channel images
TRANSFORMER_LR = 1e-3
TOKENS, FEATURES = 8, 16


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

    def __init__(self, seed, n_protected, model_cls=None, inputs=None, n_out=10):
        torch.manual_seed(seed)
        self.model = (model_cls or HelperCNN)()
        inputs = inputs or _images
        self.x = inputs(BATCH, seed + 1)
        self.y = torch.randint(0, n_out, (BATCH,), generator=torch.Generator().manual_seed(seed))
        self.reference = inputs(n_protected, seed + 2)

    def fresh(self, dtype="float32", lr=LR):
        """Return a copy of the model in dtype and an AdamW optimizer over all its parameters
        (float16: Adam's eps 1e-4, as 1e-8 rounds to 0 there and the step divides by it)."""
        model = copy.deepcopy(self.model).to(getattr(torch, dtype))
        eps = 1e-4 if dtype == "float16" else 1e-8
        return model, torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, eps=eps)

    def null_space(self, n, corrected=False, dtype="float32", lr=LR, keep=KEEP):
        model, opt = self.fresh(dtype, lr)
        dt = getattr(torch, dtype)
        with warnings.catch_warnings():  # the bench reports the cost it measures itself
            warnings.simplefilter("ignore", CostWarning)
            helper = NullSpaceProjector(model, keep, self.reference[:n].to(dt),
                                        corrected=corrected)
            helper.attach(opt)
        return Step(model, opt, self.x.to(dt), self.y, helper)


def helper_cases(protected=(64, 512), energy=0.97, seed=0) -> dict:
    """Return {case name: Step}: plain, split_head, split_head_unchecked (its per-step checks
    off), null_space_<n> for each n in protected, null_space_corrected_<n> for the smallest n,
    layer_subspace_<n> for the largest."""
    setup = _Setup(seed, max(protected))
    cases = {"plain": Step(*setup.fresh(), setup.x, setup.y)}
    for name in ("split_head", "split_head_unchecked"):
        model, opt = setup.fresh()
        split_head(model, model.head, TRAIN)
        if name == "split_head_unchecked":  # what its per-step checks cost
            for tensor in ("weight", "bias"):
                getattr(model.head.parametrizations, tensor)[0].split = None
        cases[name] = Step(model, opt, setup.x, setup.y)
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


def half_cases(n=64, seed=0) -> dict:
    """Return {case name: Step}: plain_<dtype>, null_space_<n>_<dtype> and
    null_space_corrected_<n>_<dtype> for bfloat16 and float16, at HALF_LR."""
    setup, cases = _Setup(seed, n), {}
    for dtype in HALF_DTYPES:
        model, opt = setup.fresh(dtype, HALF_LR)
        cases[f"plain_{dtype}"] = Step(model, opt, setup.x.to(getattr(torch, dtype)), setup.y)
        cases[f"null_space_{n}_{dtype}"] = setup.null_space(n, False, dtype, HALF_LR)
        cases[f"null_space_corrected_{n}_{dtype}"] = setup.null_space(n, True, dtype, HALF_LR)
    return cases


class TransformerClassifier(nn.Module):
    """A Linear embedding of 16 features to d_model 64, nn.TransformerEncoder (2 layers, 4 heads,
    feed-forward 128, dropout 0.1), a LayerNorm, the mean over the tokens, a Linear head."""

    def __init__(self, n_out=11):
        super().__init__()
        self.embed = nn.Linear(FEATURES, 64)
        layer = nn.TransformerEncoderLayer(64, 4, 128, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(64)
        self.head = nn.Linear(64, n_out)

    def forward(self, x):
        return self.head(self.norm(self.encoder(self.embed(x))).mean(1))


def _sequences(n, seed):
    return torch.randn(n, TOKENS, FEATURES, generator=torch.Generator().manual_seed(seed))


def transformer_facts() -> dict:
    """Describe the Transformer case for its rows."""
    return dict(sizes=f"transformer {TOKENS}x{FEATURES}: d64, 2 layers, 4 heads, ff128, 11 out",
                n_params=sum(p.numel() for p in TransformerClassifier().parameters()))


def transformer_report(n=256, steps=2, seed=0) -> dict:
    """Measure the Transformer case: a plain AdamW step (median of 5), NullSpaceProjector's
    construction and attach(), its steps (median), its estimate, and this process's peak RSS."""
    setup = _Setup(seed, n, TransformerClassifier, _sequences, n_out=11)
    plain = Step(*setup.fresh(lr=TRANSFORMER_LR), setup.x, setup.y)
    plain()
    plain_s = []
    for _ in range(5):
        start = time.perf_counter()
        plain()
        plain_s.append(time.perf_counter() - start)
    start = time.perf_counter()
    case = setup.null_space(n, lr=TRANSFORMER_LR, keep=tuple(range(10)))
    attach_s = time.perf_counter() - start
    step_s = []
    for _ in range(steps):
        start = time.perf_counter()
        case()
        step_s.append(time.perf_counter() - start)
    estimate = case.helper.estimate
    return dict(plain_s=float(np.median(plain_s)), attach_s=attach_s,
                step_s=float(np.median(step_s)), estimate_s=estimate["seconds"],
                estimate_mb=estimate["peak_mb"], peak_rss_mb=_peak_rss_kb() / 1024,
                constraints=estimate["constraints"])


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


if __name__ == "__main__":  # python -m selective_update.torch.bench_cases CASE N [THREADS]
    torch.set_num_threads(int(sys.argv[3]) if len(sys.argv) > 3 else 1)
    if sys.argv[1] == "transformer":
        print(json.dumps(transformer_report(int(sys.argv[2]))))
    else:
        print(f"{peak_rss_mb(int(sys.argv[2])):.0f}")
