"""`study --cluster`: the batch on Dask. Refusals first (no cluster), then LocalCluster runs (slow).

The slow tests start real LocalClusters: a failing notebook and a worker killed mid-run in one
study, kernel reuse on a worker, an interrupted study, and the quick study byte-identical to the
embedded pool's.
"""
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from selective_update import __main__ as cli
from selective_update import settings
from selective_update.study import cli as study
from selective_update.study import notebook_runner, pool

from quick_study import run_study

ROOT = Path(__file__).resolve().parents[2]


def _refuse_kernels(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("a kernel or worker was started for a refused command")

    monkeypatch.setattr(notebook_runner, "execute", boom)
    monkeypatch.setattr(pool.cf, "ProcessPoolExecutor", boom)


def _free_port():
    with socket.socket() as s:  # bound, then closed: nothing listens there
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- refused before anything runs ---------------------------------------------------------------

@pytest.mark.parametrize("address", ["tcp://10.0.0.5:8786", "10.0.0.5:8786", "local",
                                     "tls://scheduler.example.org:8786", "tcp://[::1]:8786"])
def test_cluster_addresses_dask_understands_are_accepted(address):
    assert study._cluster(address) == address


BAD_CLUSTER = [
    (["--cluster", "nope"], "argument --cluster: got 'nope'; allowed: local, or a Dask scheduler "
                            "address PROTOCOL://HOST:PORT"),
    (["--cluster", "http://host:8786"], "argument --cluster: got 'http://host:8786'"),
    (["--cluster", "tcp://host"], "argument --cluster: got 'tcp://host'"),
]


@pytest.mark.parametrize("argv, message", BAD_CLUSTER, ids=[" ".join(a) for a, _ in BAD_CLUSTER])
def test_a_bad_cluster_address_is_a_usage_error(argv, message, tmp_path, monkeypatch, capsys):
    _refuse_kernels(monkeypatch)
    out = tmp_path / "reports"
    with pytest.raises(SystemExit) as info:
        cli.main(["study", "--out", str(out), *argv])
    assert info.value.code == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]
    assert not out.exists()


def test_worker_dies_fault_needs_a_cluster(tmp_path, monkeypatch, capsys):
    _refuse_kernels(monkeypatch)
    out = tmp_path / "reports"
    code = cli.main(["study", "--out", str(out), "--strategies", "split_head", "--datasets", "toy",
                     "--inject-fault", "toy-split_head:worker_dies"])
    assert code == 2
    assert "allowed: worker_dies with --cluster" in capsys.readouterr().err
    assert not out.exists()


def test_an_unreachable_scheduler_is_refused_in_one_line_before_anything_runs(
        tmp_path, monkeypatch, capsys):
    _refuse_kernels(monkeypatch)
    out = tmp_path / "reports"
    (out / "runs").mkdir(parents=True)
    (out / "index.html").write_text("previous")
    address = f"tcp://127.0.0.1:{_free_port()}"
    started = time.monotonic()
    code = cli.main(["study", "--quick", "--out", str(out), "--cluster", address])
    elapsed = time.monotonic() - started
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith(
        f"python -m selective_update study: error: --cluster: no Dask scheduler answered at "
        f"{address} within {settings.CLUSTER_CONNECT_TIMEOUT} s"), err
    assert elapsed < settings.CLUSTER_CONNECT_TIMEOUT + 10
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "runs"]  # no staging folder
    assert (out / "index.html").read_text() == "previous"


def test_a_worker_with_another_checkout_fails_the_run_without_running_it(tmp_path, monkeypatch):
    from selective_update.study import cluster

    _refuse_kernels(monkeypatch)
    task = notebook_runner.Task("toy-split_head", "strategy.ipynb", "runs/toy-split_head.ipynb",
                                {}, "toy", "split_head")
    status, files = cluster.run_on_worker(task, {}, 60, True, str(tmp_path), "0123456789ab")
    assert files == {}
    assert status["status"] == "failed" and status["html"] == "runs/toy-split_head.html"
    assert status["error"].startswith(f"this worker's checkout differs from the client's "
                                      f"(fingerprint {cluster.fingerprint()}, client 0123456789ab)")


# --- on a LocalCluster (slow) --------------------------------------------------------------------

@pytest.mark.slow
def test_cluster_failing_notebook_and_a_killed_worker_leave_the_others_complete(
        tmp_path, capsys, offline_pages):
    out = tmp_path / "reports"
    code = cli.main(["study", "--quick", "--cluster", "local", "--jobs", "2", "--out", str(out),
                     "--datasets", "toy", "--scenarios",
                     "--strategies", "split_head", "masked_last_layer", "masked_loss",
                     "--inject-fault", "toy-masked_last_layer:raise",
                     "--inject-fault", "toy-masked_loss:worker_dies"])
    captured = capsys.readouterr()
    assert code == 1, captured.out + captured.err
    assert "Dask scheduler tcp://127.0.0.1:" in captured.out
    assert "ok     toy-split_head" in captured.out
    assert "FAILED toy-masked_last_layer" in captured.out
    assert "FAILED toy-masked_loss" in captured.out
    assert "its worker died while running it, 2 time(s)" in captured.out  # retried once
    assert "failed: toy-masked_last_layer" in captured.err and "toy-masked_loss" in captured.err
    status = pd.read_csv(out / "status.csv").set_index("name")
    assert status.loc["toy-split_head", "status"] == "ok"
    assert status.loc["00_seed_answer", "status"] == "ok"
    assert status.loc["toy-masked_last_layer", "status"] == "failed"
    assert status.loc["toy-masked_loss", "status"] == "failed"
    assert status.loc["toy-masked_loss", "attempts"] == 2
    error = status.loc["toy-masked_loss", "error"]
    dead = re.search(r"KilledWorker; on (\S+), then (\S+)\)", error)
    assert dead and dead[1] != dead[2]  # the retry ran on another worker
    # Every run has its page: papermill's banner for the notebook that raised, the error and the
    # unrun notebook for the one whose worker died.
    raised = (out / "runs" / "toy-masked_last_layer.html").read_text()
    assert "An Exception was encountered" in raised and "this run fails on purpose" in raised
    died = (out / "runs" / "toy-masked_loss.html").read_text()
    assert "The run failed before any cell ran" in died and "KilledWorker" in died
    results = pd.read_csv(out / "results.csv")
    assert set(results.strategy) == {"split_head"} and results.holds.all()
    index = (out / "index.html").read_text()
    assert 'href="runs/toy-masked_loss.html"' in index
    assert not list(out.glob(".staging-*"))
    offline_pages(out)


def _kernel_pid():
    from selective_update.study import notebook_runner as runner

    km = runner._KERNEL["km"]
    return None if km is None else km.provisioner.pid


@pytest.mark.slow
def test_a_worker_keeps_its_kernel_between_runs_and_replaces_it_after_a_failure(tmp_path):
    import cloudpickle

    from selective_update.study import cluster

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests
    seed = notebook_runner.Task("00_seed_answer", "00_seed_answer.ipynb", "seed.ipynb", {})
    fails = notebook_runner.Task("toy-split_head", "strategy.ipynb", "runs/toy-split_head.ipynb",
                                 dict(strategy="split_head", dataset="toy", optimizers=["sgd"],
                                      weight_decays=[0.0], warm_start_steps=[0], lr=0.1, steps=1,
                                      seeds=[0], inject_fault="raise"),
                                 "toy", "split_head", folder_param="results_dir")
    runner = cluster.ClusterRunner("local", 1)
    pids, statuses = [], []
    try:
        for task in (seed, seed, fails, seed):
            statuses += list(runner.run([task], tmp_path, 120, True, tmp_path / "published"))
            pids.append(next(iter(runner.client.run(_kernel_pid).values())))
    finally:
        runner.close()
    assert [s["status"] for s in statuses] == ["ok", "ok", "failed", "ok"]
    assert pids[0] is not None and pids[1] == pids[0]  # the same kernel ran both
    assert pids[2] is None  # a kernel that saw a failure is shut down...
    assert pids[3] not in (None, pids[0])  # ...and the next run starts a new one
    assert (tmp_path / "seed.html").is_file()
    assert (tmp_path / "runs" / "toy-split_head.html").is_file()  # its page came back


def _descendants(pid):
    table = [line.split(None, 2) for line in subprocess.run(
        ["ps", "-eo", "pid=,ppid=,args="], capture_output=True, text=True).stdout.splitlines()]
    children, found = {}, set()
    for p, ppid, args in (row + [""] * (3 - len(row)) for row in table):
        children.setdefault(int(ppid), []).append((int(p), args))
    todo = [pid]
    while todo:
        for child, args in children.get(todo.pop(), []):
            found.add((child, args))
            todo.append(child)
    return found


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:  # a zombie (not yet reaped) is dead
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def _default_sigint():
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # even where this test's runner ignores it


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGTERM to the study", "Ctrl-C (SIGINT to the process group)"])
def test_an_interrupted_cluster_study_leaves_the_previous_reports_and_no_process(
        previous_reports, how):
    out = previous_reports.out
    proc = subprocess.Popen([sys.executable, "-m", "selective_update", "study", "--quick",
                             "--cluster", "local", "--datasets", "toy", "--strategies",
                             "split_head", "null_space", "--scenarios", "--out", str(out)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True, preexec_fn=_default_sigint)
    try:
        deadline, kernels = time.monotonic() + 120, set()
        while not kernels and time.monotonic() < deadline:
            time.sleep(0.5)  # until a worker's kernel runs a notebook
            kernels = {p for p, args in _descendants(proc.pid) if "ipykernel" in args}
        assert kernels, "no kernel was running when the study was interrupted"
        time.sleep(1)
        processes = {p for p, _ in _descendants(proc.pid)}
        started = time.monotonic()
        if how.startswith("SIGTERM"):
            proc.send_signal(signal.SIGTERM)
        else:
            os.killpg(proc.pid, signal.SIGINT)  # what a terminal sends to every process
        output, _ = proc.communicate(timeout=60)
        assert time.monotonic() - started < 30
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0
    assert "interrupted" in output, output[-2000:]
    assert "Traceback" not in output, output[-2000:]  # the workers leave Ctrl-C to the client
    previous_reports.assert_intact()
    deadline = time.monotonic() + 15  # kernels notice their worker is gone within a second
    while time.monotonic() < deadline and [p for p in processes if _alive(p)]:
        time.sleep(0.5)
    assert [p for p in processes if _alive(p)] == []


@pytest.mark.slow
@pytest.mark.timeout(1500)  # it may wait for the shared quick study, then runs its own
def test_quick_study_on_a_local_cluster_is_byte_identical_to_the_pool(quick_reports, tmp_path,
                                                                      offline_pages):
    """The cluster runs the shared quick study's subset (both datasets and frameworks, an exact and
    a projected strategy) and one scenario (its parts are tasks like the runs): the same bytes and
    pages as the embedded pool's run. The other scenarios go through the same runner."""
    out = tmp_path / "cluster"
    done = run_study(out, "--scenarios", "new_class", "--jobs", "2", "--cluster", "local",
                     timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    pages = {name: sorted(p.relative_to(folder).as_posix() for p in offline_pages(folder))
             for name, folder in (("pool", quick_reports), ("cluster", out))}
    assert (quick_reports / "results.csv").read_bytes() == (out / "results.csv").read_bytes()
    for name in ("new_class.csv", "new_class_summary.csv"):  # all but their timings
        by_pool, by_cluster = (pd.read_csv(folder / name) for folder in (quick_reports, out))
        timings = [c for c in by_pool.columns if "seconds" in c]
        pd.testing.assert_frame_equal(by_pool.drop(columns=timings),
                                      by_cluster.drop(columns=timings))
    others = [n for n in settings.SCENARIO_NOTEBOOKS if n != "new_class"]  # not run here
    skipped = tuple(f"runs/{n}-" for n in others) + tuple(f"{n}.html" for n in others)
    assert pages["cluster"] == [p for p in pages["pool"] if not p.startswith(skipped)]
    assert "runs/new_class-h16/new_class.html" in pages["cluster"]
    assert "index.html" in pages["pool"] and len(pages["pool"]) >= 4
