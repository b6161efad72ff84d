"""The Pythons we support: requires-python in pyproject.toml says which, pip proves the exact pins
install on each (without that Python being here), and make refuses any other before building.

The registry test asks PyPI itself (https://pypi.org/simple), with pip's configuration files and
PIP_* variables switched off, so no local wheel directory, extra index or constraint file can
stand in for it; it checks that every file pip picked came from PyPI's file host.
"""
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PYPI = "https://pypi.org/simple"
PYPI_FILES = ("https://files.pythonhosted.org/", "https://pypi.org/")
PIP_DEADLINE_S = 600  # all three together; about 2 minutes here


def _project():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _requires_python():
    return SpecifierSet(_project()["requires-python"])


def _admitted(spec):
    """Every 3.X that requires-python admits (it must have an upper bound to be checkable)."""
    assert any(s.operator in ("<", "<=") for s in spec), f"requires-python {spec}: no upper bound"
    return [f"3.{m}" for m in range(0, 40) if spec.contains(Version(f"3.{m}"))]


def _pins():
    project = _project()
    return project["dependencies"] + project["optional-dependencies"]["test"]


def test_requires_python_admits_311_312_313():
    assert _admitted(_requires_python()) == ["3.11", "3.12", "3.13"]


# --- the pins resolve on every admitted Python -------------------------------------------------

@pytest.fixture(scope="module")
def pypi():
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
    except OSError as e:
        pytest.skip(f"PyPI (pypi.org:443) not reachable: {e}")


def _pip_env():
    """No pip configuration: no config file, no PIP_* variable (find-links, extra index, ...)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    return env


@pytest.mark.registry
def test_exact_pins_resolve_with_wheels_on_pypi(pypi, tmp_path):
    """Every admitted Python at once (pip waits on the network), within one deadline."""
    pins = _pins()
    requirements = tmp_path / "pins.txt"
    requirements.write_text("\n".join(pins) + "\n")
    running = {}
    for version in _admitted(_requires_python()):
        report, log = tmp_path / f"report-{version}.json", tmp_path / f"pip-{version}.log"
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
               "--only-binary=:all:", "--python-version", version, "--target",
               str(tmp_path / f"t-{version}"), "--index-url", PYPI, "--no-cache-dir",
               "--disable-pip-version-check", "--quiet", "--report", str(report), "-r",
               str(requirements)]
        with open(log, "w") as stderr:  # a file, not a pipe: no pip waits on another's reader
            running[version] = (subprocess.Popen(cmd, env=_pip_env(), stdout=subprocess.DEVNULL,
                                                 stderr=stderr), report, log)
    deadline = time.monotonic() + PIP_DEADLINE_S
    try:
        for version, (proc, _, log) in running.items():
            try:
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pytest.fail(f"pip did not resolve the pins for Python {version} within "
                            f"{PIP_DEADLINE_S} s:\n{log.read_text()[-3000:]}")
    finally:
        for proc, _, _ in running.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for version, (proc, report, log) in running.items():
        assert proc.returncode == 0, (f"the pins do not resolve for Python {version} with wheels "
                                      f"only:\n{log.read_text()[-3000:]}")
        picked = {item["metadata"]["name"].lower().replace("_", "-"): item
                  for item in json.loads(report.read_text())["install"]}
        for pin in pins:
            name, pinned = pin.split("==")
            assert picked[name.lower()]["metadata"]["version"] == pinned, (version, pin)
        not_pypi = [item["download_info"]["url"] for item in picked.values()
                    if not item["download_info"]["url"].startswith(PYPI_FILES)]
        assert not not_pypi, f"Python {version}: files that did not come from PyPI: {not_pypi}"


# --- make refuses an unsupported Python before it builds anything ------------------------------

def _fake_python(path, version):
    """A `python` that answers --version with `version` and records every call it gets."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'#!/bin/sh\necho "$@" >> "{path}.calls"\necho "Python {version}"\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def repo(tmp_path):
    """What make reads, copied: the real checkout and its .venv are never touched."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    copy = tmp_path / "repo"
    (copy / "tools").mkdir(parents=True)
    for name in ("Makefile", "pyproject.toml", "tools/check-python.sh"):
        shutil.copy2(ROOT / name, copy / name)
    return copy


def _make(repo, *args, path_first=None):
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHON", "MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    if path_first is not None:
        env["PATH"] = f"{path_first}{os.pathsep}{env['PATH']}"
    return subprocess.run(["make", "-C", str(repo), "--no-print-directory", *args], env=env,
                          capture_output=True, text=True, timeout=60)


def _files(repo):
    return sorted(str(p.relative_to(repo)) for p in repo.rglob("*"))


SUPPORTED = "supported: 3.11, 3.12, 3.13"


@pytest.mark.parametrize("target", ["test", "study", "test-fast"])
def test_make_stops_on_python_3_10_on_path(repo, tmp_path, target):
    fake = _fake_python(tmp_path / "bin" / "python3", "3.10.12")
    before = _files(repo)
    done = _make(repo, target, path_first=fake.parent)
    assert done.returncode != 0
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and done.stdout == "", done.stdout + done.stderr
    assert "found Python 3.10.12 at python3; " + SUPPORTED in lines[0]
    assert "PYTHON=python3.X" in lines[0]
    assert not (repo / ".venv").exists() and _files(repo) == before
    assert Path(f"{fake}.calls").read_text() == "--version\n"  # asked its version, nothing else


def test_make_stops_on_python_3_14_given_as_PYTHON(repo, tmp_path):
    fake = _fake_python(tmp_path / "bin" / "python3.14", "3.14.0")
    done = _make(repo, "test", f"PYTHON={fake}")
    assert done.returncode != 0 and len(done.stderr.splitlines()) == 1, done.stderr
    assert f"found Python 3.14.0 at {fake}; {SUPPORTED}" in done.stderr
    assert not (repo / ".venv").exists()


def test_make_stops_on_a_missing_python(repo):
    done = _make(repo, "study", "PYTHON=python3.99-not-here")
    assert done.returncode != 0 and len(done.stderr.splitlines()) == 1, done.stderr
    assert "found no Python 3 at python3.99-not-here; " + SUPPORTED in done.stderr
    assert not (repo / ".venv").exists()


def test_make_stops_on_a_venv_built_by_python_3_10(repo, tmp_path):
    _fake_python(repo / ".venv" / "bin" / "python", "3.10.12")
    _fake_python(tmp_path / "bin" / "python3", "3.12.3")  # what PYTHON says no longer matters
    done = _make(repo, "test", path_first=tmp_path / "bin")
    assert done.returncode != 0 and len(done.stderr.splitlines()) == 1, done.stderr
    assert "found Python 3.10.12 in .venv; " + SUPPORTED in done.stderr
    assert "remove .venv" in done.stderr
    assert not (repo / ".venv" / ".installed").exists()


@pytest.mark.parametrize("minor", range(8, 17))
def test_make_check_follows_requires_python(repo, tmp_path, minor):
    """The Makefile's reading of requires-python agrees with pip's for every 3.X around it."""
    fake = _fake_python(tmp_path / "bin" / f"python3.{minor}", f"3.{minor}.1")
    done = _make(repo, "check-python", f"PYTHON={fake}")
    assert (done.returncode == 0) == _requires_python().contains(Version(f"3.{minor}.1")), \
        done.stderr
    assert not (repo / ".venv").exists()


def test_PYTHON_picks_the_interpreter_that_builds_the_venv(repo, tmp_path):
    fake = _fake_python(tmp_path / "bin" / "python3.12", "3.12.3")
    done = _make(repo, "-n", "test", f"PYTHON={fake}")
    assert done.returncode == 0, done.stderr
    assert f"{fake} -m venv .venv" in done.stdout
    assert not (repo / ".venv").exists()
