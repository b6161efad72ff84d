"""LayerSubspaceProjector (GPM / Adam-NSCL) on CNNs and a transformer written here."""
import warnings

import pytest
import torch
from torch import nn
from torch_models import (DT, CNN, DeepCNN, TransformerClassifier, fit, images, make, outputs,
                          snapshot, targets, tokens, unchanged)

from selective_update import TrivialNullSpaceWarning
from selective_update.torch import LayerSubspaceProjector, PromiseWarning

HEAD_TRAIN = [4, 5]
KEPT = [0, 1, 2, 3]
X, X_OTHER = images(96, 1), images(40, 2)
Y = targets(96, 6)


def train_deep_cnn(energy, steps=15, lr=0.01):
    """DeepCNN under AdamW with decay on every output, projected at energy; return drifts."""
    model = make(DeepCNN)
    x_keep = X[:12]
    before, before_other = outputs(model, x_keep), outputs(model, X_OTHER)
    projector = LayerSubspaceProjector(model, model.head, HEAD_TRAIN, x_keep, energy=energy)
    assert model.norm.weight.requires_grad  # nothing changes before attach()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    with pytest.warns(PromiseWarning, match="froze 2 parameters .*norm.weight, norm.bias"):
        projector.attach(opt)
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    fit(model, opt, steps, x=X, y=Y)
    change = {n: float((p.detach() - params[n]).abs().max())
              for n, p in model.named_parameters()}
    kept = float((outputs(model, x_keep) - before)[:, KEPT].abs().max())
    trained = float((outputs(model, x_keep) - before)[:, HEAD_TRAIN].abs().max())
    other = float((outputs(model, X_OTHER) - before_other)[:, KEPT].abs().max())
    return model, projector, kept, trained, other, change


def test_energy_one_holds_the_kept_outputs_while_shared_layers_train():
    model, projector, kept, trained, other, change = train_deep_cnn(1.0)
    assert kept <= 1e-9  # on the protected inputs, float64
    assert trained > 1e-2  # the head's train rows learn
    assert other > 1e-3  # elsewhere the kept outputs are free to move: the promise is on inputs
    # Shared layers with spare directions train; the norm is frozen; a layer whose inputs the
    # protected images span fully (conv1: 9 + 1 directions, 12 x 64 patches) cannot move.
    assert projector.ranks["conv1"] == (10, 10) and change["conv1.weight"] <= 1e-12
    assert change["conv2.weight"] > 1e-3 and change["hidden.weight"] > 1e-3
    assert change["norm.weight"] == 0 and change["norm.bias"] == 0
    assert not model.norm.weight.requires_grad


def test_lower_energy_trades_drift_for_freedom():
    kept_99 = train_deep_cnn(0.9)[2]
    assert 1e-9 < kept_99  # directions past the energy threshold are no longer protected


def test_without_the_projector_the_same_training_moves_the_kept_outputs():
    model = make(DeepCNN)
    before = outputs(model, X[:12])
    fit(model, torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1), 15, x=X, y=Y)
    assert float((outputs(model, X[:12]) - before)[:, KEPT].abs().max()) > 1e-2


def test_a_transformer_classifier_freezes_attention_and_embeddings_and_says_so():
    model = make(TransformerClassifier)
    x, y = tokens(48, 0), targets(48, 5)
    before = outputs(model, x[:8])
    projector = LayerSubspaceProjector(model, model.head, [4], x[:8], energy=1.0)
    frozen = {n for n, _ in projector.frozen}
    assert {"embed.weight", "pos", "encoder.layers.0.self_attn.in_proj_weight",
            "encoder.layers.0.norm1.weight"} <= frozen
    assert "encoder.layers.0.linear1.weight" not in frozen
    opt = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1)
    with pytest.warns(PromiseWarning, match=r"froze \d+ parameters .*embed\.weight"):
        projector.attach(opt)
    model.train()  # dropout on while training; the promise is on the eval-mode outputs
    fit(model, opt, 5, x=x, y=y)
    after = outputs(model, x[:8])
    assert float((after - before)[:, :4].abs().max()) <= 1e-9
    assert float((after - before)[:, 4].abs().max()) > 1e-3
    projector.detach()
    assert model.embed.weight.requires_grad  # detach gives the flags back


def test_constraints_spanning_every_layer_warn():
    model = make(CNN, act=torch.tanh)  # tanh: 200 images span all 108 + 1 directions of fc
    with pytest.warns(TrivialNullSpaceWarning, match="only the head's train rows") as record:
        projector = LayerSubspaceProjector(model, model.fc, [1], images(200, 3), energy=1.0)
    assert projector.ranks == {"conv": (10, 10), "fc": (109, 109)}
    assert record[0].filename == __file__


@pytest.mark.parametrize("kwargs, name", [
    (dict(head="conv"), "head"),  # not a Linear
    (dict(head=nn.Linear(108, 6)), "head"),  # not inside model
    (dict(train=[6]), "train"),
    (dict(train=[]), "train"),
    (dict(energy=0.0), "energy"),
    (dict(energy=1.5), "energy"),
    (dict(energy=True), "energy"),
    (dict(inputs=torch.rand(4, 64, dtype=DT)), "inputs"),
    (dict(inputs=[1, 2]), "inputs"),
])
def test_bad_input_is_refused_in_one_line_with_the_model_untouched(kwargs, name):
    model = make(CNN)
    args = dict(head=model.fc, train=[1], inputs=images(8, 0), energy=0.99)
    args.update(kwargs)
    if isinstance(args["head"], str):
        args["head"] = getattr(model, args["head"])
    before = snapshot(model)
    with pytest.raises(ValueError, match=rf"^{name}: got .*; allowed: ") as info:
        LayerSubspaceProjector(model, args["head"], args["train"], args["inputs"],
                               energy=args["energy"])
    assert "\n" not in str(info.value) and unchanged(model, before)


def test_attach_refuses_an_optimizer_without_the_layers_and_changes_nothing():
    model = make(DeepCNN)
    projector = LayerSubspaceProjector(model, model.head, [1], images(8, 0))
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"^optimizer: "):
        projector.attach(torch.optim.SGD([nn.Parameter(torch.zeros(3))], lr=0.1))
    assert unchanged(model, before)  # the norm it would freeze is still trainable
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PromiseWarning)
        projector.attach(torch.optim.SGD(model.parameters(), lr=0.1))
    assert not model.norm.weight.requires_grad
    with pytest.raises(ValueError, match=r"^optimizer: .*attached already"):
        projector.attach(torch.optim.SGD(model.parameters(), lr=0.1))
