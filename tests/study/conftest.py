"""Fixtures of the study's tests: a reports folder an earlier study left behind."""
from types import SimpleNamespace

import pytest

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
