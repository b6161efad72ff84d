"""algorithms.strategy_step over torch's ops in float64: what a strategy trains and differentiates,
and whole SGD steps (take_step over a small plain-SGD trainer) against steps computed here with
torch.autograd and a dense Jacobian."""
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import selective_update as su
from selective_update import core
from selective_update.algorithms import nullspace, protected, strategy_step, subspace
from selective_update.core.strategies import STRATEGIES, Strategy
from selective_update.torch import ops
from small_nets import flat, kept_jacobian, null_projection, plain_forward, tensors, unflat

SIZES, KEEP, TRAIN, LR = (3, 5, 4, 3), (0, 2), (1,), 0.1
PARAMS = su.init_params(SIZES, seed=3, stddev=1.0)
_toy = su.make_toy_data()
DATA = su.Data(_toy.x, np.c_[_toy.y, _toy.y[:, :1]], _toy.x_eval, np.c_[_toy.y_eval,
                                                                        _toy.y_eval[:, :1]])
REFERENCE = _toy.x_eval[:4]


def config(strategy, **arguments):
    return core.check_run(strategy, "torch", params=PARAMS, data=DATA, keep=KEEP, train=TRAIN,
                          lr=LR, **arguments)


def layers():
    L = len(SIZES) - 1
    return (tensors(PARAMS[f"W{l}"] for l in range(1, L + 1)),
            tensors(PARAMS[f"b{l}"] for l in range(1, L + 1)))


class SGDTrainer:
    """take_step's side of the Trainer contract: one W and b per layer, plain SGD at LR."""

    ops = ops

    def __init__(self, config):
        self.config = config
        Ws, bs = layers()
        Ws, bs = [W.requires_grad_() for W in Ws], [b.requires_grad_() for b in bs]
        self.net = SimpleNamespace(Ws=Ws, bs=bs, variables=[t for p in zip(Ws, bs) for t in p])

    def layers(self):
        return self.net.Ws, self.net.bs

    def forward(self, x, variables=None):
        return nullspace.forward(ops, self.net.Ws, self.net.bs, x)

    def gradients(self, ys, variables, grad_ys):
        return torch.autograd.grad(ys, variables, grad_outputs=grad_ys)

    def apply(self, grads, variables, after=None):
        with torch.no_grad():
            for v, g in zip(variables, grads):
                v -= self.config.lr * g
        return variables

    def snapshot(self, variables, after=None):
        return [v.detach().clone() for v in variables]

    def assign(self, variables, values):
        with torch.no_grad():
            for v, value in zip(variables, values):
                v.copy_(value)

    def no_grad(self):
        return torch.no_grad()


def step(name, reference=None, minibatch=False, start=None, **arguments):
    """Take one SGD step of a strategy; return (new flat params, residual)."""
    c = config(name, reference=reference, **arguments)
    t = SGDTrainer(c)
    inputs = strategy_step.StepInputs(
        torch.as_tensor(DATA.x), torch.as_tensor(DATA.y),
        None if reference is None else torch.as_tensor(reference), minibatch=minibatch,
        start=start or {}, options={"distill_weight": c.distill_weight})
    residual = strategy_step.take_step(t, STRATEGIES[name], inputs)[1]
    return flat(*t.layers()), residual


def gradient(loss_of_outputs):
    """Return the flat gradient of loss_of_outputs(out) at PARAMS, by autograd here."""
    Ws, bs = layers()
    params = [p.requires_grad_() for p in Ws + bs]
    L = len(Ws)
    value = loss_of_outputs(plain_forward(params[:L], params[L:], torch.as_tensor(DATA.x)))
    grads = torch.autograd.grad(value, params)
    return flat(grads[:L], grads[L:])


MASK = torch.as_tensor(core.nets.output_mask(SIZES[-1], TRAIN))
Y = torch.as_tensor(DATA.y)
START = flat(*layers())


def masked(out):
    return ((MASK * (out - Y)) ** 2).mean()


def kept_at(flat_params, x):
    Ws, bs = unflat(flat_params, *layers())
    return plain_forward(Ws, bs, torch.as_tensor(x))[:, list(KEEP)].numpy()


# --- whole steps ------------------------------------------------------------------------------

def test_all_params_takes_the_full_loss_gradient_step():
    new, residual = step("all_params")
    assert residual is None
    np.testing.assert_allclose(new, START - LR * gradient(lambda out: ((out - Y) ** 2).mean()),
                               rtol=0, atol=1e-14)


def test_masked_last_layer_moves_the_last_layer_only():
    new, _ = step("masked_last_layer")
    expected = START - LR * gradient(masked)
    first = (3 + 1) * 5 + (5 + 1) * 4  # W1, b1, W2, b2 stay; W3, b3 take the masked step
    np.testing.assert_array_equal(new[:first], START[:first])
    np.testing.assert_allclose(new[first:], expected[first:], rtol=0, atol=1e-14)


def test_output_gradient_back_propagates_G():
    new, _ = step("output_gradient")
    n = len(DATA.x)  # G: -1/n on the trained output, 0 elsewhere: the step raises output 1
    expected = START - LR * gradient(lambda out: -(out[:, 1]).sum() / n)
    np.testing.assert_allclose(new, expected, rtol=0, atol=1e-14)


@pytest.mark.parametrize("name", ["null_space", "compensated_gradient"])
def test_null_space_and_compensated_sgd_steps_are_the_projected_gradient_step(name):
    new, residual = step(name)
    J = kept_jacobian(*layers(), torch.as_tensor(DATA.x), KEEP)
    expected = START + null_projection(J, -LR * gradient(masked))
    assert residual is None
    np.testing.assert_allclose(new, expected, rtol=0, atol=1e-9)


def test_null_space_on_each_mini_batch_factors_the_same_projection():
    """minibatch=True projects through algorithms.protected (the step's rows), else nullspace."""
    np.testing.assert_allclose(step("null_space", minibatch=True, batch_size=8)[0],
                               step("null_space")[0], rtol=0, atol=1e-9)


@pytest.mark.parametrize("reference", [None, REFERENCE])
def test_null_space_corrected_restores_the_protected_outputs(reference):
    x = DATA.x if reference is None else reference
    new, residual = step("null_space_corrected", reference=reference)
    assert float(residual) <= 1e-13
    np.testing.assert_allclose(kept_at(new, x), kept_at(START, x), rtol=0, atol=1e-12)
    assert np.abs(new - START).max() > 1e-3


@pytest.mark.parametrize("name", ["null_space", "compensated_gradient"])
def test_a_reference_moves_the_first_order_protection_onto_it(name):
    new, _ = step(name, reference=REFERENCE)
    J_ref = kept_jacobian(*layers(), torch.as_tensor(REFERENCE), KEEP)
    expected = START + null_projection(J_ref, -LR * gradient(masked))
    np.testing.assert_allclose(new, expected, rtol=0, atol=1e-9)
    J_batch = kept_jacobian(*layers(), torch.as_tensor(DATA.x), KEEP)
    assert np.abs(J_batch @ (new - START)).max() > 1e-4  # the batch is no longer protected


def test_layer_subspace_at_full_energy_holds_the_kept_outputs_exactly():
    c = config("layer_subspace", energy=1.0)
    hs, out = core.nets.forward(PARAMS, DATA.x)
    values = strategy_step.start_values(STRATEGIES["layer_subspace"], c, hs, out)
    start = {"bases": [tuple(tensors(pair)) for pair in values["bases"]]}
    new, residual = step("layer_subspace", start=start, energy=1.0)
    assert residual is None
    np.testing.assert_allclose(kept_at(new, DATA.x), kept_at(START, DATA.x), rtol=0, atol=1e-13)
    free = START - LR * gradient(masked)  # the trained head takes the plain step
    head = [(3 + 1) * 5 + (5 + 1) * 4 + r * 3 + 1 for r in range(4)] + [len(START) - 2]
    np.testing.assert_allclose(new[head], free[head], rtol=0, atol=1e-14)


@pytest.mark.parametrize("reference", [None, REFERENCE])
def test_distill_adds_the_weighted_change_of_the_kept_outputs(reference):
    x = DATA.x if reference is None else reference  # where the kept outputs are held
    rng = np.random.default_rng(0)
    target = kept_at(START, x).T + rng.normal(0, 0.1, (len(KEEP), len(x)))
    new, _ = step("distill", reference=reference,
                  start={"distill_target": torch.as_tensor(target)}, distill_weight=0.5)
    Ws, bs = layers()
    params = [p.requires_grad_() for p in Ws + bs]
    change = plain_forward(params[:3], params[3:], torch.as_tensor(x))[:, list(KEEP)].T - \
        torch.as_tensor(target)
    penalty = torch.autograd.grad(0.5 * (change ** 2).mean(), params)
    expected = START - LR * (gradient(masked) + flat(penalty[:3], penalty[3:]))
    np.testing.assert_allclose(new, expected, rtol=0, atol=1e-14)


# --- the pieces ---------------------------------------------------------------------------------

def test_var_list_gives_each_strategy_its_variables():
    net = SimpleNamespace(variables=["W1", "b1", "W2", "b2"], Ws=["W1", "W2"], bs=["b1", "b2"],
                          heads_W=["hW0", "hW1", "hW2"], heads_b=["hb0", "hb1", "hb2"],
                          trained=["new_W1", "train_W"])
    expected = {"all": net.variables, "last_layer": ["W2", "b2"],
                "train_heads": ["hW0", "hW2", "hb0", "hb2"], "grown": ["new_W1", "train_W"]}
    for s in STRATEGIES.values():
        assert strategy_step.var_list(s, net, (0, 2)) == expected[s.trains], s.name
    assert {strategy_step.network(s) for s in STRATEGIES.values()} == {"plain", "split", "grown"}
    assert strategy_step.network(STRATEGIES["split_head"]) == "split"
    assert strategy_step.network(STRATEGIES["grow"]) == "grown"


def probe(loss):
    return Strategy(name="probe", summary="", source="", trains="all", loss=loss)


def test_loss_is_the_mean_squared_error_its_field_names():
    rng = np.random.default_rng(1)
    out, y, mask = rng.normal(size=(6, 3)), rng.normal(size=(6, 3)), np.array([0.0, 1.0, 0.0])
    t_out, t_y, t_mask = (torch.as_tensor(a) for a in (out, y, mask))
    full = ((out - y) ** 2).mean()
    part = ((out - y)[:, 1] ** 2).sum() / out.size
    for loss, expected in (("full", full), ("masked", part), ("compensated_gradient", part),
                           ("distill", part + 0.25)):
        got = strategy_step.loss(ops, probe(loss), t_out, t_y, t_mask,
                                 torch.tensor(0.25) if loss == "distill" else None)
        np.testing.assert_allclose(float(got), expected, rtol=1e-14)
    assert strategy_step.loss(ops, probe("output_gradient"), t_out, t_y, t_mask) is None


@pytest.mark.parametrize("loss", ["full", "masked", "compensated_gradient"])
def test_closed_form_loss_gradient_is_autograds(loss):
    rng = np.random.default_rng(0)
    out, y = (torch.as_tensor(rng.normal(size=(6, 3))) for _ in range(2))
    mask = torch.tensor([0.0, 1.0, 1.0])
    closed = strategy_step.loss_gradient(ops, probe(loss), out, y, mask)
    out.requires_grad_()
    by_autograd = torch.autograd.grad(strategy_step.loss(ops, probe(loss), out, y, mask), out)[0]
    np.testing.assert_allclose(closed.numpy(), by_autograd.numpy(), rtol=1e-14, atol=0)


def test_closed_form_loss_gradient_refuses_other_losses():
    for name in ("distill", "output_gradient"):
        with pytest.raises(ValueError, match="no closed form"):
            strategy_step.loss_gradient(None, STRATEGIES[name], None, None, None)


def test_differentiate_returns_what_each_loss_back_propagates():
    c = config("output_gradient")
    t = SGDTrainer(c)
    x, y = torch.as_tensor(DATA.x), torch.as_tensor(DATA.y)
    hs, out = t.forward(x)
    inputs = strategy_step.StepInputs(x, y)
    ys, grad_ys = strategy_step.differentiate(t, STRATEGIES["output_gradient"], hs, out, inputs)
    assert ys[0] is out
    np.testing.assert_array_equal(grad_ys[0].numpy(),
                                  np.tile([0.0, -1.0 / len(x), 0.0], (len(x), 1)))
    ys, grad_ys = strategy_step.differentiate(t, STRATEGIES["masked_loss"], hs, out, inputs)
    assert grad_ys is None and ys[0].dim() == 0
    np.testing.assert_allclose(ys[0].item(), masked(out).item(), rtol=1e-15)
    with_ref = strategy_step.StepInputs(x, y, torch.as_tensor(REFERENCE))
    ys, grad_ys = strategy_step.differentiate(t, STRATEGIES["compensated_gradient"], hs, out,
                                              with_ref)
    assert len(ys) == 2 and ys[1].shape == (len(REFERENCE), 3)  # G on x, -alpha on the reference
    np.testing.assert_allclose(grad_ys[0].numpy(), (2 * MASK * (out - y) / out.numel()).detach(),
                               rtol=1e-14)
    assert not grad_ys[1][:, list(TRAIN)].any() and grad_ys[1][:, list(KEEP)].abs().max() > 0
    assert "first_inputs" in with_ref.cache  # fixed inputs: their products are kept


def test_step_inputs_protected_distilled_and_cached():
    x, ref = torch.zeros(2, 3), torch.ones(1, 3)
    assert strategy_step.StepInputs(x, x).protected is None
    assert strategy_step.StepInputs(x, x, minibatch=True).protected is x
    for minibatch in (False, True):
        assert strategy_step.StepInputs(x, x, ref, minibatch=minibatch).protected is ref
    assert strategy_step.StepInputs(x, x).distilled is x
    assert strategy_step.StepInputs(x, x, ref).distilled is ref
    inputs, calls = strategy_step.StepInputs(x, x), []
    for _ in range(2):
        assert inputs.cached("a", lambda: calls.append(1) or "value") == "value"
    assert calls == [1]


def test_start_values_take_the_bases_and_the_distill_target():
    hs, out = core.nets.forward(PARAMS, DATA.x)
    bases = strategy_step.start_values(STRATEGIES["layer_subspace"], config("layer_subspace",
                                                                           energy=0.9), hs, out)
    assert list(bases) == ["bases"]
    for (U_W, u_b), (V_W, v_b) in zip(bases["bases"], subspace.bases(hs, 0.9)):
        np.testing.assert_array_equal(U_W, V_W)
        np.testing.assert_array_equal(u_b, v_b)
    target = strategy_step.start_values(STRATEGIES["distill"], config("distill"), hs, out)
    assert list(target) == ["distill_target"]
    np.testing.assert_array_equal(target["distill_target"], out[:, list(KEEP)].T)
    assert strategy_step.start_values(STRATEGIES["null_space"], config("null_space"), hs,
                                      out) == {}
    assert strategy_step.start_names([STRATEGIES["all_params"]]) == set()
    assert strategy_step.start_names(STRATEGIES.values()) == {"bases", "distill_target",
                                                              "fisher", "anchored"}


def test_rebases_only_layer_subspace_on_mini_batches_without_a_reference():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", su.TrivialNullSpaceWarning)  # 4 rows, 2 kept outputs
        for name, s in STRATEGIES.items():
            reference = REFERENCE if not s.memory else su.Memory(
                REFERENCE, np.zeros((len(REFERENCE), SIZES[-1])), np.zeros(len(REFERENCE), int))
            for arguments in ({}, {"batch_size": 4}, {"batch_size": 4, "reference": reference}):
                expected = name == "layer_subspace" and arguments == {"batch_size": 4}
                assert strategy_step.rebases(s, config(name, **arguments)) == expected, name


def test_step_start_slices_the_distill_target_on_the_steps_rows():
    target = np.arange(16.0).reshape(2, 8)
    values = {"distill_target": target, "bases": ["b"]}
    rows = np.array([5, 1, 2])
    sliced = strategy_step.step_start(values, config("distill", batch_size=3), rows)
    np.testing.assert_array_equal(sliced["distill_target"], target[:, rows])
    assert sliced["bases"] == ["b"]
    assert strategy_step.step_start(values, config("distill"), None) is values
    assert strategy_step.step_start(values, config("distill", reference=REFERENCE, batch_size=3),
                                    rows) is values
    assert strategy_step.step_start({"bases": 1}, config("distill", batch_size=3),
                                    rows) == {"bases": 1}


def test_protected_form_is_form_for_the_rows_each_step_protects(monkeypatch):
    """None on the fixed batch (nullspace.py); else the form of the mini-batch's rows or, when
    there is one, the reference's (the dense limit set to 0: gram for 8 constraints < 59
    parameters, params for 100)."""
    monkeypatch.setattr(protected, "DENSE_JACOBIAN_MAX", 0)
    assert strategy_step.protected_form(config("null_space")) is None
    assert strategy_step.protected_form(config("null_space", batch_size=4)) == "gram"
    with pytest.warns(su.TrivialNullSpaceWarning):
        many = config("null_space", batch_size=4, reference=DATA.x_eval[:50])
    assert strategy_step.protected_form(many) == "params"
    assert strategy_step.protected_form(config("null_space", reference=REFERENCE)) == "gram"


def test_keep_columns_and_project_step():
    np.testing.assert_array_equal(strategy_step.keep_columns(3, KEEP), [[1.0, 0.0, 1.0]])
    Ws, bs = layers()
    x = torch.as_tensor(DATA.x)
    dWs, dbs = unflat(np.random.default_rng(2).normal(size=len(START)), Ws, bs)
    got = flat(*strategy_step.project_step(ops, Ws, bs, x, KEEP, dWs, dbs))
    np.testing.assert_allclose(got, null_projection(kept_jacobian(Ws, bs, x, KEEP),
                                                    flat(dWs, dbs)), rtol=0, atol=1e-9)
