"""Reruns are byte-identical, an interrupted study keeps the old reports, reports view offline."""
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from quick_study import ROOT, SUBSET, run_study

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def _sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.mark.slow
def test_quick_study_twice_gives_byte_identical_results(quick_reports, tmp_path):
    again = run_study(tmp_path / "reports", "--scenarios")
    assert again.returncode == 0, again.stderr[-3000:]
    first, second = quick_reports / "results.csv", tmp_path / "reports" / "results.csv"
    assert first.stat().st_size > 1000
    assert _sha(first) == _sha(second)


@pytest.mark.slow
def test_interrupted_study_leaves_previous_reports_intact(quick_reports, tmp_path):
    out = tmp_path / "reports"
    shutil.copytree(quick_reports, out)
    before = {p.relative_to(out): _sha(p) for p in out.rglob("*") if p.is_file()}
    cmd = [sys.executable, "-m", "selective_update", "study", *SUBSET, "--scenarios", "--out",
           str(out)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    time.sleep(8)  # kernels are running by now
    assert proc.poll() is None, "the study finished before it could be interrupted"
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=60)
    assert proc.returncode != 0
    after = {p.relative_to(out): _sha(p) for p in out.rglob("*") if p.is_file()}
    assert after == before  # nothing lost, nothing half-written


def _hrefs(html):
    import re

    return re.findall(r"""(?:src|href)\s*=\s*["'](https?:[^"']*)""", html)


@pytest.mark.slow
def test_reports_have_no_external_references(quick_reports):
    pages = list(quick_reports.rglob("*.html"))
    assert len(pages) >= 3
    for page in pages:
        assert not _hrefs(page.read_text()), page


@pytest.mark.slow
@pytest.mark.browser
def test_reports_render_offline_in_headless_chromium(quick_reports):
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is missing; .ci/run installs it (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    shots = ROOT / "reports" / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    run_page = sorted((quick_reports / "runs").glob("*.html"))[0]
    pages = {"index": quick_reports / "index.html", "run": run_page}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        context = browser.new_context(offline=True, viewport={"width": 1280, "height": 900})
        for name, path in pages.items():
            page = context.new_page()
            external, errors = [], []
            page.on("request", lambda r: None if r.url.startswith(("file:", "data:"))
                    else external.append(r.url))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(path.as_uri(), wait_until="load")
            widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.naturalWidth)")
            text = page.inner_text("body")
            page.screenshot(path=str(shots / f"{name}.png"), full_page=False)
            assert not external, f"{name}: requests left the file: {external[:3]}"
            assert not errors, f"{name}: console errors: {errors[:3]}"
            assert widths and all(w > 0 for w in widths), f"{name}: broken images {widths}"
            assert "promised" in text.lower() and "measured" in text.lower(), name
        browser.close()


@pytest.mark.slow
def test_quick_study_renders_every_scenario_page(quick_reports):
    import argparse

    import pandas as pd

    from selective_update import settings
    from selective_update.study import cli, results

    args = argparse.Namespace(quick=True, scenarios=list(settings.SCENARIO_NOTEBOOKS))
    for name in settings.SCENARIO_NOTEBOOKS:
        for task in cli.scenario_tasks(name, quick=True):  # one page per part (hidden width)
            page = (quick_reports / task.output).with_suffix(".html")
            assert page.is_file(), task.name
            text = page.read_text()
            assert "An Exception was encountered" not in text, task.name
            # no progress bar on the pages (the batch's kernels have PROGRESS_ENV=0)
            assert "it/s]" not in text and "widget-view+json" not in text, task.name
    assert args.scenarios
    # the four CSVs of the two scenarios, combined from their parts, with >= 2 seeds
    rows = results.read_optional(quick_reports, "new_class.csv")
    summary = results.read_optional(quick_reports, "new_class_summary.csv")
    assert rows.seed.nunique() >= 2 and (summary.n_seeds >= 2).all() and summary.pareto.any()
    assert {"joint", "fine-tuning"} <= set(summary.setting)
    sequence = results.read_optional(quick_reports, "class_sequence.csv")
    acc_bwt = results.read_optional(quick_reports, "class_sequence_summary.csv")
    assert sequence.seed.nunique() >= 2 and (acc_bwt.n_seeds >= 2).all()
    assert {"joint", "fine-tuning"} <= set(acc_bwt.setting)
    assert isinstance(acc_bwt, pd.DataFrame) and acc_bwt.acc_mean.notna().all()
    # the rotations' two CSVs, combined from the framework parts: the full 20-task protocol
    rotated = results.read_optional(quick_reports, "rotations.csv")
    rotated_summary = results.read_optional(quick_reports, "rotations_summary.csv")
    assert set(rotated.framework) == {"torch", "tf1"} and rotated.task.max() == 19
    assert {"single", "iid", "ewc", "gem"} <= set(rotated_summary.row)
    assert rotated_summary.acc_mean.between(0.1, 1).all()
    status = results.load_reports(quick_reports)[2]
    assert (status.status == "ok").all(), status[status.status != "ok"]
