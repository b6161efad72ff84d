"""Every bad argument of run() is refused with one line naming it, before a framework is touched."""
import math

import numpy as np
import pytest

import selective_update as su

DATA = su.make_toy_data()
PARAMS = su.init_params()
OK = dict(params=PARAMS, data=DATA, keep=(0,), train=(1,), optimizer="sgd", lr=0.1, steps=1,
          weight_decay=0.0, warm_start_steps=0, dtype="float64")

BAD = [
    # (parameter, value)
    ("strategy", "split_heads"),
    ("strategy", None),
    ("framework", "tf2"),
    ("framework", "TORCH"),
    ("optimizer", "rmsprop"),
    ("optimizer", 3),
    ("lr", 0.0),
    ("lr", -0.1),
    ("lr", math.inf),
    ("lr", math.nan),
    ("lr", "0.1"),
    ("lr", True),
    ("steps", 0),
    ("steps", 2.5),
    ("steps", -1),
    ("weight_decay", -0.01),
    ("weight_decay", math.nan),
    ("warm_start_steps", -1),
    ("warm_start_steps", 1.5),
    ("warm_start_lr", 0.0),
    ("warm_start_lr", math.nan),
    ("keep", ()),
    ("keep", (2,)),
    ("keep", (-1,)),
    ("keep", (0, 0)),
    ("keep", "0"),
    ("train", []),
    ("train", (0,)),  # overlaps keep
    ("train", (1, 5)),
    ("dtype", "float16"),
    ("dtype", np.float64),
    ("device", "tpu"),
    ("params", {"W1": PARAMS["W1"]}),
    ("params", su.init_params(sizes=(4, 4, 2))),  # input width 4, data has 3
    ("params", su.init_params(sizes=(3, 4, 3))),  # 3 outputs, data has 2 targets
    ("params", {**PARAMS, "b1": np.zeros(5)}),
    ("params", [1, 2]),
    ("data", (DATA.x, DATA.y)),
    ("reference", np.zeros((4, 2))),  # input width 2, data has 3
    ("reference", np.zeros((0, 3))),
    ("reference", np.zeros(3)),
    ("reference", [[0.1, 0.2, 0.3]]),
    ("reference", np.full((2, 3), np.nan)),
    ("reference", np.array([["a", "b", "c"]])),
    ("energy", 0.5),  # null_space does not use it
    ("grow", 8),
    ("distill_weight", 1.0),
]


@pytest.mark.parametrize("name,value", BAD, ids=[f"{n}={v!r:.30}" for n, v in BAD])
def test_bad_argument_is_refused_in_one_line_before_any_work(name, value, monkeypatch):
    def no_framework(name):
        raise AssertionError("a framework was imported for a bad call")

    monkeypatch.setattr(su, "backend", no_framework)
    args = dict(OK)
    strategy, framework = "null_space", "torch"
    if name == "strategy":
        strategy = value
    elif name == "framework":
        framework = value
    else:
        args[name] = value
    with pytest.raises(ValueError) as err:
        su.run(strategy, framework, **args)
    message = str(err.value)
    assert message.startswith(f"{name}: ") and "allowed" in message and "\n" not in message


def test_device_cuda_is_refused_for_tf1():
    with pytest.raises(ValueError, match=r"^device: .*tf1"):
        su.run("all_params", "tf1", **{**OK, "device": "cuda"})


@pytest.mark.parametrize("framework", su.FRAMEWORKS)
def test_framework_module_run_validates_too(framework):
    module = su.backend(framework)
    with pytest.raises(ValueError, match=r"^steps: "):
        module.run("all_params", **{**OK, "steps": 0})


def test_good_arguments_pass_the_checks():
    config = su.check_run("all_params", "torch", **OK)
    assert isinstance(config, su.core.RunConfig)
    assert config.keep == (0,) and config.train == (1,) and config.lr == 0.1
    assert config.warm_start_lr == 0.1 and config.energy is None


def test_unknown_and_missing_arguments_are_refused_like_python_would():
    with pytest.raises(TypeError, match="unexpected keyword argument.*'stepz'"):
        su.backend("torch").run("all_params", **OK, stepz=3)
    with pytest.raises(TypeError, match="missing required keyword argument.*data"):
        su.check_run("all_params", "torch", params=OK["params"])
