"""The seed's demo: three train ops on one GradientDescentOptimizer, in its order."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .nets import output_mask
from .runs import mse

SEED_PHASES = (("train_op2", "masked_last_layer"), ("train_op12", "last_layer"),
               ("train_op_all", "all_params"))


@dataclass
class SeedDemo:
    """Hold what the seed's demo prints after each phase: hidden, out, loss, loss2."""

    phases: tuple  # ("start", "train_op2", "train_op12", "train_op_all")
    hidden: np.ndarray  # (phases, n, d_hidden)
    outputs: np.ndarray  # (phases, n, n_out)
    loss: np.ndarray  # full MSE
    loss2: np.ndarray  # the seed's masked loss: mean((mask * (out - y))**2)

    def rows(self, keep=(0,), train=(1,)) -> list:
        """Return one dict per phase: max |change| of kept / trained outputs, loss, loss2."""
        rows = []
        for i, phase in enumerate(self.phases):
            prev = self.outputs[max(i - 1, 0)]
            change = np.abs(self.outputs[i] - prev)
            rows.append({"phase": phase, "out1_change": float(change[:, list(keep)].max()),
                         "out2_change": float(change[:, list(train)].max()),
                         "loss": float(self.loss[i]), "loss2": float(self.loss2[i])})
        return rows


def make_seed_demo(config, record) -> SeedDemo:
    """Assemble a SeedDemo from (hidden, outputs) pairs recorded after each phase."""
    hidden = np.stack([h for h, _ in record])
    outputs = np.stack([o for _, o in record])
    y = config.data.y.astype(outputs.dtype)
    mask = output_mask(y.shape[1], config.train, outputs.dtype)
    return SeedDemo(phases=("start",) + tuple(p for p, _ in SEED_PHASES), hidden=hidden,
                    outputs=outputs, loss=mse(outputs, y),
                    loss2=((mask * (outputs - y)) ** 2).mean(axis=(1, 2)))
