"""The house rules: one job per module, one framework boundary, one home for settings."""
import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import selective_update as su
from selective_update import settings, validation

PACKAGE = Path(su.__file__).resolve().parent
MODULES = sorted(PACKAGE.glob("*.py"))
# Each framework is imported by its own modules only (d2l's pattern), whose names start with the
# framework module's name (tf1.py, tf1_model.py, ...); everything else is framework-free.
FRAMEWORK_MODULES = {"tensorflow": ("tf1", "keras"), "keras": ("keras",), "torch": ("torch",)}
MAX_LINES = 450


def _imports(path):
    """Return the top-level package names a module imports (anywhere in it)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_module_is_small(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.name}: {lines} lines; a module past ~450 holds two jobs"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_framework_imported_only_in_its_own_module(path):
    for framework, owners in FRAMEWORK_MODULES.items():
        if framework in _imports(path):
            assert path.stem.startswith(owners), f"{path.name} imports {framework}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_no_private_reach_ins_across_modules(path):
    """Modules call each other's public names only (no `core._check`, `torch._Trainer`)."""
    tree = ast.parse(path.read_text())
    siblings = {p.stem for p in MODULES}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in siblings | {"su", "su_torch"} and node.attr.startswith("_")
                and not node.attr.startswith("__")):
            pytest.fail(f"{path.name}:{node.lineno}: {node.value.id}.{node.attr}")


def test_importing_the_package_and_its_cli_loads_no_framework():
    code = ("import sys, selective_update, selective_update.__main__ as m; m.build_parser(); "
            "print(sorted(k for k in ('torch', 'tensorflow', 'keras') if k in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_every_framework_module_has_the_same_surface():
    import selective_update.tf1 as tf1
    import selective_update.torch as torch_port

    surface = ("NAME", "configure", "make_steps", "make_optimizer", "run", "seed_demo",
               "project_step")
    for module in (tf1, torch_port):
        for name in surface:
            assert callable(getattr(module, name)) or name == "NAME", (module.__name__, name)
    assert (tf1.NAME, torch_port.NAME) == ("tf1", "torch")


def test_settings_are_the_one_home():
    """Values that used to be copied now come from settings (the copies are gone)."""
    from selective_update import datasets, verdicts

    assert verdicts.BATCH_EXACT_TOL is settings.BATCH_EXACT_TOL
    assert su.RESTORE_TOL is settings.RESTORE_TOL
    assert datasets.DATA_DIR == settings.DATA_DIR
    for path in MODULES:
        if path.name == "settings.py":
            continue
        text = path.read_text()
        for name in ("DEFAULT_GRID = ", "QUICK_GRID = ", "RESTORE_TOL = ", "BATCH_EXACT_TOL = ",
                     "FIRST_ORDER_RATIO = ", "REPORTS_DIR = "):
            assert name not in text, f"{path.name} defines {name.strip(' =')} again"


@pytest.mark.parametrize("keep", [np.array([0]), [np.int64(0)], (np.int32(0),), np.int64(0),
                                  range(1)])
def test_numpy_and_other_integer_sequences_are_accepted(keep):
    data, params = su.make_toy_data(), su.init_params()
    plain = su.run("split_head", "torch", params=params, data=data, keep=(0,), steps=1)
    r = su.run("split_head", "torch", params=params, data=data, keep=keep, steps=1)
    assert r.keep == (0,) and isinstance(r.keep[0], int)
    np.testing.assert_array_equal(r.outputs, plain.outputs)


@pytest.mark.parametrize("keep, message", [
    (np.array([0.0]), "keep: got [0.0]"), (np.array([[0]]), "keep: got [[0]]"),
    ([True], "keep: got [True]"), (np.array([], dtype=int), "keep: got []"),
    ("0", "keep: got '0'")])
def test_other_outputs_are_still_refused_in_one_line(keep, message):
    with pytest.raises(ValueError) as info:
        su.run("split_head", "torch", params=su.init_params(), data=su.make_toy_data(), keep=keep)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_validation_messages_read_the_same():
    with pytest.raises(ValueError, match=r"^lr: got 0; allowed: a finite number > 0$"):
        validation.check_real("lr", 0, 0.0, strict=True)
    assert validation.check_outputs("train", np.array([1, 2]), 3) == (1, 2)


def test_tf1_runs_keep_framework_noise_off_the_terminal():
    code = ("import selective_update as su\n"
            "d, p = su.make_toy_data(), su.init_params()\n"
            "for s in ('null_space_corrected', 'split_head'):\n"
            "    su.run(s, 'tf1', params=p, data=d, optimizer='adam', steps=2)\n"
            "import warnings; warnings.warn('a real warning stays')\n")
    env = {k: v for k, v in __import__("os").environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    for noise in ("Not handling type", "cuInit", "cuda_platform", "oneDNN"):
        assert noise not in out.stderr, (noise, out.stderr[-2000:])
    assert "a real warning stays" in out.stderr
