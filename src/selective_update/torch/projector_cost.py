"""What a NullSpaceProjector step will cost, said at attach() before it is paid.

A step is one torch.func pass over the protected inputs (K batched backward passes), J Jᵀ formed
from its blocks at O(m² · columns) (m = kept outputs × inputs), and a Cholesky factor at O(m³).
The pass is timed on two small subsets of the inputs during the dry run and extrapolated
linearly; the products are counted and divided by this machine's matrix-product speed, measured
here in the dtypes the step uses; memory is what the step holds (Gram, its factor, the blocks,
the pass's chunk).
"""
from __future__ import annotations

import time

import torch

from ..notices import CostWarning, warn_once
from ..settings import GRAM_BLOCKS
from .kept_jacobian import CHUNK_BYTES, MIN_BLOCK

PROBE_SIZE = 384  # the matrix product timed for the machine's speed: (n x n) @ (n x 4n)
PROJECTION_PAIRS = 2.5  # J v and Jᵀ a per step: J v, then a sweep or two of Jᵀ a and J v
LAYER_SUBSPACE_NOTE = ("LayerSubspaceProjector, whose step costs about one plain step (1.07x on "
                       "the bench's CNN with 512 protected images; docs/your-model.md)")


def product_speed(dtype, device) -> float:
    """Return this machine's speed for a mid-sized matrix product in dtype, in FLOP/s."""
    generator = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(PROBE_SIZE, PROBE_SIZE, generator=generator).to(dtype=dtype, device=device)
    b = torch.randn(PROBE_SIZE, 4 * PROBE_SIZE, generator=generator).to(dtype=dtype,
                                                                         device=device)
    a @ b  # warm up
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        (a @ b).sum().item()
        best = min(best, time.perf_counter() - start)
    return 2 * PROBE_SIZE ** 2 * 4 * PROBE_SIZE / best


def estimate(jacobian, pass_seconds, fast) -> dict:
    """Return {seconds, peak_mb} of one projected step.

    pass_seconds: (a, b, c): the torch.func pass over n inputs takes a + b * n seconds, one
    J v and one Jᵀ a c * n seconds. fast: whether the rows are multiplied in float32.
    """
    sizes = jacobian.sizes()
    n, K, m = len(jacobian.inputs), len(jacobian.keep), jacobian.m
    device = jacobian.inputs.device
    f64 = product_speed(torch.float64, device)
    rows_speed = product_speed(torch.float32, device) if fast else f64
    blocks = max(1, min(GRAM_BLOCKS, m // MIN_BLOCK))
    half = (blocks + 1) / (2 * blocks)  # the share of R Rᵀ's blocks multiplied
    kron_flops = sum(2 * half * m * m * layer.d_out + 2 * n * n * layer.d_in
                     for layer in jacobian.layers if layer.kind == "kron")
    rows_flops = 2 * half * m * m * (sizes["rows"] + sizes["stream"] + sizes["generic"])
    factor_flops = m ** 3 / 3
    seconds = (pass_seconds[0] + pass_seconds[1] * n + PROJECTION_PAIRS * pass_seconds[2] * n
               + kron_flops / f64 + rows_flops / rows_speed
               + factor_flops / (rows_speed if fast else f64))
    itemsize = jacobian.params[0].element_size()
    held = m * sizes["held"] * itemsize
    chunk = min(CHUNK_BYTES, n * sizes["per_sample"] * itemsize)
    gram = 3 * m * m * 8  # J Jᵀ, its factor, one term being added
    return dict(seconds=seconds, peak_mb=(held + chunk * 3 + gram) / 2**20, constraints=m,
                columns=sum(p.numel() for p in jacobian.params), inputs=n, kept=K)


def warn_over_budget(owner, cost, budget_s, budget_gb):
    """Warn once (CostWarning) where the estimate is above either budget."""
    over_time, over_memory = cost["seconds"] > budget_s, cost["peak_mb"] > budget_gb * 1024
    if not (over_time or over_memory):
        return
    which = " and ".join(w for w, over in ((f"step_budget_s={budget_s:g}", over_time),
                                           (f"memory_budget_gb={budget_gb:g}", over_memory))
                         if over)
    warn_once(owner, "cost", f"NullSpaceProjector: each step will take about "
              f"{cost['seconds']:.3g} s and {cost['peak_mb'] / 1024:.2g} GB (estimated: "
              f"{cost['constraints']:,} constraints x {cost['columns']:,} parameters; J Jᵀ is "
              f"O(constraints² x parameters)), above {which}; protect fewer inputs or outputs, "
              f"or use {LAYER_SUBSPACE_NOTE}", CostWarning)
