"""The house rules: folders say a file's job, one framework per folder, no import cycle, small
modules, one home for settings, and the two frameworks' runners with the same surface."""
import ast
import inspect
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import selective_update as su
from selective_update import settings, validation

PACKAGE = Path(su.__file__).resolve().parent
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)
MAX_LINES = 450
# Each framework is imported inside its own folder only (d2l's pattern): tensorflow by tf1/ (and
# keras.py, whose backend it is), keras by keras.py, torch by torch/. Everything else reaches a
# framework through su.backend(name) or the framework's public package.
FRAMEWORK_HOMES = {"tensorflow": ("tf1/", "keras.py"), "keras": ("keras.py",),
                   "torch": ("torch/",)}
IMPORTERS = ("import_module", "quiet_import", "__import__")


def _rel(path):
    return path.relative_to(PACKAGE).as_posix()


def _module_name(path):
    parts = ["selective_update", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _framework_imports(path):
    """Return the top-level names a module imports anywhere in it, dynamic imports included."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif (isinstance(node, ast.Call) and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and getattr(node.func, "attr", getattr(node.func, "id", None)) in IMPORTERS):
            names.add(node.args[0].value.split(".")[0])
    return names


def _package_edges(path, known):
    """Return the package modules a module imports, lazily inside functions too."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    edges = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            edges |= {a.name for a in node.names if a.name.split(".")[0] == "selective_update"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = ".".join(base[:len(base) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            elif (node.module or "").split(".")[0] == "selective_update":
                base = node.module
            else:
                continue
            for alias in node.names:  # `from . import ops` names a module, else the package
                edges.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {e for e in edges if e in known and e != name}


@pytest.mark.parametrize("path", MODULES, ids=_rel)
def test_module_is_small(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{_rel(path)}: {lines} lines; a module past ~450 holds two jobs"


@pytest.mark.parametrize("path", MODULES, ids=_rel)
def test_framework_imported_only_in_its_own_folder(path):
    for framework, homes in FRAMEWORK_HOMES.items():
        if framework in _framework_imports(path):
            assert _rel(path).startswith(homes), f"{_rel(path)} imports {framework}"


def test_the_framework_rule_can_fail(tmp_path):
    stray = tmp_path / "stray.py"
    stray.write_text("import importlib\nimportlib.import_module('torch.nn')\n"
                     "from tensorflow import x\n")
    assert {"torch", "tensorflow"} <= _framework_imports(stray)


def test_no_import_cycle_counting_lazy_imports():
    known = {_module_name(p) for p in MODULES}
    graph = {_module_name(p): _package_edges(p, known) for p in MODULES}
    assert graph["selective_update.study.cli"] >= {"selective_update.study.notebook_runner"}
    assert "selective_update" in graph["selective_update.study.grid"]  # a lazy import counts
    state, cycles = {}, []

    def visit(node, trail):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(trail[trail.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_name_prefix_families_at_the_top_of_the_package():
    top = [p.stem for p in PACKAGE.glob("*.py")]
    for prefix in ("tf1_", "torch_", "timing", "new_class", "kernels"):
        assert not [s for s in top if s.startswith(prefix)], (prefix, top)


@pytest.mark.parametrize("path", MODULES, ids=_rel)
def test_no_private_reach_ins_across_modules(path):
    """Modules call each other's public names only (no `core._check`, `runner._Trainer`)."""
    tree = ast.parse(path.read_text())
    siblings = {p.stem for p in MODULES} | {p.parent.name for p in MODULES}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in siblings | {"su", "su_torch"} and node.attr.startswith("_")
                and not node.attr.startswith("__")):
            pytest.fail(f"{_rel(path)}:{node.lineno}: {node.value.id}.{node.attr}")
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith(
                "selective_update")):
            private = [a.name for a in node.names if a.name.startswith("_")
                       and not a.name.startswith("__")]
            assert not private, f"{_rel(path)}:{node.lineno} imports private {private}"


def test_importing_the_package_and_its_cli_loads_no_framework():
    code = ("import sys, selective_update, selective_update.__main__ as m; m.build_parser(); "
            "import selective_update.core, selective_update.algorithms.nullspace, "
            "selective_update.datasets; "
            "print(sorted(k for k in ('torch', 'tensorflow', 'keras') if k in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


RUNNER_SURFACE = ("configure", "make_steps", "run", "train", "seed_demo", "project_step")


def test_both_runners_have_the_same_public_surface_and_signatures():
    import selective_update.tf1 as tf1
    import selective_update.torch as torch_port

    assert (tf1.NAME, torch_port.NAME) == su.FRAMEWORKS
    for name in RUNNER_SURFACE:
        a, b = getattr(tf1, name), getattr(torch_port, name)
        assert inspect.signature(a) == inspect.signature(b), (name, inspect.signature(a),
                                                              inspect.signature(b))


def test_both_ops_fill_the_contract_with_the_same_signatures():
    from selective_update.algorithms.ops import Ops
    from selective_update.tf1 import ops as tf1_ops
    from selective_update.torch import ops as torch_ops

    members = [n for n in vars(Ops) if not n.startswith("_")]
    assert len(members) >= 15
    for name in members:
        contract = inspect.signature(getattr(Ops, name))
        params = list(contract.parameters.values())[1:]  # without self
        for ops in (tf1_ops, torch_ops):
            assert callable(getattr(ops, name, None)), (ops.__name__, name)
            got = list(inspect.signature(getattr(ops, name)).parameters.values())
            assert [p.name for p in got] == [p.name for p in params], (ops.__name__, name)


def test_both_trainers_fill_the_training_contract_with_the_same_signatures():
    from selective_update.algorithms.training import Trainer
    from selective_update.tf1.runner import Trainer as Tf1Trainer, Graph
    from selective_update.torch.runner import Trainer as TorchTrainer

    members = [n for n, v in vars(Trainer).items() if callable(v) and not n.startswith("_")]
    assert {"prepare", "step", "forward", "gradients", "apply", "snapshot"} <= set(members)
    for name in members:
        contract = [p.name for p in inspect.signature(getattr(Trainer, name)).parameters.values()]
        # tf1 builds take_step's ops in its Graph; the loop's side is its Trainer
        for cls in (TorchTrainer, Tf1Trainer if hasattr(Tf1Trainer, name) else Graph):
            assert callable(getattr(cls, name, None)), (cls.__module__, name)
            got = [p.name for p in inspect.signature(getattr(cls, name)).parameters.values()]
            assert got == contract, (cls.__module__, name, got, contract)


RUNNERS = ("torch/runner.py", "tf1/runner.py")
# What a strategy's description says is read in algorithms/ only: a runner that looked at these
# would decide a step itself.
STRATEGY_FIELDS = {"trains", "loss", "after", "projected", "corrected", "subspace", "solves",
                   "starts", "rule"}


def _runner_findings(source):
    """Return what a runner module must not hold: the loop's functions, a timer, references to
    a strategy's fields or to STRATEGIES' fields, and comparisons with a strategy's name."""
    tree, found = ast.parse(source), []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in (
                "train", "run", "make_steps", "project_step"):
            found.append(f"defines {node.name}")
        if isinstance(node, ast.Attribute) and node.attr == "perf_counter":
            found.append("times steps")
        if (isinstance(node, ast.Attribute) and node.attr in STRATEGY_FIELDS
                and isinstance(node.value, (ast.Name, ast.Subscript))
                and "config" not in ast.unparse(node.value)):
            found.append(f"reads {ast.unparse(node)}")
        if isinstance(node, ast.Compare):
            names = [c.value for c in ast.walk(node) if isinstance(c, ast.Constant)]
            if set(names) & set(su.STRATEGIES):
                found.append(f"compares with a strategy's name: {ast.unparse(node)}")
    return found


@pytest.mark.parametrize("runner", RUNNERS)
def test_runners_hold_neither_the_loop_nor_a_branch_on_a_strategy(runner):
    source = (PACKAGE / runner).read_text()
    assert _runner_findings(source) == []
    assert len(source.splitlines()) <= 200, runner


def test_the_runner_rule_can_fail():
    stray = ("def train(config):\n    import time; time.perf_counter()\n"
             "    if s.loss == 'masked' or strategy == 'null_space':\n        pass\n")
    assert len(_runner_findings(stray)) == 4


def test_public_faces_export_what_users_call_only():
    import types

    import selective_update.core as core

    for face in (su, core):
        for name in face.__all__:
            value = getattr(face, name)
            assert not isinstance(value, types.ModuleType), (face.__name__, name)
            assert not (name.isupper() and hasattr(settings, name)), (face.__name__, name)
    assert "run" in su.__all__ and len(su.__all__) <= 20 and len(core.__all__) <= 25
    assert su.core.RunConfig and su.core.runs.RESTORE_TOL  # what left the faces still imports


def test_settings_are_the_one_home():
    """Values that used to be copied now come from settings (the copies are gone)."""
    from selective_update import datasets
    from selective_update.core import verdicts

    assert verdicts.BATCH_EXACT_TOL is settings.BATCH_EXACT_TOL
    assert su.core.runs.RESTORE_TOL is settings.RESTORE_TOL
    assert datasets.DATA_DIR == settings.DATA_DIR
    for path in MODULES:
        if path.name == "settings.py":
            continue
        text = path.read_text()
        for name in ("DEFAULT_GRID = ", "QUICK_GRID = ", "RESTORE_TOL = ", "BATCH_EXACT_TOL = ",
                     "FIRST_ORDER_RATIO = ", "REPORTS_DIR = "):
            assert name not in text, f"{_rel(path)} defines {name.strip(' =')} again"


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
