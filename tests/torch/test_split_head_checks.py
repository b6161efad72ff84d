"""split_head checks its own promise at every forward pass: the habits that used to void it
without a word (a load with assign=True, a meta-device model, unfreezing everything, a write to
head.weight, a second BatchNorm, a lazy head) are held or named where they happen."""
import warnings

import pytest
import torch
from torch import nn
from torch_models import (DT, KEEP, TRAIN, DeepCNN, TwoNormMLP, X, fit, make, outputs, targets)

from selective_update.torch import PromiseWarning, split_head

Y6 = targets(64, 6)


def adamw(model):
    return torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1)


def test_a_load_with_assign_true_keeps_its_own_frozen_copy():
    model = make(DeepCNN)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    before = outputs(model)
    split_head(model, model.head, TRAIN)
    model.load_state_dict(state, assign=True)  # torch's advice for mmap'ed checkpoints
    keep_rows = model.head.parametrizations.weight[0]
    original = model.head.parametrizations.weight.original
    assert keep_rows.frozen.data_ptr() != original.data_ptr()
    fit(model, adamw(model), 10)  # the optimizer built after the load, as torch recommends
    after = outputs(model)
    assert torch.equal(after[:, KEEP], before[:, KEEP])
    assert (after[:, TRAIN] - before[:, TRAIN]).abs().max() > 1e-3


def test_a_meta_device_model_gets_its_row_mask_back_at_load():
    reference = make(DeepCNN)
    with torch.device("meta"):
        model = DeepCNN().to(DT)
    split_head(model, model.head, TRAIN)
    model.to_empty(device="cpu")  # buffers are uninitialised memory now, the mask too
    model.load_state_dict(reference.state_dict())
    mask = model.head.parametrizations.weight[0].mask.reshape(-1)
    assert mask.nonzero().flatten().tolist() == TRAIN
    before = outputs(reference)
    fit(model, adamw(model), 5)
    assert torch.equal(outputs(model)[:, KEEP], before[:, KEEP])


def test_a_row_mask_left_uninitialised_is_refused_at_the_next_forward():
    with torch.device("meta"):
        model = DeepCNN().to(DT)
    split_head(model, model.head, TRAIN)
    model.to_empty(device="cpu")
    mask = model.head.parametrizations.weight[0].mask  # what uninitialised memory may hold
    mask.copy_(torch.tensor([True, False, True, True, False, False]).reshape(mask.shape))
    with pytest.raises(ValueError, match=r"^head: got .*trains rows \[0, 2, 3\].*; allowed: .*"
                                         r"load_state_dict") as info:
        model(X)
    assert "\n" not in str(info.value)


def test_a_meta_model_loaded_with_assign_true_trains_on_the_loaded_device():
    reference = make(DeepCNN)
    with torch.device("meta"):
        model = DeepCNN().to(DT)
    split_head(model, model.head, TRAIN)
    model.load_state_dict(reference.state_dict(), assign=True)
    before = outputs(reference)
    fit(model, adamw(model), 5)
    assert torch.equal(outputs(model)[:, KEEP], before[:, KEEP])


def test_unfreezing_everything_is_undone_and_said_at_the_next_forward():
    model = make(DeepCNN)
    before = outputs(model)
    split_head(model, model.head, TRAIN)
    model.requires_grad_(True)  # the "unfreeze all" habit
    opt = adamw(model)
    with pytest.warns(PromiseWarning, match=r"split_head: 7 parameters .*requires_grad=True "
                                            r"again \(conv1\.weight, .*set it back to False"):
        fit(model, opt, 5)
    after = outputs(model)
    assert torch.equal(after[:, KEEP], before[:, KEEP])
    assert (after[:, TRAIN] - before[:, TRAIN]).abs().max() > 1e-3
    assert not model.conv1.weight.requires_grad


@pytest.mark.parametrize("how", ["index", "data", "copy_"])
def test_a_write_to_a_trained_row_of_head_weight_lands(how):
    model = make(DeepCNN)
    split_head(model, model.head, TRAIN)
    row = torch.linspace(-1, 1, 24, dtype=DT)  # imprinting a new class's row
    with torch.no_grad():
        if how == "index":
            model.head.weight[TRAIN[0]] = row
        elif how == "data":
            model.head.weight.data[TRAIN[0]] = row
        else:
            new = model.head.weight.clone()
            new[TRAIN[0]] = row
            model.head.weight.copy_(new)
    model(X)
    assert torch.equal(model.head.weight[TRAIN[0]], row)
    assert torch.equal(model.head.parametrizations.weight.original[TRAIN[0]], row)


def test_a_write_to_a_kept_row_of_head_weight_is_refused_with_the_way_to_do_it():
    model = make(DeepCNN)
    split_head(model, model.head, TRAIN)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.head.weight[0] = 0.0
    with pytest.raises(ValueError, match=r"^head: got .*kept rows \[0\].*; allowed: writes to the "
                                         r"trained rows \[1, 4\], or unsplit_head") as info:
        model(X)
    assert "\n" not in str(info.value)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    model(X)  # refused once; the model trains on


def test_every_batchnorm_in_train_mode_is_named_when_it_matters():
    model = make(TwoNormMLP)
    x, y = torch.randn(32, 8, dtype=DT), targets(32, 6)
    split_head(model, model.head, TRAIN)
    opt = adamw(model)
    model.train()
    model.bn2.eval()
    with pytest.warns(PromiseWarning, match=r"split_head: bn1 runs in train mode") as first:
        fit(model, opt, 1, x=x, y=y)
    assert len(first) == 1 and "bn2" not in str(first[0].message)
    model.train()
    model.bn1.eval()  # the fix named, and the next epoch's model.train() woke bn2
    before = outputs(model, x)
    with pytest.warns(PromiseWarning, match=r"split_head: bn2 runs in train mode.*"
                                            r"get_submodule\('bn2'\)\.eval\(\)"):
        fit(model, opt, 2, x=x, y=y)
    assert (outputs(model, x)[:, KEEP] - before[:, KEEP]).abs().max() > 1e-3  # what it warned of


def test_two_batchnorms_in_train_mode_are_named_together():
    model = make(TwoNormMLP)
    split_head(model, model.head, TRAIN)
    model.train()
    with pytest.warns(PromiseWarning, match=r"split_head: bn1, bn2 run in train mode") as record:
        model(torch.randn(16, 8, dtype=DT))
        model(torch.randn(16, 8, dtype=DT))
    assert len(record) == 1


def test_an_uninitialised_lazy_head_is_refused_before_anything_changes():
    model = nn.Sequential(nn.Linear(8, 12), nn.Tanh(), nn.LazyLinear(6))
    flags = [p.requires_grad for p in model.parameters()]
    with pytest.raises(ValueError, match=r"^model: got 'a model with uninitialised lazy parameters "
                                         r"\(2\.weight, 2\.bias\)'; allowed: .*run one forward "
                                         r"pass") as info:
        split_head(model, model[2], TRAIN)
    assert "\n" not in str(info.value) and [p.requires_grad for p in model.parameters()] == flags
    model(torch.randn(4, 8))  # initialised: the split goes through
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        split_head(model, model[2], TRAIN)
