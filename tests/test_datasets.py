"""The two-command set-up: pins, environment.yml, CI entry, and data/ regenerable byte for byte."""
import re
import tomllib

import pytest
from pathlib import Path

import selective_update as su
from selective_update import datasets

ROOT = Path(__file__).resolve().parents[1]


def _pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_dependency_is_pinned_exactly():
    project = _pyproject()["project"]
    deps = project["dependencies"] + [d for ds in project["optional-dependencies"].values()
                                      for d in ds]
    loose = [d for d in deps if not re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[0-9][0-9A-Za-z.+]*", d)]
    assert not loose, f"not pinned with ==: {loose}"
    names = {d.split("==")[0].lower(): d.split("==")[1] for d in deps}
    assert names["torch"] == "2.13.0" and names["tensorflow"] == "2.21.0"
    for needed in ("numpy", "pandas", "seaborn", "papermill", "nbconvert", "ipykernel",
                   "jupyterlab", "pytest", "dask", "distributed"):
        assert needed in names, needed


def test_environment_yml_installs_the_same_pins():
    text = (ROOT / "environment.yml").read_text()
    python = re.search(r"^\s*-\s*python\s*([<>=!][^\s#]*)\s*(#.*)?$", text, re.M).group(1)
    assert python == _pyproject()["project"]["requires-python"].replace(" ", "")
    assert re.search(r"^\s*-\s*pip\s*$", text, re.M), "pip must be a conda dependency"
    pip_lines = re.findall(r"^\s{4,}-\s*(.+?)\s*$", text, re.M)
    # only the package itself: every pin comes from pyproject.toml, so the two cannot disagree
    assert pip_lines == ["-e .[test]"]


def test_ci_runs_make_test_and_make_builds_the_env():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci and "set -e" in ci
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^\$\(STAMP\): pyproject.toml", makefile, re.M)
    for target in ("study:", "test:", "bench:", "data:", "lab:"):
        assert re.search(rf"^{target} \$\(STAMP\)", makefile, re.M), target
    assert "rc -eq 5" in makefile  # pytest's "no tests collected" fails the run


def test_data_files_regenerate_identically(tmp_path):
    written = datasets.write_data(tmp_path)
    assert sorted(p.name for p in written) == ["digits.csv", "toy.csv"]
    for path in written:
        committed = ROOT / "data" / path.name
        assert committed.read_bytes() == path.read_bytes(), f"{committed} differs; run make data"


def test_toy_file_is_the_seed_data_exactly():
    loaded, made = datasets.load_dataset("toy"), su.make_toy_data()
    for field in ("x", "y", "x_eval", "y_eval"):
        assert (getattr(loaded, field) == getattr(made, field)).all()


def test_digits_split_and_pretraining():
    setup = datasets.prepare("digits", hidden=16, seed=0)
    assert setup.data.x.shape == (32, 64) and setup.data.x_eval.shape == (597, 64)
    assert setup.keep == tuple(range(9)) and setup.train == (9,)
    out = su.core.forward(setup.params, setup.data.x_eval)[1]
    assert datasets.accuracy(out, setup.data.y_eval, range(10)) > 0.8  # fitted on every class


# --- damaged data is named, not traced -----------------------------------------------------------

def _damaged(tmp_path, how):
    """Copy data/ into tmp_path with digits.csv damaged one way; return the folder."""
    for name in ("toy.csv", "digits.csv"):
        (tmp_path / name).write_bytes((ROOT / "data" / name).read_bytes())
    path, raw = tmp_path / "digits.csv", (ROOT / "data" / "digits.csv").read_bytes()
    if how == "missing":
        path.unlink()
    elif how == "truncated":  # the case: its first 5,000 bytes
        path.write_bytes(raw[:5000])
    elif how == "header":
        path.write_bytes(raw.replace(b"split,x0,", b"split,x_0,", 1))
    elif how == "value":  # same shape, one digit changed
        at = raw.index(b"\n") + 10
        path.write_bytes(raw[:at] + (b"9" if raw[at:at + 1] != b"9" else b"8") + raw[at + 1:])
    return tmp_path


@pytest.mark.parametrize("how, reason", [
    ("missing", "is missing"), ("truncated", "it has 20 rows, expected 1797"),
    ("header", "its column 2 is 'x_0', expected 'x0'"),
    ("value", "its SHA-256 differs from settings.DATA_FILES")])
def test_a_damaged_data_file_is_one_line_naming_it_and_the_fix(tmp_path, how, reason):
    folder = _damaged(tmp_path, how)
    for check in (lambda: datasets.check_file("digits", folder),
                  lambda: datasets.load_dataset("digits", folder)):
        with pytest.raises(datasets.DataFileError) as info:
            check()
        message = str(info.value)
        assert str(folder / "digits.csv") in message and reason in message
        assert message.endswith("regenerate it with `make data`") and "\n" not in message
    assert datasets.check_file("toy", folder) == folder / "toy.csv"  # the other file is fine


def test_the_committed_data_files_pass_their_checks():
    for name in datasets.DATASETS:
        assert datasets.check_file(name) == ROOT / "data" / f"{name}.csv"
