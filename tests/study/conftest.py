"""Fixtures of the study's tests: a reports folder an earlier study left behind, the check
every published page passes, and one quick study the slow tests share."""
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from selective_update.study import render

from quick_study import run_study


@pytest.fixture(scope="session")
def quick_reports(tmp_path_factory, worker_id):
    """The reports of one quick study on SUBSET (embedded pool), run once per test run: the
    reliability tests read it and the cluster's run is compared with it. Tests must not change
    it (copy it first). Under pytest-xdist the first worker that asks builds it in the run's
    shared temporary folder and the others wait for it (a file lock; xdist_group would put the
    tests on one worker, but under pytest 9 xdist 3.8 groups nothing: it renames item._nodeid,
    which pytest 9 no longer reads). A failed build fails the others at once."""
    import fcntl

    root = tmp_path_factory.getbasetemp()
    root = root if worker_id == "master" else root.parent
    out, outcome = root / "quick_study" / "reports", root / "quick_study" / "outcome"
    with open(root / "quick_study.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not outcome.is_file():
            shutil.rmtree(out, ignore_errors=True)
            outcome.parent.mkdir(parents=True, exist_ok=True)
            try:
                done = run_study(out)
                failed = "" if done.returncode == 0 else done.stdout[-3000:] + done.stderr[-3000:]
            except BaseException as e:  # a timeout: the other workers fail at once, not again
                failed = f"{type(e).__name__}: {e}"
                raise
            finally:
                outcome.write_text(failed or "ok")
    if outcome.read_text() != "ok":
        pytest.fail(f"the shared quick study failed:\n{outcome.read_text()}")
    return out


PREVIOUS_REPORTS = {"index.html": "<html>previous</html>", "results.csv": "a,b\n1,2\n",
                    "runs/toy-split_head.html": "<html>previous run</html>"}


@pytest.fixture
def previous_reports(tmp_path):
    """reports/ with an earlier study's pages in it: .out is the folder, .assert_intact() checks
    that every page is still there as it was and that no staging folder is left."""
    out = tmp_path / "reports"
    (out / "runs").mkdir(parents=True)
    for name, text in PREVIOUS_REPORTS.items():
        (out / name).write_text(text)

    def assert_intact():
        for name, text in PREVIOUS_REPORTS.items():
            assert (out / name).read_text() == text
        assert not list(out.glob(".staging-*"))

    return SimpleNamespace(out=out, assert_intact=assert_intact)


def _offline_pages(out):
    """Check every page published under out: offline, no staging or worker path, no framework
    log noise; return the pages."""
    pages = sorted(Path(out).rglob("*.html"))
    assert pages
    for page in pages:
        text = page.read_text()
        assert render.external_references(text) == [], page
        assert 'src="http' not in text and "<script src=" not in text, page
        # the reader's paths, not the build's or a cluster worker's
        assert ".staging-" not in text and "su-dask-run-" not in text, page
        for noise in ("Not handling type", "cuInit", "cuda_platform", "TF-TRT"):
            assert noise not in text, (page, noise)
    return pages


@pytest.fixture
def offline_pages():
    """The check of published pages (_offline_pages), for a test to call on its reports."""
    return _offline_pages
