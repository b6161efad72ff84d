"""NullSpaceProjector on models written here: first order where it applies, refused or warned
before training where it would not hold, never half a step, float64 solves in float32 models."""
import warnings

import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev
from torch_models import (DT, KEEP, OPTIMIZERS, TRAIN, CNN, X, BatchNormCNN, DeepCNN, DropoutMLP,
                          TransformerClassifier, TwoTower, fit, images, make, outputs, snapshot,
                          targets, tokens, unchanged)

import selective_update.torch.null_space_projector as projector_module
from selective_update import RestoreWarning, TrivialNullSpaceWarning
from selective_update.torch import NullSpaceProjector, PromiseWarning
from selective_update.torch.kept_jacobian import KeptJacobian

# torch.func's jvp loads decompositions through torch.jit.script, which warns in this torch.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")


def projected_drift(lr, name, project=True, warm=2, model_cls=CNN, x=X, y=None, keep=KEEP,
                    cols=None):
    """Kept outputs' max |change| at the protected inputs after one step at lr."""
    model = make(model_cls)
    x_keep = x[:12]
    opt = OPTIMIZERS[name](model.parameters())
    y = targets(len(x), outputs(model, x[:1]).shape[1]) if y is None else y
    fit(model, opt, warm, x=x, y=y)
    for group in opt.param_groups:
        group["lr"] = lr
    if project:
        NullSpaceProjector(model, keep, x_keep).attach(opt)
    before = outputs(model, x_keep)
    fit(model, opt, 1, cols=cols, x=x, y=y)
    return float((outputs(model, x_keep) - before)[:, keep].abs().max())


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_projector_is_first_order_lr_halving_ratio(name):
    lr = 1e-3
    ratio = projected_drift(lr, name) / projected_drift(lr / 2, name)
    assert ratio >= 3.5, ratio  # a second-order leak falls 4x when lr halves
    plain = projected_drift(lr, name, project=False) / projected_drift(lr / 2, name, project=False)
    assert plain < 2.5  # control: the unprojected step leaks at first order (2x)


@pytest.mark.parametrize("model_cls, x", [(DropoutMLP, torch.randn(40, 8, dtype=DT)),
                                          (TransformerClassifier, tokens(40, 1))])
def test_dropout_in_train_mode_and_attention_are_projected(model_cls, x):
    """Both used to raise inside optimizer.step() after the unprojected step was applied: now the
    projector differentiates the eval-mode model (no dropout, the math attention kernel)."""
    def drift(lr):
        return projected_drift(lr, "adamw_decay", model_cls=model_cls, x=x, keep=[0, 1, 2],
                               cols=[3, 4])

    ratio = drift(1e-4) / drift(5e-5)
    assert ratio >= 3.5, ratio


def test_the_blocks_are_the_jacobian():
    """J Jᵀ, J v and Jᵀ a from the blocks (Kronecker, conv patches, per-sample rows) against the
    materialized Jacobian (jacrev), on a model with each kind of layer."""
    kinds = set()
    # Three positions for three kept outputs: the encoder's Linear layers stream their rows.
    short = make(TransformerClassifier, length=3), tokens(7, 2, length=3)
    for model, x in [(make(DeepCNN), images(10, 4)), short]:
        keep = [0, 2, 3]
        params = list(model.named_parameters())
        jac = KeptJacobian(model, keep, x, None, params)
        kinds |= {layer.kind for layer in jac.layers} | ({"generic"} if jac.generic else set())
        lin = jac.linearize()
        model.eval()
        names = [n for n, _ in params]

        def kept(*values):
            with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
                out = functional_call(model, dict(zip(names, values)), (x,))
            return out[:, keep].reshape(-1)  # input major, as the blocks order their rows

        J = torch.cat([j.reshape(len(keep) * len(x), -1) for j in jacrev(
            kept, argnums=tuple(range(len(names))))(*[p.detach() for _, p in params])], dim=1)
        scale = float((J @ J.T).abs().max())
        assert (lin.gram() - J @ J.T).abs().max() <= 1e-12 * scale
        v = [torch.randn(p.shape, dtype=DT) for _, p in params]
        assert torch.allclose(lin.jv(v), J @ torch.cat([t.reshape(-1) for t in v]), atol=1e-12)
        a = torch.randn(len(keep) * len(x), dtype=DT)
        assert torch.allclose(torch.cat([t.reshape(-1) for t in lin.jtv(a)]), J.T @ a,
                              atol=1e-12)
    assert kinds == {"kron", "rows", "stream", "generic"}  # each kind is exercised


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


def test_projector_through_output_fn_with_more_constraints_than_parameters():
    # 3 kept outputs x 64 inputs = 192 constraints > 81 parameters.
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


def test_one_gauss_newton_step_from_the_factor_of_the_projection():
    model = make(DeepCNN)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    projector = NullSpaceProjector(model, KEEP, X[:16], corrected=True).attach(opt)
    fit(model, opt, 3)
    assert projector.last["gauss_newton_steps"] == 1, projector.last
    assert projector.last["residual"] <= 1e-13 * max(1.0, float(outputs(model, X[:16]).abs().max()))


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


class Gate(nn.Module):
    """Python control flow on a tensor's value: no per-sample vmap through it. `broken` makes it
    raise, to fail a projection after attach()."""

    def __init__(self, value_flow=False):
        super().__init__()
        self.value_flow, self.broken = value_flow, False

    def forward(self, h):
        if self.broken:
            raise RuntimeError("gate broken")
        if self.value_flow and h.sum() > 0:
            return h
        return torch.tanh(h)


class GatedCNN(CNN):
    def __init__(self, value_flow=False):
        super().__init__()
        self.gate = Gate(value_flow)

    def forward(self, x):
        return self.fc(self.gate(self.conv(x)).flatten(1))


def test_a_model_the_projector_cannot_differentiate_is_refused_at_attach():
    model = make(GatedCNN, value_flow=True)
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"^model: got .*module 'gate' failing a dry projection"
                                         r".*; allowed: .*fix: no Python control flow") as info:
        NullSpaceProjector(model, KEEP, X[:8]).attach(opt)
    assert "\n" not in str(info.value) and unchanged(model, before)
    assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks
    fit(model, opt, 1)  # the optimizer steps as before: nothing attached


def test_a_projection_that_fails_in_step_puts_parameters_and_state_back():
    model = make(GatedCNN)
    opt = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1)
    NullSpaceProjector(model, KEEP, X[:8]).attach(opt)
    fit(model, opt, 2)
    params = [p.detach().clone() for p in model.parameters()]
    state = {id(p): {k: v.clone() for k, v in s.items()} for p, s in opt.state.items()}
    opt.zero_grad()
    (model(X) - targets(64, 6)).pow(2).mean().backward()  # the gradient of a healthy forward
    model.gate.broken = True  # ... and a forward that fails inside the projection
    with pytest.raises(RuntimeError, match="gate broken") as info:
        opt.step()
    assert "back as they were" in "".join(info.value.__notes__)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), params))
    assert {id(p): list(s) for p, s in opt.state.items()} == {i: list(s) for i, s in state.items()}
    assert all(torch.equal(v, state[id(p)][k]) for p, s in opt.state.items() for k, v in s.items())
    model.gate.broken = False
    fit(model, opt, 1)  # and training goes on from there
    assert int(opt.state[model.fc.weight]["step"]) == 3


def test_constraints_spanning_every_direction_warn_at_attach():
    torch.manual_seed(0)
    model = nn.Linear(7, 6).to(DT)  # 48 parameters
    x = torch.randn(8, 7, dtype=DT)  # 6 kept outputs x 8 inputs = 48 constraints
    with pytest.warns(TrivialNullSpaceWarning, match="48 constraints span every direction"):
        NullSpaceProjector(model, range(6), x).attach(torch.optim.SGD(model.parameters(), lr=0.1))
    with warnings.catch_warnings():  # one fewer input: directions remain, no warning
        warnings.simplefilter("error")
        NullSpaceProjector(model, range(6), x[:7]).attach(torch.optim.SGD(model.parameters(),
                                                                          lr=0.1))


def test_batchnorm_in_train_mode_warns_at_attach():
    model = make(BatchNormCNN)
    model.train()
    with pytest.warns(PromiseWarning, match=r"NullSpaceProjector: bn in train mode update "
                                            r"running statistics"):
        NullSpaceProjector(model, KEEP, X[:8]).attach(torch.optim.SGD(model.parameters(), lr=0.1))


def test_restore_tolerance_is_relative_to_the_kept_outputs_scale():
    """Kept outputs of size ~450 in float32: within a tolerance relative to them after a few
    Gauss-Newton steps, and no warning (an absolute 1e-5 took 12 and warned on every step)."""
    torch.manual_seed(0)
    model = DeepCNN()
    with torch.no_grad():
        model.head.weight.mul_(900.0)
        model.head.bias.fill_(450.0)
    x = images(32, 4).float()
    assert float(outputs(model, x).abs().max()) > 400
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    projector = NullSpaceProjector(model, KEEP, x[:16], corrected=True).attach(opt)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RestoreWarning)
        for _ in range(5):
            fit(model, opt, 1, x=x, y=targets(32, 6).float())
            assert projector.last["gauss_newton_steps"] <= 4, projector.last  # not 12
            assert projector.last["residual"] <= 1e-5 * 450 * 2


def test_a_restore_that_stops_short_warns_once_at_the_users_line(monkeypatch):
    monkeypatch.setitem(projector_module.RESTORE_TOL, "float64", 0.0)  # never reached
    model = make(CNN)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    projector = NullSpaceProjector(model, KEEP, X[:8], corrected=True).attach(opt)
    with pytest.warns(RestoreWarning, match=r"shown once") as record:
        fit(model, opt, 3)
    assert len(record) == 1 and projector.last["gauss_newton_steps"] >= 1
    assert record[0].filename.endswith("torch_models.py")  # fit()'s opt.step(), not torch's


def float32_drift(dtype):
    """One Adam step, 152 constraints on 158 parameters, inputs spread over two decades: the
    kept outputs span most parameter directions and J Jᵀ is ill-conditioned."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 8)).to(dtype)
    generator = torch.Generator().manual_seed(1)
    x = (torch.randn(19, 6, generator=generator) * torch.logspace(0, -2, 6)).to(dtype)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    NullSpaceProjector(model, range(8), x).attach(opt)
    before = outputs(model, x)
    fit(model, opt, 1, x=x, y=torch.ones(19, 8, dtype=dtype))
    return float((outputs(model, x) - before).abs().max())


def test_a_float32_model_is_projected_as_well_as_float64():
    """float32 Grams cut their small eigenvalues (the old drift: 2.4e-4 against 3.8e-6 here);
    the Gram is now formed and solved in float64 whatever the model's dtype."""
    f64, f32 = float32_drift(torch.float64), float32_drift(torch.float32)
    assert f32 <= 2 * f64 + 1e-6, (f32, f64)


def conv_drift(dtype, n=100):
    """One Adam step of a tanh CNN protecting n images whose columns span three decades: 600
    constraints on 684 parameters, conv rows in J (the part a float32 product may form)."""
    torch.manual_seed(0)
    model = CNN(act=torch.tanh).to(dtype)
    scale = torch.logspace(0, -3, 8).reshape(1, 1, 1, 8)
    x = (torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * scale).to(dtype)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    projector = NullSpaceProjector(model, range(6), x).attach(opt)
    before = outputs(model, x)
    fit(model, opt, 1, x=x, y=torch.ones(n, 6, dtype=dtype))
    return float((outputs(model, x) - before).abs().max()), projector.last["gram"]


def test_an_ill_conditioned_float32_gram_is_formed_again_in_float64(monkeypatch):
    f64, gram64 = conv_drift(torch.float64)
    f32, gram32 = conv_drift(torch.float32)
    assert gram64 == "float64" and gram32 == "float64 (float32 rows fell short)"
    assert f32 <= 2 * f64 + 1e-6, (f32, f64)
    # Fewer constraints, better conditioned: a float32 factor holds, or else a float64 factor
    # of the same float32-product J Jᵀ; each kept only where the projection holds.
    assert conv_drift(torch.float32, n=20)[1] == "float32 rows, float32 factor"
    assert conv_drift(torch.float32, n=60)[1] == "float32 rows, float64 factor"
    # The check decides: a float32 factor given no sweep cannot hold, and is not kept.
    monkeypatch.setattr(projector_module, "FAST_SWEEPS", 0)
    assert conv_drift(torch.float32, n=20)[1] == "float32 rows, float64 factor"
    # Unchecked, the ill-conditioned J Jᵀ is still never solved through the pseudo-inverse's
    # cutoff (the 0.089): neither of its factors exists, so it is formed in float64.
    monkeypatch.setattr(projector_module, "FAST_GRAM_RTOL", float("inf"))
    drift, gram = conv_drift(torch.float32)
    assert gram == "float64 (float32 rows fell short)" and drift <= 2 * f64 + 1e-6


class DictOutputs(CNN):
    """A model returning a dict, as detection or multi-task models do."""

    def forward(self, x):
        logits = super().forward(x)
        return {"logits": logits, "aux": logits.sum(1)}


def test_an_output_fn_picks_the_kept_outputs_of_a_dict():
    model = make(DictOutputs)
    x_keep, y = X[:12], targets(64, 6)
    with torch.no_grad():
        before = model(x_keep)["logits"].clone()
    opt = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1)
    NullSpaceProjector(model, KEEP, x_keep, corrected=True,
                       output_fn=lambda m, inputs: m(inputs)["logits"]).attach(opt)
    for _ in range(3):
        opt.zero_grad()
        (model(X)["logits"] - y).pow(2).mean().backward()
        opt.step()
    with torch.no_grad():
        change = model(x_keep)["logits"] - before
    assert change[:, KEEP].abs().max() <= 1e-8 and change[:, TRAIN].abs().max() > 1e-3
