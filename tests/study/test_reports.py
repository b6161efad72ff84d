"""Judging promises, results CSV format, atomic writes and offline HTML (no kernels)."""
import base64
import io
import os

import nbformat
import numpy as np
import pandas as pd
import pytest

from selective_update.study import render, report, results
from selective_update.core import verdicts

Z = np.zeros(4)


# --- promise_holds: the rules ---------------------------------------------------------------------

def test_exact_needs_bitwise_zero_on_batch_and_held_out():
    assert verdicts.promise_holds("exact", Z, Z).holds
    tiny = np.array([0.0, 0.0, 5e-324, 0.0])
    assert not verdicts.promise_holds("exact", tiny, Z).holds
    assert not verdicts.promise_holds("exact", Z, tiny).holds


@pytest.mark.parametrize("dtype, drift, holds", [
    ("float64", 1e-10, True), ("float64", 2e-10, False),
    ("float32", 1e-4, True), ("float32", 1e-3, False)])
def test_batch_exact_tolerance_by_dtype_and_held_out_is_free(dtype, drift, holds):
    d = np.array([0.0, drift / 2, drift])
    verdict = verdicts.promise_holds("batch_exact", d, np.array([0.0, 0.3, 0.9]), dtype=dtype)
    assert verdict.holds is holds
    assert "held-out 0.9" in verdict.measured


@pytest.mark.parametrize("half, holds", [(1e-3 / 4, True), (1e-3 / 2.8, True),
                                         (1e-3 / 2.7, False), (1e-3 / 2, False)])
def test_first_order_compares_one_step_at_lr_and_half_lr(half, holds):
    d = np.array([0.0, 1e-3, 5e-3])  # only the first step counts
    verdict = verdicts.promise_holds("first_order", d, d, drift_train_half_lr=half)
    assert verdict.holds is holds
    assert "ratio" in verdict.measured


def test_first_order_below_tolerance_holds_and_needs_half_lr():
    d = np.array([0.0, 1e-14])
    assert verdicts.promise_holds("first_order", d, d, drift_train_half_lr=1e-14).holds
    with pytest.raises(ValueError, match="drift_train_half_lr"):
        verdicts.promise_holds("first_order", d, d)


def test_none_holds_trivially_but_reports_the_drift():
    verdict = verdicts.promise_holds("none", np.array([0.0, 0.5]), np.array([0.0, 0.7]))
    assert verdict.holds and "0.5" in verdict.measured and "0.7" in verdict.measured


def test_promise_holds_refuses_unknown_promise():
    with pytest.raises(ValueError, match="promise: got 'exactly'"):
        verdicts.promise_holds("exactly", Z, Z)


def test_promise_table_fails_a_configuration_when_one_seed_fails():
    rows = pd.DataFrame({
        "framework": ["tf1"] * 4, "optimizer": ["sgd", "sgd", "adam", "adam"],
        "weight_decay": 0.0, "warm_start_steps": 0, "seed": [0, 1, 0, 1], "promise": "exact",
        "drift_train": [0.0, 0.0, 0.0, 1e-3], "drift_eval": 0.0,
        "holds": [True, True, True, False], "drift_ratio": np.nan})
    table = report.promise_table(rows).set_index("optimizer")
    assert table.loc["sgd", "result"] == "pass" and table.loc["adam", "result"] == "FAIL"
    assert table.loc["adam", "max batch drift"] == 1e-3


# --- results CSV: byte-stable, exact round trip ---------------------------------------------------

def test_csv_text_round_trips_floats_exactly_and_sorts_deterministically():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"dataset": ["toy", "digits"] * 50, "strategy": "x", "framework": "tf1",
                          "optimizer": "sgd", "weight_decay": 0.01, "warm_start_steps": 0,
                          "seed": 0, "step": np.arange(100), "loss": rng.random(100) * 1e-7,
                          "acc_keep": np.nan})
    order = ["dataset", "strategy", "framework", "optimizer", "weight_decay",
             "warm_start_steps", "seed", "step"]
    a = results.csv_text(results.tidy(frame, order))
    b = results.csv_text(results.tidy(frame.sample(frac=1, random_state=1), order))
    assert a == b
    back = pd.read_csv(io.StringIO(a))
    assert back.weight_decay.iloc[0] == 0.01 and ",0.01," in a  # shortest repr, not 0.0100000...
    np.testing.assert_array_equal(back.sort_values(order).loss.to_numpy(),
                                  frame.sort_values(order).loss.to_numpy())


# --- atomic writes -----------------------------------------------------------------------------

def test_atomic_write_keeps_the_old_file_when_the_swap_fails(tmp_path, monkeypatch):
    path = tmp_path / "results.csv"
    results.atomic_write(path, "old\n")
    assert oct(path.stat().st_mode & 0o777) != oct(0o600)  # not mkstemp's private mode

    def broken(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError, match="disk full"):
        results.atomic_write(path, "new\n")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["results.csv"]  # no temporary left


# --- offline HTML ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    '<script src="https://cdnjs.cloudflare.com/require.js"></script>',
    "<script type='text/javascript' src='http://x.org/a.js'></script>",
    '<link rel="stylesheet" href="https://unpkg.com/x.css">',
    '<link rel=stylesheet href=//cdn.example.com/x.css>',
    '<img src="https://example.com/a.png">',
    "<style>@import url('https://fonts.googleapis.com/css');</style>",
    "<style>body { background: url(http://x.org/bg.png) }</style>"])
def test_external_references_are_found(text):
    assert render.external_references(f"<html>{text}</html>")


def test_local_things_are_not_external_references():
    text = ('<a href="https://stackoverflow.com/q/1">a link is not a fetch</a>'
            '<img src="data:image/png;base64,AAAA"><a href="runs/toy-x.html">run</a>'
            '<script>var x = "https://not.loaded";</script>')
    assert render.external_references(text) == []


def _png():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1, 1))
    ax.plot([0, 1])
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def test_render_html_is_offline_inlines_figures_and_shows_injected_parameters(tmp_path):
    nb = nbformat.v4.new_notebook()
    injected = nbformat.v4.new_code_cell('# Parameters\nstrategy = "split_head"\n')
    injected.metadata["tags"] = ["injected-parameters"]
    fig = nbformat.v4.new_code_cell("plot()")
    fig.outputs = [nbformat.v4.new_output("display_data", data={"image/png": _png(),
                                                                 "text/plain": "<Figure>"})]
    nb.cells = [nbformat.v4.new_markdown_cell("# Title with $x^2$ math"), injected, fig]
    path = render.render_html(nb, tmp_path / "r.html", title="toy-split_head")
    text = path.read_text()
    assert render.external_references(text) == []
    assert "require.js" not in text and "mathjax" not in text.lower().replace("mathjax_", "")
    assert "data:image/png;base64," in text
    assert "split_head" in text and "injected-parameters" in text
    assert "<title>toy-split_head</title>" in text


def test_the_offline_template_is_package_data():
    assert (render.TEMPLATES / render.TEMPLATE / "index.html.j2").is_file()
    assert (render.TEMPLATES / render.TEMPLATE / "conf.json").is_file()


def test_promise_markdown_marks_a_promise_that_did_not_hold():
    rows = pd.DataFrame({
        "strategy": ["split_head", "null_space"], "promise": ["exact", "first_order"],
        "seed": 0, "drift_train": [0.0, 1e-3], "drift_eval": [0.0, 2e-2],
        "holds": [True, False], "drift_ratio": [np.nan, 1.5]})
    text = report.promise_markdown(rows)
    lines = {line.split("|")[1].strip(): line for line in text.splitlines()[2:]}
    assert lines["`split_head`"].endswith("| yes |")
    assert lines["`null_space`"].endswith("| **no** |") and "| 1.5 |" in lines["`null_space`"]


def test_overview_legend_covers_no_point():
    """The legend sat on the last rows' points (distill's); every point stays visible."""
    import matplotlib

    matplotlib.use("Agg")
    import pandas as pd

    from selective_update import core
    from selective_update.study import figures

    rows = pd.DataFrame([dict(strategy=s, framework="torch", optimizer="sgd", weight_decay=0.0,
                              warm_start_steps=0, seed=0, step=1, dataset="toy",
                              drift_train=10.0 ** -(i % 12), drift_eval=10.0 ** -(i % 5))
                         for i, s in enumerate(core.STRATEGIES)])
    fig = figures.plot_overview(rows)
    fig.canvas.draw()
    ax = fig.axes[0]
    legend = ax.get_legend().get_window_extent()
    points = np.vstack([c.get_offset_transform().transform(c.get_offsets())
                        for c in ax.collections if len(c.get_offsets())])
    assert len(points) == 2 * len(core.STRATEGIES)
    inside = [(x, y) for x, y in points if legend.contains(x, y)]
    assert inside == []
    figure = fig.bbox
    assert figure.x0 <= legend.x0 and legend.x1 <= figure.x1  # the legend itself is on the page
