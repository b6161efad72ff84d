"""audit on models written here: which parameter feeding the kept outputs moved, and why."""
import numpy as np
import pytest
import torch
from torch_models import DT, KEEP, TRAIN, CNN, OPTIMIZERS, X, TwoTower, fit, make

from selective_update.torch import audit, split_head

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")


@pytest.mark.parametrize("name, cause", [("adamw_decay", "weight decay"),
                                         ("sgd_momentum_decay", "momentum buffer"),
                                         ("adam_l2", "Adam moments")])
def test_audit_names_what_moved_zero_gradient_weights(name, cause):
    model = make(TwoTower)
    x, y = torch.randn(32, 8, dtype=DT), torch.randn(32, 5, dtype=DT)
    opt = OPTIMIZERS[name](model.parameters())
    fit(model, opt, 2, x=x, y=y)  # warm start on every output

    def step():  # the naive attempt: mask the loss, give the optimizer everything
        fit(model, opt, 1, cols=[3, 4], x=x, y=y)

    table, drift = audit(model, opt, [0, 1, 2], x[:8], step, steps=3)
    assert set(table.index) == {"trunk.0.weight", "trunk.0.bias", "kept_tower.0.weight",
                                "kept_tower.0.bias", "kept_tower.2.weight", "kept_tower.2.bias"}
    kept = table.loc["kept_tower.2.weight"]
    assert kept.grad_norm == 0 and kept.moved and cause in kept.moved_by
    assert table.loc["trunk.0.weight", "moved_by"].startswith("gradient")
    assert drift.shape == (4,) and drift[0] == 0 and drift[-1] > 1e-4


def test_audit_after_split_head_finds_nothing_moved():
    model = make(CNN)
    split_head(model, model.fc, TRAIN)
    opt = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1)
    table, drift = audit(model, opt, KEEP, X[:8], lambda: fit(model, opt, 1), steps=3)
    assert not table.moved.any() and (table.moved_by == "-").all()
    assert np.all(drift == 0)
    with pytest.raises(ValueError, match=r"^steps: got 0"):
        audit(model, opt, KEEP, X[:8], lambda: None, steps=0)
