"""The study runner: parameter checks and CLI usage errors (no kernel), then the batch (slow)."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from selective_update import __main__ as cli
from selective_update import settings
from selective_update.study import cli as study
from selective_update.study import grid, notebook_runner, pool, render

ROOT = Path(__file__).resolve().parents[2]
GOOD = dict(strategy="split_head", dataset="toy", optimizers=["sgd"], weight_decays=[0.0],
            warm_start_steps=[0], lr=0.1, steps=1, seeds=[0])


# --- notebooks/strategy.ipynb's parameters: every bad value refused with one line ---------------

BAD_PARAMS = [
    ("strategy", "split-head", "strategy: got 'split-head'; allowed: all_params"),
    ("strategy", 3, "strategy: got 3"),
    ("dataset", "digit", "dataset: got 'digit'; allowed: toy, digits"),
    ("optimizers", [], "optimizers: got []; allowed: a non-empty list"),
    ("optimizers", "sgd", "optimizers: got 'sgd'; allowed: a non-empty list"),
    ("optimizers", ["sgd", "adagrad"], "optimizers: got ['sgd', 'adagrad']; allowed: a non-empty "
                                       "list of sgd, momentum, adam, adamw"),
    ("optimizers", ["sgd", "sgd"], "optimizers: got ['sgd', 'sgd']; allowed: a list without"),
    ("weight_decays", [-0.1], "weight_decays: got [-0.1]; allowed: a non-empty list of finite"),
    ("weight_decays", [float("nan")], "weight_decays: got [nan]"),
    ("warm_start_steps", [1.5], "warm_start_steps: got [1.5]; allowed: a non-empty list of int"),
    ("warm_start_steps", [], "warm_start_steps: got []"),
    ("lr", 0, "lr: got 0; allowed: a finite number > 0"),
    ("lr", "0.1", "lr: got '0.1'"),
    ("steps", 0, "steps: got 0; allowed: an integer >= 1"),
    ("steps", True, "steps: got True"),
    ("seeds", [-1], "seeds: got [-1]"),
    ("seeds", None, "seeds: got None; allowed: a non-empty list"),
    ("n_sample", 0, "n_sample: got 0; allowed: an integer in 1..8"),
    ("n_sample", 9, "n_sample: got 9; allowed: an integer in 1..8"),
    ("hidden", 0, "hidden: got 0; allowed: an integer >= 1"),
    ("keep", [2], "keep: got [2]; allowed: a non-empty list of distinct output indices in 0..1"),
    ("keep", [1], "train: got [1]; allowed: outputs disjoint from keep=[1]"),
    ("train", [], "train: got []"),
    ("dtype", "float16", "dtype: got 'float16'; allowed: float32, float64"),
    ("inject_fault", "boom", "inject_fault: got 'boom'; allowed: None, raise, hang, die"),
]


@pytest.mark.parametrize("name, value, message", BAD_PARAMS,
                         ids=[f"{n}={v!r}" for n, v, _ in BAD_PARAMS])
def test_check_params_refuses_bad_values_in_one_line(name, value, message):
    with pytest.raises(ValueError) as info:
        grid.check_params(**{**GOOD, name: value})
    text = str(info.value)
    assert text.startswith(message)
    assert "\n" not in text


def test_check_params_refuses_a_results_dir_that_is_a_file(tmp_path):
    path = tmp_path / "file.csv"
    path.write_text("x")
    with pytest.raises(ValueError, match="^results_dir: got .*allowed: None or a folder"):
        grid.check_params(**GOOD, results_dir=str(path))


def test_check_params_resolves_defaults_per_dataset():
    toy = grid.check_params(**GOOD)
    digits = grid.check_params(**{**GOOD, "dataset": "digits"})
    assert (toy["keep"], toy["train"], toy["n_sample"]) == ([0], [1], 8)
    assert (digits["keep"], digits["train"], digits["n_sample"]) == (list(range(9)), [9], 32)


def test_grids_cover_both_frameworks_settings_and_quick_is_smaller():
    full, quick = settings.DEFAULT_GRID, settings.QUICK_GRID
    assert full["optimizers"] == ["sgd", "momentum", "adam", "adamw"]
    assert full["weight_decays"] == [0.0, 0.01] and full["warm_start_steps"] == [0, 2]
    size = lambda g: (len(g["optimizers"]) * len(g["weight_decays"])  # noqa: E731
                      * len(g["warm_start_steps"]) * len(g["seeds"]) * g["steps"])
    assert size(quick) * 8 <= size(full)


# --- CLI usage errors: exit 2, one line, before any kernel, nothing written ----------------------

def _refuse_kernels(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("a kernel or worker was started for a refused command")

    monkeypatch.setattr(notebook_runner, "execute", boom)
    monkeypatch.setattr(pool.cf, "ProcessPoolExecutor", boom)


USAGE = [
    (["--strategies", "split_head", "nope"], "argument --strategies: invalid choice: 'nope'"),
    (["--datasets", "digit"],
     "argument --datasets: invalid choice: 'digit' (choose from 'toy', 'digits')"),
    (["--jobs", "0"], "argument --jobs: got 0; allowed: an integer >= 1"),
    (["--jobs", "two"], "argument --jobs: got 'two'; allowed: an integer >= 1"),
    (["--cell-timeout", "-1"], "argument --cell-timeout: got -1; allowed: a number of seconds > 0"),
    (["--inject-fault", "toy-split_head:explode"], "argument --inject-fault: got"),
    (["--quick", "--nope"], "unrecognized arguments: --nope"),
]


@pytest.mark.parametrize("argv, message", USAGE, ids=[" ".join(a) for a, _ in USAGE])
def test_cli_usage_error_exits_2_before_any_kernel_and_writes_nothing(
        argv, message, tmp_path, monkeypatch, capsys):
    _refuse_kernels(monkeypatch)
    out = tmp_path / "reports"
    with pytest.raises(SystemExit) as info:
        cli.main(["study", "--out", str(out), *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1]
    assert not out.exists()


def test_cli_out_that_is_a_file_exits_2_and_keeps_the_file(tmp_path, monkeypatch, capsys):
    _refuse_kernels(monkeypatch)
    out = tmp_path / "reports"
    out.write_text("not a folder")
    with pytest.raises(SystemExit) as info:
        cli.main(["study", "--out", str(out)])
    assert info.value.code == 2
    assert "argument --out: got" in capsys.readouterr().err
    assert out.read_text() == "not a folder"


def test_cli_inject_fault_for_a_run_not_in_the_study_exits_2(tmp_path, monkeypatch, capsys):
    _refuse_kernels(monkeypatch)
    out = tmp_path / "reports"
    code = cli.main(["study", "--out", str(out), "--strategies", "split_head",
                     "--inject-fault", "toy-null_space:raise"])
    assert code == 2
    assert "--inject-fault: got 'toy-null_space'" in capsys.readouterr().err
    assert not out.exists()


def test_cli_damaged_data_exits_2_naming_the_file_before_any_kernel(tmp_path, monkeypatch,
                                                                    capsys):
    from selective_update import datasets

    _refuse_kernels(monkeypatch)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "digits.csv").write_bytes(
        (ROOT / "data" / "digits.csv").read_bytes()[:5000])  # the truncated file
    monkeypatch.setattr(datasets, "DATA_DIR", tmp_path / "data")
    out = tmp_path / "reports"
    code = cli.main(["study", "--quick", "--datasets", "digits", "--scenarios", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0] == (f"python -m selective_update study: error: {tmp_path}/data/digits.csv is "
                      "damaged (it has 20 rows, expected 1797); regenerate it with `make data`")
    assert not out.exists()


def test_cli_exit_code_2_from_a_real_process(tmp_path):
    out = tmp_path / "reports"
    done = subprocess.run([sys.executable, "-m", "selective_update", "study", "--strategies",
                           "splithead", "--out", str(out)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2
    assert "invalid choice: 'splithead'" in done.stderr and "split_head" in done.stderr
    assert not out.exists()


# --- the batch (notebook_runner) -------------------------------------------------------------

@pytest.mark.slow
def test_batch_with_a_failing_run_and_a_kernel_retry_keeps_the_others(tmp_path, capsys,
                                                                         offline_pages):
    out = tmp_path / "reports"
    (out / "bench").mkdir(parents=True)
    (out / "bench" / "keep.txt").write_text("not the study's")  # others' files are left alone
    code = cli.main(["study", "--quick", "--jobs", "2", "--out", str(out), "--datasets", "toy",
                     "--scenarios",
                     "--strategies", "split_head", "masked_last_layer",
                     "--inject-fault", "toy-masked_last_layer:raise",
                     "--inject-fault", "toy-split_head:kernel_start"])
    captured = capsys.readouterr()
    assert code == 1
    assert "failed: toy-masked_last_layer" in captured.err
    assert "inject_fault='raise'" in captured.err
    assert "kernel start retried" in captured.out  # the line of toy-split_head
    assert "ok     toy-split_head" in captured.out
    assert "FAILED toy-masked_last_layer" in captured.out
    # The others ran and were written; the failed run still has its notebook and HTML.
    for name in ("toy-split_head", "toy-masked_last_layer"):
        assert (out / "runs" / f"{name}.ipynb").is_file()
        assert (out / "runs" / f"{name}.html").is_file()
    failed_html = (out / "runs" / "toy-masked_last_layer.html").read_text()
    assert "An Exception was encountered" in failed_html  # papermill's banner
    for name in ("00_seed_answer.html", "index.html", "results.csv", "lr_sweep.csv",
                 "status.csv"):
        assert (out / name).is_file(), name
    assert (out / "bench" / "keep.txt").read_text() == "not the study's"
    assert not list(out.glob(".staging-*"))
    status = pd.read_csv(out / "status.csv").set_index("name")
    assert status.loc["toy-masked_last_layer", "status"] == "failed"
    assert status.loc["toy-split_head", "status"] == "ok"
    assert status.loc["toy-split_head", "attempts"] == 2
    results = pd.read_csv(out / "results.csv")
    assert set(results.strategy) == {"split_head"}
    assert results.holds.all()
    # The summary lists the failure with a link to its report.
    index = (out / "index.html").read_text()
    assert 'href="runs/toy-masked_last_layer.html"' in index
    assert "<p>Every run succeeded.</p>" not in index and "<th>error</th>" in index
    # The summary opens with its answer: the first figure comes before the first table.
    assert 0 <= index.find("<img") < index.find("<table")
    offline_pages(out)


@pytest.mark.slow
def test_a_reused_kernel_starts_each_notebook_clean_and_gives_the_same_rows(tmp_path):
    params = dict(GOOD, strategy="null_space", optimizers=["sgd", "adam"], steps=2)
    runs = []
    try:
        for i in (1, 2):
            task = notebook_runner.Task(f"run{i}", "strategy.ipynb", f"run{i}/toy-null_space.ipynb",
                                params, "toy", "null_space", folder_param="results_dir")
            s = notebook_runner.execute(task, str(tmp_path), cell_timeout=300, reuse=True)
            assert s["status"] == "ok", s["error"]
            runs.append(notebook_runner._KERNEL["km"])
    finally:
        notebook_runner.shutdown_kernel()
    assert runs[0] is runs[1] and runs[0] is not None  # the same kernel ran both
    second = nbformat.read(tmp_path / "run2" / "toy-null_space.ipynb", as_version=4)
    counts = [c.execution_count for c in second.cells if c.cell_type == "code"]
    assert counts == list(range(1, len(counts) + 1))  # a fresh session: In [1], In [2], ...
    first_rows = (tmp_path / "run1" / "toy-null_space.csv").read_bytes()
    assert first_rows == (tmp_path / "run2" / "toy-null_space.csv").read_bytes()


@pytest.mark.slow
def test_a_hung_cell_fails_cleanly_naming_the_cell(tmp_path):
    task = notebook_runner.Task("toy-split_head", "strategy.ipynb", "runs/toy-split_head.ipynb",
                        dict(GOOD, inject_fault="hang"), "toy", "split_head")
    started = time.monotonic()
    s = notebook_runner.execute(task, str(tmp_path), cell_timeout=8)
    assert time.monotonic() - started < 120
    assert s["status"] == "failed"
    assert "exceeded the per-cell timeout of 8 s" in s["error"]
    assert "grid.run_grid(cfg)" in s["error"]  # the cell is named
    nb = nbformat.read(tmp_path / "runs" / "toy-split_head.ipynb", as_version=4)
    assert "papermill-error-cell-tag" in nb.cells[0].metadata.get("tags", [])
    html = (tmp_path / "runs" / "toy-split_head.html").read_text()
    assert "exceeded the per-cell timeout" in html


@pytest.mark.slow
def test_a_kernel_killed_mid_run_fails_cleanly_naming_the_cell(tmp_path):
    task = notebook_runner.Task("toy-split_head", "strategy.ipynb", "runs/toy-split_head.ipynb",
                        dict(GOOD, inject_fault="die"), "toy", "split_head")
    s = notebook_runner.execute(task, str(tmp_path), cell_timeout=120)
    assert s["status"] == "failed" and s["attempts"] == 1
    assert "lost its kernel" in s["error"] and "grid.run_grid(cfg)" in s["error"]
    html = (tmp_path / "runs" / "toy-split_head.html").read_text()
    assert "DeadKernelError" in html and render.external_references(html) == []


@pytest.mark.slow
def test_an_interrupted_study_leaves_the_previous_reports_readable(previous_reports):
    out = previous_reports.out
    proc = subprocess.Popen([sys.executable, "-m", "selective_update", "study", "--quick",
                             "--datasets", "toy", "--strategies", "split_head", "--scenarios",
                             "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not list(out.glob(".staging-*/runs/*.ipynb")) and time.monotonic() < deadline:
            time.sleep(0.2)  # wait until a kernel is running a notebook
        time.sleep(1)
        table = [line.split(None, 2) for line in subprocess.run(
            ["ps", "-eo", "pid=,ppid=,sid="], capture_output=True, text=True).stdout.splitlines()]
        session = {int(p) for p, _, sid in table if int(sid) == proc.pid}
        kernels = {int(p) for p, ppid, _ in table if int(ppid) in session} - session
        assert kernels, "no kernel was running when the study was interrupted"
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
        assert time.monotonic() - started < 10  # workers end at once, with their kernels
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0
    assert "interrupted" in output
    previous_reports.assert_intact()
    # No worker (the study's session) and no kernel (their own sessions) outlives the study.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        alive = [pid for pid in session | kernels if _alive(pid)]
        if not alive:
            break
        time.sleep(0.5)
    assert alive == []


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie (not yet reaped) is dead
        return f.read().split(") ", 1)[1][0] != "Z"


# --- the scenarios' parts: one papermill run per hidden width, combined afterwards --------------

def _plan(quick, scenarios):
    import argparse

    from selective_update import core, datasets

    args = argparse.Namespace(strategies=["split_head"], datasets=list(datasets.DATASETS),
                              scenarios=scenarios, quick=quick, inject_fault=[])
    assert set(core.STRATEGIES) >= set(args.strategies)
    return study.plan(args)


@pytest.mark.parametrize("quick", [False, True])
def test_plan_splits_the_scenarios_into_one_run_per_part(quick):
    tasks = _plan(quick, list(settings.SCENARIO_NOTEBOOKS))
    for name, (parameter, full, small) in settings.SCENARIO_PARTS.items():
        values = (small if quick else full)[parameter]
        if parameter == "hidden":
            values = sorted(values, reverse=True)
        parts = [t for t in tasks if t.notebook == settings.SCENARIO_NOTEBOOKS[name]]
        if parameter != "hidden":  # the plan orders them by name
            parts = sorted(parts, key=lambda t: values.index(t.parameters[parameter][0]))
        assert [t.parameters for t in parts] == [{"quick": quick, parameter: [v]}
                                                 for v in values]
        labels = [f"h{v}" if parameter == "hidden" else v for v in values]
        assert [t.output for t in parts] == [f"runs/{name}-{label}/{name}.ipynb"
                                             for label in labels]
        assert all(t.folder_param == "reports_dir" for t in parts)
    rotations = sorted(t.name for t in tasks if t.notebook == "rotations.ipynb")
    assert rotations == ["rotations-tf1", "rotations-torch"]
    scenario = set(settings.SCENARIO_NOTEBOOKS.values())
    kinds = [t.notebook in scenario for t in tasks]
    assert kinds == sorted(kinds, reverse=True)  # the scenarios (the heaviest) go first
    assert len(tasks) == len(set(t.output for t in tasks))  # no two runs share a page


def test_combine_parts_keeps_the_parts_that_ran(tmp_path):
    from selective_update.study import results

    for width, rows in ((16, "16,a\n16,b\n"), (64, "64,c\n"), (128, None)):
        part = tmp_path / "runs" / f"new_class-h{width}"
        part.mkdir(parents=True)
        if rows:  # the 128 part failed before writing anything
            (part / "new_class.csv").write_text("hidden,strategy\n" + rows)
    paths = results.combine_parts(tmp_path, "new_class")
    assert paths == [tmp_path / "new_class.csv"]
    assert paths[0].read_text() == "hidden,strategy\n16,a\n16,b\n64,c\n"
    (tmp_path / "runs" / "new_class-h128" / "new_class.csv").write_text("hidden,other\n128,d\n")
    with pytest.raises(ValueError, match="different columns"):
        results.combine_parts(tmp_path, "new_class")


def test_combine_parts_follows_the_labels_and_keeps_a_shared_line_once(tmp_path):
    from selective_update.study import results

    for label, rows in (("torch", "sweep,a\ntorch,b\n"), ("tf1", "sweep,a\ntf1,c\n")):
        part = tmp_path / "runs" / f"rotations-{label}"
        part.mkdir(parents=True)
        (part / "rotations_sweep.csv").write_text("kind,value\n" + rows)
    paths = results.combine_parts(tmp_path, "rotations", ["torch", "tf1"])
    assert paths[0].read_text() == "kind,value\nsweep,a\ntorch,b\ntf1,c\n"
