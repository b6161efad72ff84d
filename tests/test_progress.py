"""Progress bars: shown when a notebook runs by hand, silent in the study's batch."""
from selective_update import progress, settings
from selective_update.study import notebook_runner


def test_bars_show_by_hand_and_stay_off_the_batch(monkeypatch):
    monkeypatch.delenv(settings.PROGRESS_ENV, raising=False)
    assert progress.shown()
    bar = progress.progress(range(3), desc="by hand")
    assert not bar.disable and list(bar) == [0, 1, 2]
    monkeypatch.setenv(settings.PROGRESS_ENV, "0")
    assert not progress.shown()
    bar = progress.progress(range(3))
    assert bar.disable and list(bar) == [0, 1, 2]  # still iterates, draws nothing


def test_the_batch_workers_turn_bars_off_for_their_kernels(monkeypatch):
    environ = {}  # the worker's environment, which its kernels inherit
    monkeypatch.setattr(notebook_runner.os, "environ", environ)
    monkeypatch.setattr(notebook_runner.signal, "signal", lambda *a: None)  # no handlers here
    notebook_runner.worker_init()
    assert environ[settings.PROGRESS_ENV] == "0"
