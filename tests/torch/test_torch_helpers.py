"""The PyTorch helpers on models written here (a CNN, a two-tower net), not the study's MLP."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from selective_update.settings import ROOT
from selective_update.torch import NullSpaceProjector, audit, split_head

# torch.func's jvp loads decompositions through torch.jit.script, which warns in this torch.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
DT = torch.float64
KEEP, TRAIN = [0, 2, 3, 5], [1, 4]


class CNN(nn.Module):
    """conv -> ReLU -> linear, on 1x8x8 images."""

    def __init__(self, n_out=6, act=torch.relu):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.fc = nn.Linear(3 * 6 * 6, n_out)
        self.act = act

    def forward(self, x):
        return self.fc(self.act(self.conv(x)).flatten(1))


class TwoTower(nn.Module):
    """A shared trunk; outputs 0-2 from one tower, 3-4 from another."""

    def __init__(self, d_in=8):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(d_in, 4), nn.Tanh())
        self.kept_tower = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 3))
        self.new_tower = nn.Linear(4, 2)

    def forward(self, x):
        h = self.trunk(x)
        return torch.cat([self.kept_tower(h), self.new_tower(h)], dim=1)


def make(cls, seed=0, **kwargs):
    torch.manual_seed(seed)
    return cls(**kwargs).to(DT)


def images(n, seed):
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=DT)


X, X_EVAL = images(64, 1), images(50, 2)
Y = torch.randn(64, 6, generator=torch.Generator().manual_seed(3), dtype=DT)


def fit(model, opt, steps, cols=None, x=X, y=Y):
    """Take full-batch MSE steps (on the `cols` outputs only, if given)."""
    for _ in range(steps):
        opt.zero_grad()
        err = model(x) - y
        (err if cols is None else err[:, cols]).pow(2).mean().backward()
        opt.step()


def outputs(model, x=X_EVAL):
    with torch.no_grad():
        return model(x).clone()


OPTIMIZERS = {
    "adamw_decay": lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.1),
    "sgd_momentum_decay": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=0.1),
    "adam_l2": lambda ps: torch.optim.Adam(ps, lr=0.01, weight_decay=0.1),
}


# --- split_head ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("give", ["model.parameters()", "returned list"])
def test_split_head_is_bitwise_after_a_warm_start(name, give):
    model = make(CNN)
    warm = OPTIMIZERS[name](model.parameters())
    fit(model, warm, 3)  # optimizer state (momentum, Adam moments) is non-zero now
    before, params = outputs(model), {n: p.detach().clone() for n, p in model.named_parameters()}
    returned = split_head(model, model.fc, TRAIN)
    opt = OPTIMIZERS[name](model.parameters() if give == "model.parameters()" else returned)
    fit(model, opt, 5)
    fit(model, warm, 3)  # the warm-start optimizer still holds the original parameters
    after = outputs(model)
    assert torch.equal(after[:, KEEP], before[:, KEEP])  # bitwise, on held-out images
    assert (after[:, TRAIN] - before[:, TRAIN]).abs().max() > 1e-2  # the trained outputs learn
    assert torch.equal(model.conv.weight, params["conv.weight"])
    assert torch.equal(model.conv.bias, params["conv.bias"])
    assert torch.equal(model.fc.weight[KEEP], params["fc.weight"][KEEP])
    assert torch.equal(model.fc.bias[KEEP], params["fc.bias"][KEEP])


def test_without_split_head_the_same_training_moves_kept_outputs():
    model = make(CNN)
    opt = OPTIMIZERS["adamw_decay"](model.parameters())
    fit(model, opt, 3)
    before = outputs(model)
    fit(model, opt, 5, cols=TRAIN)  # the masked loss alone is not enough
    assert (outputs(model)[:, KEEP] - before[:, KEEP]).abs().max() > 1e-3


def test_state_dict_loads_into_an_unmodified_copy():
    model = make(CNN)
    plain = {k: v.shape for k, v in model.state_dict().items()}
    split_head(model, model.fc, TRAIN)
    fit(model, torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1), 4)
    state = model.state_dict()
    assert list(state) == list(plain) and {k: v.shape for k, v in state.items()} == plain
    copy_ = make(CNN, seed=7)
    copy_.load_state_dict(state)
    assert torch.equal(outputs(copy_), outputs(model))
    other = make(CNN, seed=8)  # the split model reads a plain state dict too
    split_head(other, other.fc, TRAIN)
    other.load_state_dict(state)
    assert torch.equal(outputs(other), outputs(model))


def test_split_head_on_a_two_tower_model():
    model = make(TwoTower)
    x, y = torch.randn(40, 8, dtype=DT), torch.randn(40, 5, dtype=DT)
    before = outputs(model, x)
    split_head(model, model.new_tower, [0, 1])  # every row of the new tower's head
    fit(model, torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.1), 10, x=x, y=y)
    after = outputs(model, x)
    assert torch.equal(after[:, :3], before[:, :3])
    assert (after[:, 3:] - before[:, 3:]).abs().max() > 1e-2


def snapshot(model):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            [p.requires_grad for p in model.parameters()], type(model.fc).__name__)


@pytest.mark.parametrize("head, train, name", [
    (nn.Linear(108, 6), TRAIN, "head"),  # not inside model
    ("conv", TRAIN, "head"),  # not an nn.Linear
    ("fc", [6], "train"),
    ("fc", [], "train"),
    ("fc", [1, 1], "train"),
    ("fc", [-1], "train"),
    ("fc", "1", "train"),
])
def test_split_head_refuses_bad_input_and_leaves_the_model(head, train, name):
    model = make(CNN)
    head = getattr(model, head) if isinstance(head, str) else head
    before = snapshot(model)
    with pytest.raises(ValueError, match=rf"^{name}: got .*; allowed: ") as info:
        split_head(model, head, train)
    assert "\n" not in str(info.value)
    after = snapshot(model)
    assert after[1:] == before[1:]
    assert all(torch.equal(before[0][k], v) for k, v in after[0].items())


def test_split_head_twice_on_one_layer_is_refused():
    model = make(CNN)
    split_head(model, model.fc, TRAIN)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"^head: .*split this one already"):
        split_head(model, model.fc, [0])
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert model.fc.parametrizations.weight.original.requires_grad


# --- NullSpaceProjector ---------------------------------------------------------------------------

def projected_drift(lr, name, project=True, warm=2):
    """Kept outputs' max |change| at the protected inputs after one step at lr."""
    model = make(CNN)
    x_keep = X[:12]
    opt = OPTIMIZERS[name](model.parameters())
    fit(model, opt, warm)
    for group in opt.param_groups:
        group["lr"] = lr
    if project:
        NullSpaceProjector(model, KEEP, x_keep).attach(opt)
    before = outputs(model, x_keep)
    fit(model, opt, 1)
    return float((outputs(model, x_keep) - before)[:, KEEP].abs().max())


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_projector_is_first_order_lr_halving_ratio(name):
    lr = 1e-3
    ratio = projected_drift(lr, name) / projected_drift(lr / 2, name)
    assert ratio >= 3.5, ratio  # a second-order leak falls 4x when lr halves
    plain = projected_drift(lr, name, project=False) / projected_drift(lr / 2, name, project=False)
    assert plain < 2.5  # control: the unprojected step leaks at first order (2x)


def test_projector_corrected_holds_kept_outputs_at_inputs():
    model = make(CNN)
    x_keep = X[:12]
    opt = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1)
    fit(model, opt, 2)
    before = outputs(model, x_keep)
    projector = NullSpaceProjector(model, KEEP, x_keep, corrected=True).attach(opt)
    fit(model, opt, 5, cols=TRAIN)
    after = outputs(model, x_keep)
    assert (after - before)[:, KEEP].abs().max() <= 1e-8
    assert (after - before)[:, TRAIN].abs().max() > 1e-3
    assert projector.last["residual"] <= 1e-13
    projector.detach()
    fit(model, opt, 1)  # detached: the step is no longer projected
    assert (outputs(model, x_keep) - before)[:, KEEP].abs().max() > 1e-6


def test_projector_through_output_fn_in_parameter_form():
    # 3 kept outputs x 64 inputs = 192 constraints > 81 parameters: J^T J (P x P) is used.
    model = make(TwoTower)
    x, y = torch.randn(64, 8, dtype=DT), torch.randn(64, 5, dtype=DT)
    assert 3 * len(x) > sum(p.numel() for p in model.parameters())
    before = outputs(model, x)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    NullSpaceProjector(model, [0, 1, 2], x, corrected=True,
                       output_fn=lambda m, inputs: m.kept_tower(m.trunk(inputs))).attach(opt)
    fit(model, opt, 5, x=x, y=y)
    after = outputs(model, x)
    assert (after - before)[:, :3].abs().max() <= 1e-8
    assert (after - before)[:, 3:].abs().max() > 1e-2


def test_projector_refuses_bad_input_and_a_second_attach():
    model = make(CNN)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for kwargs, name in [(dict(keep=[6], inputs=X), "keep"), (dict(keep=[], inputs=X), "keep"),
                         (dict(keep=KEEP, inputs=torch.rand(4, 64, dtype=DT)), "inputs"),
                         (dict(keep=KEEP, inputs=torch.rand(4, 2, 5, 5, dtype=DT)), "inputs")]:
        with pytest.raises(ValueError, match=rf"^{name}: got .*; allowed: ") as info:
            NullSpaceProjector(model, **kwargs)
        assert "\n" not in str(info.value)
    projector = NullSpaceProjector(model, KEEP, X[:4]).attach(opt)
    with pytest.raises(ValueError, match=r"^optimizer: .*attached already"):
        projector.attach(opt)
    with pytest.raises(ValueError, match=r"^optimizer: .*another one is attached"):
        NullSpaceProjector(model, KEEP, X[:4]).attach(opt)
    projector.detach()
    NullSpaceProjector(model, KEEP, X[:4]).attach(opt)  # free again after detach()


# --- audit ----------------------------------------------------------------------------------------

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


# --- the notebook ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_your_model_notebook_runs_quick(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    out = tmp_path / "your_model.ipynb"
    subprocess.run([sys.executable, "-m", "papermill", str(ROOT / "notebooks/your_model.ipynb"),
                    str(out), "-k", "python3", "-p", "quick", "True",
                    "-p", "reports_dir", str(tmp_path)], check=True, env=env, cwd=tmp_path,
                   capture_output=True)
    import pandas as pd

    rows = pd.read_csv(tmp_path / "your_model.csv").set_index(["model", "method"])
    assert rows.loc[("torch CNN", "split_head"), "held_out_drift"] == 0
    assert rows.loc[("Keras CNN", "split_head"), "held_out_drift"] == 0
    assert rows.loc[("torch CNN", "projector corrected"), "inputs_drift"] <= 1e-8
    assert rows.loc[("torch CNN", "naive"), "held_out_drift"] > 1e-3
    text = Path(out).read_text()
    assert "DT_DOUBLE" not in text and json.loads(text)["cells"]
