"""The seed's demo: three train ops on one GradientDescentOptimizer, in its order, then G'."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .nets import output_mask
from .runs import mse

SEED_PHASES = (("train_op2", "masked_last_layer"), ("train_op12", "last_layer"),
               ("train_op_all", "all_params"))
# The direct answer, after the seed's three ops: back-propagate G' = [-alpha, G_2] instead of the
# question's G = [0, -1] on every variable, on the same optimizer (algorithms.compensated).
COMPENSATED_PHASE = "train_op_compensated"


def question_gradient(n, n_out, train, dtype="float64") -> np.ndarray:
    """Return the question's G for n samples: 0 on other outputs, -1 on trained ones (summed over
    the batch by the backward pass, not averaged: core.output_gradient is G / n)."""
    return np.tile(-output_mask(n_out, train, dtype), (n, 1))


@dataclass
class SeedDemo:
    """Hold what the seed's demo prints after each phase: hidden, out, loss, loss2; and G'.

    alpha, G_prime: the compensation of the last phase's first step, (K, n) and (n, n_out).
    """

    phases: tuple  # ("start", "train_op2", "train_op12", "train_op_all", "train_op_compensated")
    hidden: np.ndarray  # (phases, n, d_hidden)
    outputs: np.ndarray  # (phases, n, n_out)
    loss: np.ndarray  # full MSE
    loss2: np.ndarray  # the seed's masked loss: mean((mask * (out - y))**2)
    alpha: np.ndarray
    G_prime: np.ndarray

    def rows(self, keep=(0,), train=(1,)) -> list:
        """Return one dict per phase: max |change| of kept / trained outputs, loss, loss2."""
        rows = []
        for i, phase in enumerate(self.phases):
            change = np.abs(self.change(phase))
            rows.append({"phase": phase, "out1_change": float(change[:, list(keep)].max()),
                         "out2_change": float(change[:, list(train)].max()),
                         "loss": float(self.loss[i]), "loss2": float(self.loss2[i])})
        return rows

    def change(self, phase) -> np.ndarray:
        """Return the signed change (n, n_out) of the outputs over one phase (start: zeros)."""
        i = self.phases.index(phase)
        return self.outputs[i] - self.outputs[max(i - 1, 0)]


def make_seed_demo(config, record, alpha, G_prime) -> SeedDemo:
    """Assemble a SeedDemo from (hidden, outputs) pairs recorded after each phase and the last
    phase's compensation (alpha, G_prime)."""
    hidden = np.stack([h for h, _ in record])
    outputs = np.stack([o for _, o in record])
    y = config.data.y.astype(outputs.dtype)
    mask = output_mask(y.shape[1], config.train, outputs.dtype)
    return SeedDemo(phases=("start",) + tuple(p for p, _ in SEED_PHASES) + (COMPENSATED_PHASE,),
                    hidden=hidden, outputs=outputs, loss=mse(outputs, y),
                    loss2=((mask * (outputs - y)) ** 2).mean(axis=(1, 2)),
                    alpha=np.asarray(alpha), G_prime=np.asarray(G_prime))
