"""Smoke tests of `python -m selective_update bench` (benchmarks are not timed tests)."""
import csv
import math
import sys

import pytest

from selective_update import STRATEGIES
from selective_update.study import render
from selective_update.__main__ import main as cli

import processes

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_quick_bench_writes_csv_html_and_figure(tmp_path):
    out = tmp_path / "reports"
    # A fresh process: the bench pins torch threads and would change this session's torch.
    proc = processes.run([sys.executable, "-m", "selective_update", "bench", "--quick",
                           "--out", str(out)], 300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(out / "bench.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for col in ("part", "framework", "strategy", "sizes", "batch", "median_s", "ratio_to_plain",
                "repeats", "threads", "device", "torch", "tensorflow"):
        assert col in rows[0], col
    seen = {(r["framework"], r["strategy"]) for r in rows}
    for fw in ("torch", "tf1"):
        for s in STRATEGIES:
            assert (fw, s) in seen
    assert ("torch", "null_space_jacobian") in seen
    for r in rows:
        t = float(r["median_s"])
        assert math.isfinite(t) and t > 0
        assert math.isfinite(float(r["ratio_to_plain"]))
        assert (r["sizes"], r["batch"], r["repeats"], r["threads"]) == ("3-4-2", "8", "1", "1")
    page = (out / "bench.html").read_text()
    assert "data:image/png;base64," in page
    assert render.external_references(page) == []
    assert "Not handling type" not in page and "cuInit" not in page
    assert "bench_dir" in page  # the injected parameters are visible
    assert "cuInit" not in proc.stderr and "Not handling type" not in proc.stderr
    assert (out / "figures" / "bench_ratios.png").stat().st_size > 0
    assert not list(out.rglob("*.tmp"))


@pytest.mark.parametrize("argv, option", [
    (["--repeats", "0"], "--repeats"),
    (["--threads", "two"], "--threads"),
    (["--sizes", "3-4/8"], "--sizes"),
    (["--sizes", "3-4-2"], "--sizes"),
    (["--frameworks", "jax"], "--frameworks"),
    (["--strategies", "all_params", "nope"], "--strategies"),
    (["--parts", "table", "gpu"], "--parts"),
    (["--widths", "64", "-1"], "--widths"),
    (["--device", "tpu"], "--device"),
    (["--device", "cuda"], "--device"),  # tf1 is in the default frameworks
    (["--device", "cuda", "--frameworks", "tf1"], "--device"),
    (["--study-floor", "--parts", "table"], "--study-floor"),
    (["--floor-threads", "-1"], "--floor-threads"),
])
def test_bad_options_exit_2_before_writing(tmp_path, capsys, argv, option):
    out = tmp_path / "reports"
    with pytest.raises(SystemExit) as exc:
        cli(["bench", "--out", str(out)] + argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert option in err[-1], err
    assert "allowed" in err[-1] or "choose from" in err[-1], err
    assert not out.exists()


def test_out_that_is_a_file_exits_2(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(SystemExit) as exc:
        cli(["bench", "--quick", "--out", str(target)])
    assert exc.value.code == 2
    assert "--out" in capsys.readouterr().err
    assert target.read_text() == "x"


def test_cuda_without_a_gpu_exits_2(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(SystemExit) as exc:
        cli(["bench", "--device", "cuda", "--frameworks", "torch", "--out", str(tmp_path / "r")])
    assert exc.value.code == 2
    assert "--device" in capsys.readouterr().err


@pytest.mark.slow
def test_beyond_batch_part_writes_its_rows_under_its_old_name_too(tmp_path):
    out = tmp_path / "reports"
    proc = processes.run([sys.executable, "-m", "selective_update", "bench", "--parts",
                           "reference", "--repeats", "1", "--frameworks", "torch", "--out",
                           str(out)], 600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(out / "bench.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["part"] == "beyond_batch"]
    seen = {(r["strategy"], r["n_ref"]) for r in rows}
    for n_ref in ("batch", "64", "256"):
        assert ("null_space_corrected", n_ref) in seen and ("null_space", n_ref) in seen
    assert any(s == "null_space_corrected" and int(n) > 1000 for s, n in seen if n.isdigit())
    for n_ref in ("batch", "64", "256"):  # next to null_space
        assert ("compensated_gradient", n_ref) in seen
    goals = {r["strategy"]: r["goal"] for r in rows if r["goal"]}
    assert set(goals) == {"layer_subspace", "grow", "null_space_corrected",
                          "compensated_gradient"}
    assert goals["compensated_gradient"] == "<= 10x"
    assert all(math.isfinite(float(r["median_s"])) and float(r["median_s"]) > 0 for r in rows)
    assert "Beyond the batch" in (out / "bench.html").read_text()


def test_compensated_goals_hold_at_the_issue_size_and_threads_only():
    from selective_update.bench import timing

    def row(strategy, sizes="784-512-10", batch=128, threads=1, median=1.3):
        return dict(part="table", framework="torch", strategy=strategy, sizes=sizes, batch=batch,
                    threads=threads, median_s=median, ratio_to_plain=float("nan"), goal="",
                    meets_goal="")

    rows = timing.add_ratios([row("all_params", median=1.0), row("compensated_gradient"),
                              row("all_params", threads=2, median=1.0),
                              row("compensated_gradient", threads=2, median=1.35),
                              row("all_params", batch=32, median=1.0),
                              row("compensated_gradient", batch=32, median=5.0)])
    judged = {(r["threads"], r["batch"]): (r["goal"], r["meets_goal"]) for r in rows
              if r["strategy"] == "compensated_gradient"}
    assert judged == {(1, 128): ("<= 1.4x", True), (2, 128): ("<= 1.3x", False),
                      (1, 32): ("", "")}


def test_a_failed_page_leaves_the_previous_bench_files(tmp_path, monkeypatch):
    import argparse

    from selective_update.bench import cli as bench
    from selective_update.bench import timing

    out = tmp_path / "reports"
    out.mkdir()
    (out / "bench.csv").write_text("previous\n")
    row = {c: "" for c in timing.CSV_COLUMNS}
    row.update(part="table", framework="torch", strategy="all_params", sizes="3-4-2", batch=8,
               median_s=1e-3, ratio_to_plain=1.0, load_1m=0.1)
    args = argparse.Namespace(device="cpu", dtype="float64", repeats=1, sweep_repeats=1)
    env = dict(machine="m", threads=1, python="3", numpy="2", torch="2", tensorflow="2")

    def fail(*a, **k):
        raise RuntimeError("bench.html: the bench notebook failed (test)")

    monkeypatch.setattr(bench, "render_page", fail)
    with pytest.raises(RuntimeError, match="bench notebook failed"):
        bench.write_reports(out, [row], args, env, [])
    assert (out / "bench.csv").read_text() == "previous\n"
    assert sorted(p.name for p in out.iterdir()) == ["bench.csv"]  # no staging left behind


@pytest.mark.slow
def test_helpers_part_writes_issue_15_rows(tmp_path):
    out = tmp_path / "reports"
    proc = processes.run([sys.executable, "-m", "selective_update", "bench", "--parts",
                           "helpers", "--quick", "--frameworks", "torch", "--out", str(out)], 600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(out / "bench.csv", newline="") as f:
        rows = {r["strategy"]: r for r in csv.DictReader(f) if r["part"] == "helpers"}
    cnn = {"plain", "split_head", "split_head_unchecked", "null_space_8", "null_space_16",
           "null_space_corrected_8", "layer_subspace_16"}
    half = {f"{name}_{dtype}" for dtype in ("bfloat16", "float16")
            for name in ("plain", "null_space_8", "null_space_corrected_8")}
    transformer = {"transformer_plain", "transformer_attach_8", "transformer_null_space_8"}
    assert set(rows) == cnn | half | transformer
    assert all(rows[n]["dtype"] == "float32" and rows[n]["n_params"] == "55018" for n in cnn)
    assert all(rows[n]["dtype"] == n.rsplit("_", 1)[1] for n in half)
    assert float(rows["transformer_null_space_8"]["peak_rss_mb"]) > 100
    assert float(rows["plain"]["ratio_to_plain"]) == 1.0
    assert float(rows["null_space_16"]["peak_rss_mb"]) > 100
    assert "; Gauss-Newton steps per step: " in rows["null_space_corrected_8"]["note"]
    page = (out / "bench.html").read_text()
    assert "The helpers on your own model" in page
    assert (out / "figures" / "bench_helpers.png").stat().st_size > 0


def test_helpers_goals_compare_the_corrected_step_with_its_twin():
    from selective_update.bench import helpers

    def row(name, seconds, ratio, rss=""):
        return dict(strategy=name, median_s=seconds, ratio_to_plain=ratio, peak_rss_mb=rss,
                    goal="", meets_goal="")

    rows = [row("null_space_64", 0.1, 9.0), row("null_space_corrected_64", 0.25, 22.0),
            row("null_space_512", 3.0, 240.0, rss=2100.0), row("layer_subspace_512", 0.01, 1.2)]
    helpers._goals(rows, 64, 512, quick=False)
    met = {r["strategy"]: r["meets_goal"] for r in rows}
    assert met == {"null_space_64": True, "null_space_corrected_64": False,
                   "null_space_512": False, "layer_subspace_512": True}  # 2.5x twin; RSS > 2 GB
    assert "2 GB" in rows[2]["goal"]
