"""The notebooks: hygiene (no kernel), then papermill smoke runs with tiny parameters (slow)."""
import json
import sys
from pathlib import Path

import nbformat
import pandas as pd
import papermill as pm
import pytest

from selective_update import settings
from selective_update.study import grid, render, results

import processes

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
NAMES = ["00_seed_answer.ipynb", "strategy.ipynb", "summary.ipynb",
         *settings.SCENARIO_NOTEBOOKS.values()]
REQUIRED = ["dataset", "strategy", "framework", "optimizer", "weight_decay", "warm_start_steps",
            "lr", "seed", "step", "loss", "train_loss", "drift_train", "drift_eval", "promise"]
TINY = dict(optimizers=["sgd", "adam"], weight_decays=[0.0], warm_start_steps=[0, 1], steps=2,
            seeds=[0])


# --- hygiene: what git holds -------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_committed_clean_with_one_documented_parameters_cell(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:40]
    params = pm.inspect_notebook(str(NOTEBOOKS / name))
    assert params, "papermill finds no parameters"
    import ast

    assigned = [t.target.id if isinstance(t, ast.AnnAssign) else t.targets[0].id
                for t in ast.parse(tagged[0].source).body]
    assert list(params) == assigned  # papermill's parser sees every parameter
    undocumented = [p for p, info in params.items() if not info["help"].strip()]
    assert undocumented == []


def test_strategy_parameters_match_the_validator_and_the_default_grid():
    params = pm.inspect_notebook(str(NOTEBOOKS / "strategy.ipynb"))
    import inspect

    accepted = set(inspect.signature(grid.check_params).parameters)
    assert set(params) == accepted
    defaults = {name: eval(info["default"]) for name, info in params.items()}  # noqa: S307
    for key, value in settings.DEFAULT_GRID.items():
        assert defaults[key] == value, key
    # The defaults are themselves valid (a bare papermill run works).
    grid.check_params(**defaults)


# --- papermill smoke runs (each starts a kernel) --------------------------------------------------

def _execute(name, out, **parameters):
    return pm.execute_notebook(str(NOTEBOOKS / name), str(out), parameters=parameters,
                               kernel_name="python3", progress_bar=False, execution_timeout=300)


def _check_rows(path, dataset, strategy):
    rows = pd.read_csv(path)
    assert set(REQUIRED) <= set(rows.columns)
    n_runs = 2 * len(TINY["optimizers"]) * len(TINY["warm_start_steps"]) * len(TINY["seeds"])
    assert len(rows) == n_runs * (TINY["steps"] + 1)
    assert set(rows.dataset) == {dataset} and set(rows.strategy) == {strategy}
    assert set(rows.framework) == {"tf1", "torch"}
    assert rows[REQUIRED].notna().all().all()
    assert (rows[rows.step == 0].drift_train == 0).all()
    key = ["framework", "optimizer", "weight_decay", "warm_start_steps", "seed", "step"]
    assert not rows.duplicated(key).any()
    return rows


def _errors(nb):
    return [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]


@pytest.mark.slow
def test_strategy_notebook_toy_writes_its_rows_and_renders_offline(tmp_path):
    nb = _execute("strategy.ipynb", tmp_path / "toy.ipynb", strategy="null_space", dataset="toy",
                  results_dir=str(tmp_path / "rows"), **TINY)
    assert not _errors(nb)
    rows = _check_rows(tmp_path / "rows" / "toy-null_space.csv", "toy", "null_space")
    assert set(rows.promise) == {"first_order"}
    assert rows.drift_ratio.notna().all()  # the lr/2 run was made for every run
    sweep = pd.read_csv(tmp_path / "rows" / "toy-null_space-lr.csv")
    assert sorted(sweep.lr.unique()) == sorted(0.1 * f for f in settings.LR_FACTORS)
    html = render.render_html(tmp_path / "toy.ipynb", tmp_path / "toy.html").read_text()
    assert render.external_references(html) == []
    assert html.count("data:image/png;base64,") >= 2  # drift and loss figures inlined
    assert "injected-parameters" in html and "null_space" in html


@pytest.mark.slow
def test_strategy_notebook_by_hand_from_notebooks_folder_on_digits(tmp_path):
    """`papermill strategy.ipynb out.ipynb -p ...` from notebooks/: data comes via the package."""
    out = tmp_path / "digits.ipynb"
    cmd = [str(Path(sys.executable).parent / "papermill"), "strategy.ipynb", str(out),
           "-p", "strategy", "split_head", "-p", "dataset", "digits",
           "-p", "results_dir", str(tmp_path), "-y", json.dumps(TINY), "--no-progress-bar"]
    done = processes.run(cmd, 300, cwd=NOTEBOOKS)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = _check_rows(tmp_path / "digits-split_head.csv", "digits", "split_head")
    assert rows.holds.all() and (rows.drift_eval == 0).all()  # split_head: exact
    assert rows.acc_keep.notna().all()  # digits: held-out accuracy on the kept classes
    text = out.read_text()
    assert "kept classes before" in text


@pytest.mark.slow
def test_seed_answer_notebook_shows_both_frameworks_side_by_side(tmp_path):
    nb = _execute("00_seed_answer.ipynb", tmp_path / "seed.ipynb")
    assert not _errors(nb)
    text = json.dumps(nb)
    for phase in ("train_op2", "train_op12", "train_op_all", "train_op_compensated"):
        assert phase in text
    assert "GradientDescentOptimizer" in text  # the answer's code is shown
    assert "kept exactly" in text  # train_op2 keeps output 1 bitwise, measured
    assert "grad_ys=G_prime" in text  # the direct answer's code is shown too
    # G' = [-alpha, -1]: alpha per sample in both frameworks, and output 2 rose on every sample
    assert "alpha, output 1" in text and "rose by" in text and "fell on" not in text


@pytest.mark.slow
@pytest.mark.parametrize("name, value, match", [
    ("dataset", "digit", "dataset: got 'digit'; allowed: toy, digits"),
    ("optimizers", [], "optimizers: got []; allowed: "),
    ("train", [0], "train: got [0]; allowed: outputs disjoint from keep"),
    ("lr", -1, "lr: got -1; allowed: a finite number > 0"),
], ids=["dataset-typo", "optimizers-empty", "train-overlaps-keep", "lr-negative"])
def test_bad_parameter_through_papermill_fails_naming_it(tmp_path, name, value, match):
    with pytest.raises(pm.PapermillExecutionError) as info:
        _execute("strategy.ipynb", tmp_path / "bad.ipynb", **{name: value})
    assert info.value.ename == "ValueError"
    assert match in str(info.value)
    # The run stopped at the check: no training cell ran.
    nb = nbformat.read(tmp_path / "bad.ipynb", as_version=4)
    ran = [c for c in nb.cells if c.cell_type == "code" and c.execution_count]
    assert "check_params" in ran[-1].source


@pytest.mark.slow
def test_summary_notebook_reads_the_rows_of_a_run(tmp_path):
    _execute("strategy.ipynb", tmp_path / "run.ipynb", strategy="masked_last_layer",
             dataset="toy", results_dir=str(tmp_path / "runs"),
             **{**TINY, "weight_decays": [0.0, 0.01]})
    tables = results.concat_results(tmp_path)
    status = pd.DataFrame([dict(name="toy-masked_last_layer", notebook="strategy.ipynb",
                                dataset="toy", strategy="masked_last_layer", status="ok",
                                error="", html="runs/toy-masked_last_layer.html", attempts=1,
                                seconds=1.0)])
    (tmp_path / "status.csv").write_text(results.csv_text(status))
    nb = _execute("summary.ipynb", tmp_path / "index.ipynb", reports_dir=str(tmp_path))
    assert not _errors(nb)
    text = json.dumps(nb)
    assert "Every run succeeded" in text and "toy-masked_last_layer" in text
    # masked_last_layer promises exact without decay and none with it: both rows are judged.
    assert set(tables["results.csv"].promise) == {"exact", "none"}


def test_a_correction_that_stops_above_tolerance_is_a_broken_promise_with_its_reason(tmp_path):
    """lr 1e6 (toy, sgd): Gauss-Newton cannot restore the batch in 12 steps; the grid says so."""
    import warnings

    import selective_update as su

    cfg = grid.check_params(strategy="null_space_corrected", dataset="toy", optimizers=["sgd"],
                            weight_decays=[0.0], warm_start_steps=[0], lr=1e6, steps=1,
                            seeds=[0], results_dir=str(tmp_path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = grid.run_grid(cfg)
    assert any(issubclass(w.category, su.RestoreWarning) for w in caught)
    assert not run.rows.holds.any()
    assert not run.verdicts.holds.any()
    assert run.verdicts.measured.str.startswith("Gauss-Newton stopped at residual").all()
    results.write_results(run, cfg["results_dir"])
    verdicts = results.read_optional(tmp_path, "toy-null_space_corrected-verdicts.csv")
    assert list(verdicts.columns) == results.VERDICT_COLUMNS and len(verdicts) == 2
