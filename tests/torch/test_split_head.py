"""split_head and unsplit_head on models written here: bitwise where it applies, refused or warned
where it would not hold, and undone by unsplit_head."""
import warnings

import pytest
import torch
from torch import nn
from torch_models import (DT, KEEP, OPTIMIZERS, TRAIN, CNN, X, BatchNormCNN, DropoutMLP,
                          TransformerClassifier, TwoTower, fit, images, make, outputs, snapshot,
                          targets, tokens, unchanged)

from selective_update.torch import PromiseWarning, split_head, unsplit_head

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")


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


# --- what works today, and must keep working -----------------------------------------------------

def bitwise_after(model, head, train, x, y, make_opt, step=None, steps=4):
    """Split, train with make_opt(model) (or a custom step); return (kept, trained) change."""
    before = outputs(model, x)
    split_head(model, head, train)
    opt = make_opt(model)
    for _ in range(steps):
        if step is None:
            fit(model, opt, 1, x=x, y=y)
        else:
            step(model, opt, x, y)
    after = outputs(model, x)
    kept = [k for k in range(after.shape[1]) if k not in train]
    return (after - before)[:, kept].abs().max(), (after - before)[:, list(train)].abs().max()


def adamw(model):
    return torch.optim.AdamW(model.parameters(), lr=0.02, weight_decay=0.1)


def test_mlp_with_layernorm_and_dropout_in_train_mode():
    model = make(DropoutMLP)
    model.train()
    x, y = torch.randn(32, 8, dtype=DT), targets(32, 6)
    kept, trained = bitwise_after(model, model.head, TRAIN, x, y, adamw)
    assert kept == 0 and trained > 1e-3


def test_transformer_classifier_gains_a_class():
    model = make(TransformerClassifier)
    x, y = tokens(24, 0), targets(24, 5)
    kept, trained = bitwise_after(model, model.head, [4], x, y, adamw)
    assert kept == 0 and trained > 1e-3


def test_nested_head_without_bias_and_filtered_optimizer():
    model = make(TwoTower)
    model.kept_tower[2] = nn.Linear(4, 3, bias=False).to(DT)
    x, y = torch.randn(32, 8, dtype=DT), targets(32, 5)

    def only_trained(m):  # the habit: an optimizer of filter(requires_grad) parameters
        return torch.optim.AdamW(filter(lambda p: p.requires_grad, m.parameters()), lr=0.02)

    kept, trained = bitwise_after(model, model.kept_tower[2], [1], x, y, only_trained)
    assert kept == 0 and trained > 1e-3


def test_float64_after_the_split_clipping_and_zero_grad_without_none():
    torch.manual_seed(0)
    model = CNN()  # float32: split first, then .to(float64)
    split_head(model, model.fc, TRAIN)
    model.to(DT)
    before = outputs(model)
    opt = torch.optim.AdamW(model.parameters(), lr=0.02, weight_decay=0.1)
    for _ in range(4):
        opt.zero_grad(set_to_none=False)
        (model(X) - targets(64, 6)).pow(2).mean().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        opt.step()
    after = outputs(model)
    assert after.dtype == DT and torch.equal(after[:, KEEP], before[:, KEEP])
    assert (after[:, TRAIN] - before[:, TRAIN]).abs().max() > 1e-3


def test_data_parallel_wrapping_after_the_split():
    model = make(CNN)
    before = outputs(model)
    split_head(model, model.fc, TRAIN)
    wrapped = nn.DataParallel(model)  # on CPU it runs the module itself
    fit(wrapped, adamw(wrapped), 3)
    assert torch.equal(outputs(model)[:, KEEP], before[:, KEEP])


@pytest.mark.slow
def test_torch_compile_of_a_split_model():
    model = make(CNN)
    before = outputs(model)
    split_head(model, model.fc, TRAIN)
    compiled = torch.compile(model)
    fit(compiled, adamw(model), 3)
    after = outputs(model)
    assert torch.equal(after[:, KEEP], before[:, KEEP])
    assert (after[:, TRAIN] - before[:, TRAIN]).abs().max() > 1e-3


# --- what used to break the promise without a word ------------------------------------------------

def test_a_tied_head_is_refused_and_the_model_left_as_it_was():
    model = make(TransformerClassifier, tied=True)
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"^head: got .*is also embed\.weight.*; allowed: .*"
                                         r"untie it") as info:
        split_head(model, model.head, [3])
    assert "\n" not in str(info.value) and unchanged(model, before)


def test_untied_the_way_the_message_says_the_promise_holds():
    model = make(TransformerClassifier, tied=True)
    model.head.weight = nn.Parameter(model.head.weight.detach().clone())
    x, y = tokens(24, 0), targets(24, 20)
    kept, trained = bitwise_after(model, model.head, [3], x, y, adamw)
    assert kept == 0 and trained > 1e-3


def test_batchnorm_in_train_mode_warns_at_the_first_forward_naming_the_module():
    model = make(BatchNormCNN)
    before = outputs(model)
    split_head(model, model.fc, TRAIN)
    opt = adamw(model)
    model.train()
    with pytest.warns(PromiseWarning, match=r"split_head: bn runs in train mode.*running "
                                            r"statistics") as record:
        fit(model, opt, 2)
    assert len(record) == 1 and record[0].filename == __file__.replace(
        "test_split_head", "torch_models")  # the user's forward call, not torch's
    assert (outputs(model)[:, KEEP] - before[:, KEEP]).abs().max() > 1e-3  # what it warned of
    model.bn.eval()  # the fix the warning names: the kept outputs stay put from here on
    after_fix = outputs(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit(model, opt, 2)
    assert torch.equal(outputs(model)[:, KEEP], after_fix[:, KEEP])


def test_a_second_split_in_one_model_is_refused():
    model = make(TwoTower)
    split_head(model, model.new_tower, [0])
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"^head: got .*'new_tower' is split: unsplit_head"):
        split_head(model, model.kept_tower[2], [0])
    assert unchanged(model, before)
    assert model.new_tower.parametrizations.weight.original.requires_grad


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
    assert unchanged(model, before)


def test_split_head_twice_on_one_layer_is_refused():
    model = make(CNN)
    split_head(model, model.fc, TRAIN)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"^head: .*split this one already"):
        split_head(model, model.fc, [0])
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert model.fc.parametrizations.weight.original.requires_grad


# --- unsplit_head -------------------------------------------------------------------------------

def test_unsplit_head_puts_plain_parameters_and_every_flag_back():
    model = make(TwoTower)
    model.trunk[0].weight.requires_grad_(False)  # a user's own frozen layer stays frozen
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    x, y = torch.randn(32, 8, dtype=DT), targets(32, 5)
    split_head(model, model.new_tower, [1])
    opt = adamw(model)
    fit(model, opt, 3, x=x, y=y)
    split_values = outputs(model, x)
    weight = model.new_tower.parametrizations.weight.original
    returned = unsplit_head(model, model.new_tower)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert type(model.new_tower) is nn.Linear and not hasattr(model.new_tower, "parametrizations")
    assert returned[0] is model.new_tower.weight is weight  # the optimizer's parameter, plain
    assert torch.equal(outputs(model, x), split_values)  # current values, kept rows frozen
    assert list(model.state_dict()) == list(make(TwoTower).state_dict())
    fit(model, opt, 2, x=x, y=y)  # the same optimizer now moves every row it holds
    assert (outputs(model, x) - split_values)[:, 3].abs().max() > 1e-4
    split_head(model, model.kept_tower[2], [0])  # split again, another layer
    with pytest.raises(ValueError, match=r"^head: .*not split"):
        unsplit_head(model, model.new_tower)


def test_unsplit_head_removes_the_batchnorm_hook():
    model = make(BatchNormCNN)
    split_head(model, model.fc, TRAIN)
    unsplit_head(model, model.fc)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.train()
        model(images(4, 0))  # no split: no warning


def test_unsplit_head_refuses_bad_input():
    model = make(CNN)
    for head, pattern in [(model.fc, r"^head: .*not split"), (model.conv, r"^head: got 'Conv2d'"),
                          (nn.Linear(3, 3), r"^head: .*not in it")]:
        with pytest.raises(ValueError, match=pattern):
            unsplit_head(model, head)
    with pytest.raises(ValueError, match=r"^model: got "):
        unsplit_head(object(), model.fc)


@pytest.mark.parametrize("wrap", ["before", "after"])
def test_distributed_data_parallel_before_or_after_the_split(wrap, tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)
    try:
        model = make(CNN)
        before = outputs(model)
        if wrap == "before":
            ddp = DistributedDataParallel(model)
            split_head(ddp, model.fc, TRAIN)
        else:
            split_head(model, model.fc, TRAIN)
            ddp = DistributedDataParallel(model)
        fit(ddp, adamw(ddp), 3)
        after = outputs(model)
        assert torch.equal(after[:, KEEP], before[:, KEEP])
        assert (after[:, TRAIN] - before[:, TRAIN]).abs().max() > 1e-3
    finally:
        dist.destroy_process_group()
