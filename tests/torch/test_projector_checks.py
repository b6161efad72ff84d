"""The projectors and audit check their own promise at each step, refuse bad input before
anything changes, and say a step's cost at attach(): on models written here."""
import dataclasses
import math
import warnings

import pytest
import torch
from torch import nn
from torch_models import (DT, KEEP, TRAIN, CNN, DeepCNN, LoRAMLP, TwoNormMLP, X, fit, images,
                          make, outputs, snapshot, targets, unchanged)

from selective_update import RestoreWarning, TrivialNullSpaceWarning
from selective_update.notices import CostWarning
from selective_update.torch import (LayerSubspaceProjector, NullSpaceProjector, PromiseWarning,
                                    audit)

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")


# --- named at the step where it happens ------------------------------------------------------

@pytest.mark.parametrize("helper", ["null_space", "layer_subspace"])
def test_train_mode_switched_on_after_attach_is_named_at_the_step(helper):
    model = make(TwoNormMLP)
    model.eval()  # attached in eval mode: nothing to say yet
    x, y = torch.randn(32, 8, dtype=DT), targets(32, 6)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        if helper == "null_space":
            NullSpaceProjector(model, KEEP, x[:8]).attach(opt)
        else:
            LayerSubspaceProjector(model, model.head, TRAIN, x[:8]).attach(opt)
    assert not [w for w in record if "running statistics" in str(w.message)]
    model.train()  # the usual first line of a training loop
    with pytest.warns(PromiseWarning, match=r"Projector: bn1, bn2 in train mode update running "
                                            r"statistics.*get_submodule\('bn2'\)\.eval\(\)"):
        fit(model, opt, 2, x=x, y=y)


@pytest.mark.parametrize("name, make_opt", [
    ("adam", lambda ps: torch.optim.Adam(ps, lr=1e-2)),  # A's step is zero: all of it removed
    ("adamw", lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1))])  # A only decays
def test_a_lora_adapter_whose_step_is_projected_away_is_said_at_the_first_step(name, make_opt):
    model = make(LoRAMLP)
    x = torch.randn(6, 8, dtype=DT)  # 4 kept outputs x 6 inputs = 24 constraints on B's 24
    opt = make_opt([model.lora_a, model.lora_b])
    before = outputs(model, x)
    with warnings.catch_warnings():  # 24 constraints on 40 parameters: nothing said at attach
        warnings.simplefilter("error", TrivialNullSpaceWarning)
        NullSpaceProjector(model, KEEP, x).attach(opt)
    with pytest.warns(TrivialNullSpaceWarning, match=r"first step's projection removed .*"
                                                     r"nothing that trains"):
        fit(model, opt, 2, cols=TRAIN, x=x, y=targets(6, 6))
    assert (outputs(model, x) - before)[:, TRAIN].abs().max() <= 1e-12  # what it warned of


def test_a_lora_adapter_with_room_left_trains_without_a_word():
    model = make(LoRAMLP)
    x = torch.randn(3, 8, dtype=DT)  # 12 constraints: B keeps free directions
    opt = torch.optim.Adam([model.lora_a, model.lora_b], lr=1e-2)
    before = outputs(model, x)
    NullSpaceProjector(model, KEEP, x).attach(opt)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TrivialNullSpaceWarning)
        fit(model, opt, 2, cols=TRAIN, x=x, y=targets(3, 6))
    assert (outputs(model, x) - before)[:, TRAIN].abs().max() > 1e-4


@pytest.mark.parametrize("corrected, advice", [(False, "use corrected=True"),
                                               (True, "held-out inputs may drift")])
def test_a_learning_rate_too_large_for_first_order_is_said_once(corrected, advice):
    def train(lr):
        model = make(DeepCNN)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
        NullSpaceProjector(model, KEEP, X[:12], corrected=corrected).attach(opt)
        fit(model, opt, 3, cols=TRAIN)

    with pytest.warns(PromiseWarning, match=rf"one step moved the kept outputs at inputs by .*of "
                                            rf"their scale.*lower the learning rate.*{advice}"
                      if not corrected else r"one step moved .*" + advice) as record:
        train(1e-2)
    assert len([w for w in record if "one step moved" in str(w.message)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", PromiseWarning)
        train(1e-4)


# --- refused before anything changes ------------------------------------------------------------

HELPERS = {
    "NullSpaceProjector": lambda model, x: NullSpaceProjector(model, KEEP, x),
    "LayerSubspaceProjector": lambda model, x: LayerSubspaceProjector(model, model.head, TRAIN, x),
    "audit": lambda model, x: audit(model, torch.optim.SGD(model.parameters(), lr=0.1), KEEP, x,
                                    lambda: None, steps=1),
}


@pytest.mark.parametrize("bad", [math.nan, math.inf])
@pytest.mark.parametrize("helper", HELPERS)
def test_nan_or_inf_in_the_inputs_is_refused_naming_the_rows(helper, bad):
    model = make(DeepCNN)
    x = images(8, 3)
    x[3, 0, 2, 5] = bad
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"^inputs: got 'a tensor with NaN or inf in 1 of its 8 "
                                         r"rows \(first: 3\)'; allowed: finite inputs") as info:
        HELPERS[helper](model, x)
    assert "\n" not in str(info.value) and unchanged(model, before)


class Tagger(nn.Module):
    """A GRU over a sequence, its last state into a Linear head."""

    def __init__(self):
        super().__init__()
        self.rnn = nn.GRU(4, 8, batch_first=True)
        self.head = nn.Linear(8, 6)

    def forward(self, x):
        return self.head(self.rnn(x)[0][:, -1])


def test_rnn_layers_are_refused_by_the_projector_pointing_at_what_works():
    model = make(Tagger)
    x = torch.randn(10, 5, 4, dtype=DT)
    before = snapshot(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no batching-rule warnings from torch first
        with pytest.raises(ValueError, match=r"^model: got 'a model with GRU rnn'; allowed: .*"
                                             r"use split_head or LayerSubspaceProjector") as info:
            NullSpaceProjector(model, KEEP, x)
    assert "\n" not in str(info.value) and unchanged(model, before)
    # What the message points at: the GRU is frozen, the head learns, the kept outputs hold.
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    with pytest.warns(PromiseWarning, match="froze 4 parameters .*rnn.weight_ih_l0"):
        LayerSubspaceProjector(model, model.head, TRAIN, x[:5], energy=1.0).attach(opt)
    start = outputs(model, x[:5])
    fit(model, opt, 3, cols=TRAIN, x=x, y=targets(10, 6))
    change = outputs(model, x[:5]) - start
    assert change[:, KEEP].abs().max() <= 1e-9 and change[:, TRAIN].abs().max() > 1e-3


@dataclasses.dataclass
class Out:
    logits: torch.Tensor
    features: torch.Tensor


class DataclassCNN(CNN):
    def forward(self, x):
        h = torch.relu(self.conv(x)).flatten(1)
        return Out(self.fc(h), h)


@pytest.mark.parametrize("helper", ["NullSpaceProjector", "audit"])
def test_a_dataclass_output_without_output_fn_is_refused_naming_output_fn(helper):
    model = make(DataclassCNN)
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"^output_fn: got 'None for a model returning Out "
                                         r"\(fields logits, features\)'; allowed: .*"
                                         r"output_fn=lambda m, x: m\(x\)\.logits") as info:
        HELPERS[helper](model, X[:4])
    assert "\n" not in str(info.value) and unchanged(model, before)
    NullSpaceProjector(model, KEEP, X[:4], output_fn=lambda m, x: m(x).logits)  # the fix


def test_an_uninitialised_lazy_model_is_refused_and_stays_uninitialised():
    model = nn.Sequential(nn.LazyLinear(12), nn.Tanh(), nn.Linear(12, 6))
    with pytest.raises(ValueError, match=r"^model: got 'a model with uninitialised lazy "
                                         r"parameters \(0\.weight, 0\.bias\)'"):
        NullSpaceProjector(model, KEEP, torch.randn(4, 8))
    assert nn.parameter.is_lazy(model[0].weight)


def test_a_step_holding_nan_is_not_projected_and_put_back():
    model = make(DeepCNN)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    NullSpaceProjector(model, KEEP, X[:8]).attach(opt)
    params = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    (model(X) - targets(64, 6)).pow(2).mean().backward()
    model.head.weight.grad[0, 0] = math.nan
    with pytest.raises(FloatingPointError, match="step holds NaN or inf"):
        opt.step()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), params))


# --- the cost, said before it is paid -------------------------------------------------------------

def test_attach_says_the_cost_and_warns_above_a_budget_naming_the_alternative():
    model = make(DeepCNN)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CostWarning)
        projector = NullSpaceProjector(model, KEEP, X[:16]).attach(opt)
    cost = projector.estimate
    assert cost["constraints"] == 64 and cost["seconds"] > 0 and cost["peak_mb"] > 0
    tight = NullSpaceProjector(model, KEEP, X[:16], step_budget_s=cost["seconds"] / 100)
    with pytest.warns(CostWarning, match=r"each step will take about .* s .*64 constraints .*above "
                                         r"step_budget_s=.*LayerSubspaceProjector"):
        tight.attach(torch.optim.SGD(model.parameters(), lr=0.01))
    with pytest.warns(CostWarning, match=r"above memory_budget_gb=1e-06"):
        NullSpaceProjector(model, KEEP, X[:16], memory_budget_gb=1e-6).attach(
            torch.optim.SGD(model.parameters(), lr=0.01))
    with pytest.raises(ValueError, match=r"^step_budget_s: got 0; allowed: a finite number > 0$"):
        NullSpaceProjector(model, KEEP, X[:16], step_budget_s=0)


# --- half precision ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_is_restored_to_its_resolution_without_a_warning(dtype):
    torch.manual_seed(0)
    model = DeepCNN().to(dtype)
    x, y = images(64, 1).to(dtype), targets(64, 6).to(dtype)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01, eps=1e-4)
    before = outputs(model, x[:16])
    projector = NullSpaceProjector(model, KEEP, x[:16], corrected=True).attach(opt)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RestoreWarning)
        for _ in range(3):
            fit(model, opt, 1, x=x, y=y)
            assert projector.last["gauss_newton_steps"] <= 3, projector.last
    eps = torch.finfo(dtype).eps
    drift = float((outputs(model, x[:16]) - before)[:, KEEP].abs().max())
    assert drift <= 4 * eps * max(1.0, float(before.abs().max()))
    assert float((outputs(model, x[:16]) - before)[:, TRAIN].abs().max()) > 10 * eps
