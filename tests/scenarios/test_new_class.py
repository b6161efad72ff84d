"""The new-class scenario: set-up, settings from the registry, intervals, the front, the CSVs."""
from functools import lru_cache

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from selective_update import core
from selective_update.core import Strategy
from selective_update.scenarios import new_class as nc
from selective_update.scenarios import new_class_report as ncr
from selective_update.scenarios import stats, strategy_settings
from selective_update.settings import (NEW_CLASS, NEW_CLASS_BATCH, NEW_CLASS_CORRECTED_FACTOR,
                                      NEW_CLASS_QUICK_GRID, ROOT)
from selective_update.study import results


# --- statistics: intervals over seeds, the front on the means --------------------------------

def test_interval_is_the_student_t_interval():
    values = np.array([0.73, 0.38, 0.75, 0.12, 0.0])  # the five grow seeds
    mean, low, high = stats.interval(values)
    expected = scipy_stats.t.interval(0.95, len(values) - 1, loc=values.mean(),
                                      scale=scipy_stats.sem(values))
    assert mean == pytest.approx(0.396) and (low, high) == pytest.approx(expected, abs=1e-12)
    assert high - mean == pytest.approx(0.43, abs=0.005)  # the issue's +-0.43
    assert stats.interval([0.5, 0.5, 0.5]) == (0.5, 0.5, 0.5)
    assert np.isnan(stats.interval([0.5])[1])  # one seed: no interval
    assert np.isnan(stats.interval([0.5, np.inf])[2])  # a diverged seed: none either


def test_summarize_counts_seeds_and_names_its_columns():
    rows = pd.DataFrame(dict(k=["a", "a", "a", "b", "b"], seed=[0, 1, 2, 0, 1],
                             x=[1.0, 2.0, 3.0, 5.0, 5.0]))
    out = stats.summarize(rows, ["k"], ["x"])
    assert list(out.columns) == ["k", "n_seeds", "x_mean", "x_ci_low", "x_ci_high"]
    a, b = out.iloc[0], out.iloc[1]
    assert a.n_seeds == 3 and a.x_mean == 2.0 and a.x_ci_high - 2.0 == pytest.approx(
        scipy_stats.t.ppf(0.975, 2) * 1.0 / np.sqrt(3))
    assert (b.n_seeds, b.x_ci_low, b.x_ci_high) == (2, 5.0, 5.0)


def _frame(rows):
    return pd.DataFrame(rows, columns=["hidden", "framework", "strategy", "recall_new",
                                       "drift_max"])


def test_pareto_is_strict_dominance():
    frame = _frame([
        (16, "torch", "grow-sgd", 0.0, 0.0),      # the tie: grow with Adam beats it
        (16, "torch", "grow-adam", 0.73, 0.0),    # on the front
        (16, "torch", "twin", 0.73, 0.0),         # equal to grow-adam: equals keep each other
        (16, "torch", "middle", 0.8, 0.1),        # on the front
        (16, "torch", "same-drift", 0.5, 0.1),    # middle: as low a drift, higher recall
        (16, "torch", "same-recall", 0.8, 0.3),   # middle: same recall, lower drift
        (16, "torch", "top", 0.9, 1.0),           # highest finite recall: on the front
        (16, "torch", "diverged", 1.0, np.inf),   # non-finite drift: never on the front
        (16, "tf1", "alone", 0.1, 5.0),           # other framework: the torch rows do not count
        (64, "torch", "wide", 0.2, 0.5),          # other width: the hidden-16 rows do not count
    ])
    flags = dict(zip(frame.strategy, nc.pareto(frame)))
    assert flags == {"grow-sgd": False, "grow-adam": True, "twin": True, "middle": True,
                     "same-drift": False, "same-recall": False, "top": True, "diverged": False,
                     "alone": True, "wide": True}


def test_differences_are_called_only_where_intervals_separate():
    row = lambda m, lo, hi: {"recall_new_mean": m, "recall_new_ci_low": lo,  # noqa: E731
                             "recall_new_ci_high": hi}
    a, b, c = row(0.4, -0.03, 0.83), row(0.15, -0.12, 0.42), row(0.9, 0.85, 0.95)
    assert not stats.separated(a, b, "recall_new") and stats.separated(c, b, "recall_new")
    assert "within noise" in stats.compared(a, b, "recall_new", "grow", "split_head")
    text = stats.compared(b, c, "recall_new", "split_head", "joint")
    assert text.startswith("joint is higher than split_head") and "separate" in text


# --- settings from the registry ----------------------------------------------------------------

def test_settings_come_from_the_registry_and_its_options():
    grid = dict(NEW_CLASS_QUICK_GRID, references=["batch", 64])
    assert nc.settings_for("split_head", grid) == ["none"]
    assert nc.settings_for("all_params", grid) == ["joint"]  # the ceiling, labelled
    assert nc.settings_for("masked_loss", grid) == ["fine-tuning"]  # the floor
    assert nc.settings_for("null_space", grid) == ["reference=batch", "reference=64"]
    assert nc.settings_for("layer_subspace", grid) == ["energy=0.97"]
    assert nc.settings_for("grow", grid) == ["grow=4"]
    sc = nc.scenario(16, 0)
    assert nc.setting_kwargs("null_space", "reference=batch", sc) == {}
    assert len(nc.setting_kwargs("null_space", "reference=64", sc)["reference"]) == 64
    assert nc.setting_kwargs("grow", "grow=4", sc) == {"grow": 4}
    energy = nc.setting_kwargs("layer_subspace", "energy=0.97", sc)  # every kept fit digit
    assert energy["energy"] == 0.97 and len(energy["reference"]) == len(sc.kept_pool)
    memory = {name for name, s in core.STRATEGIES.items() if s.memory}
    assert memory == {"gem", "ewc"}  # they keep a Memory's loss: the rotations benchmark's
    assert set(strategy_settings.strategies()) == set(core.STRATEGIES) - memory


def test_a_strategy_that_lands_later_takes_part_without_changes(monkeypatch):
    """A new registry entry (compensated_gradient is on its way) is swept by what it is."""
    new = {"plain_new": Strategy("plain_new", "a new strategy for the test", "test",
                                 trains="all", loss="masked"),
           "projected_new": Strategy("projected_new", "a new projection for the test", "test",
                                     trains="all", loss="masked", after="project"),
           "option_new": Strategy("option_new", "a new strategy with an option", "test",
                                  trains="all", loss="masked")}
    monkeypatch.setattr(core, "STRATEGIES", {**core.STRATEGIES, **new})
    monkeypatch.setattr(strategy_settings, "OPTION_USERS",
                        {**strategy_settings.OPTION_USERS, "strength": ("option_new",)})
    grid = dict(NEW_CLASS_QUICK_GRID, references=["batch", 64])
    assert "projected_new" in strategy_settings.strategies()
    assert nc.settings_for("plain_new", grid) == ["none"]
    assert nc.settings_for("projected_new", grid) == ["reference=batch", "reference=64"]
    assert nc.settings_for("option_new", grid) == ["none"]  # its option at its default
    grid["options"] = {**grid["options"], "strength": [0.5, 2]}
    assert nc.settings_for("option_new", grid) == ["strength=0.5", "strength=2"]
    assert strategy_settings.run_kwargs("option_new", "strength=2", None) == {"strength": 2}
    assert strategy_settings.run_kwargs("option_new", "strength=0.5", None) == {"strength": 0.5}


def test_the_cost_rule():
    sc, wide = nc.scenario(16, 0), nc.scenario(64, 0)
    assert nc.work(sc, "split_head", "none") == 0 and nc.tier(sc, "split_head", "none") == "full"
    m, P = 9 * NEW_CLASS_BATCH, core.n_params(sc.params)  # each step's mini-batch
    assert nc.work(sc, "null_space", "reference=batch") == min(m, P) ** 2 * max(m, P)
    assert nc.tier(sc, "null_space", "reference=batch") == "reduced"  # projections: Adam only
    assert nc.tier(sc, "null_space", "reference=batch", quick=True) == "full"
    assert nc.tier(sc, "null_space_corrected", "reference=64") == "reduced"
    assert nc.tier(sc, "null_space", "reference=256") == "skipped"
    assert nc.tier(wide, "null_space_corrected", "reference=all", quick=True) == "skipped"
    assert nc.work(wide, "null_space_corrected", "reference=64") == \
        NEW_CLASS_CORRECTED_FACTOR * nc.work(wide, "null_space", "reference=64")


# --- the set-up ----------------------------------------------------------------------------------

def test_pretraining_leaves_output_9_at_its_init_and_9_is_learned_from_every_fit_digit():
    sc = nc.scenario(16, 0)
    for name in ("W2", "b2"):
        assert np.array_equal(sc.params[name][..., NEW_CLASS], sc.init[name][..., NEW_CLASS])
        assert not np.array_equal(sc.params[name][..., 0], sc.init[name][..., 0])
    x, y = sc.splits["held_out"]
    out = core.forward(sc.params, x)[1]
    m = nc.metrics(out, out, y)
    assert m["accuracy_kept"] > 0.9 and m["recall_new"] == 0.0 and m["drift_max"] == 0.0
    assert sc.x.shape == (960, 64) and (sc.y.argmax(axis=1) == NEW_CLASS).sum() > 80
    assert sc.steps_per_epoch == 960 // NEW_CLASS_BATCH
    r = nc.run(sc, "split_head", "none", "torch", "adam", 0.03, 1, "validation")
    assert r.batches.shape == (sc.steps_per_epoch, NEW_CLASS_BATCH)
    assert len(np.unique(r.batches)) == 960  # one epoch: every fit digit, every fit 9
    assert np.array_equal(r.batches, core.minibatches(960, NEW_CLASS_BATCH, 30, sc.seed))
    assert sc.reference("batch") is None and len(sc.reference(64)) == 64
    assert len(sc.reference("all")) > 800
    # a seed sets the weights, the pretraining and the reference draw
    other = nc.scenario(16, 1)
    assert not np.array_equal(other.params["W1"], sc.params["W1"])
    assert not np.array_equal(other.kept_pool[:64], sc.kept_pool[:64])


@pytest.mark.parametrize("kwargs, name", [
    (dict(quick="yes"), "quick"),
    (dict(quick=False, reports_dir=str(ROOT / "pyproject.toml")), "reports_dir"),
    (dict(quick=False, hidden=[0]), "hidden"),
    (dict(quick=False, hidden=16), "hidden"),
    (dict(quick=False, seeds=[-1]), "seeds"),
    (dict(quick=False, sweep_seeds=[]), "sweep_seeds"),
    (dict(quick=False, strategies=["nope"]), "strategies"),
    (dict(quick=False, strategies=[]), "strategies"),
])
def test_bad_parameters_are_refused_in_one_line(kwargs, name):
    with pytest.raises(ValueError) as info:
        nc.check_params(**kwargs)
    message = str(info.value)
    assert message.startswith(f"{name}: got ") and "\n" not in message


# --- a tiny study end to end ----------------------------------------------------------------------

TINY = ["split_head", "masked_loss", "all_params"]


@lru_cache(maxsize=None)
def tiny_study(hidden=(16,)):
    cfg = nc.check_params(quick=True, hidden=list(hidden), strategies=TINY, seeds=[0, 1, 2])
    cfg["grid"].update(epochs=[1])
    return nc.run_study(cfg)


def test_a_tiny_study_writes_one_row_per_seed_and_a_summary_with_intervals(tmp_path):
    study = tiny_study()
    rows, summary = study.rows, study.summary
    assert list(rows.columns) == nc.COLUMNS and list(summary.columns) == nc.SUMMARY_COLUMNS
    assert not rows.duplicated(["strategy", "setting", "framework", "optimizer", "seed",
                                "hidden"]).any()
    assert len(rows) == 3 * 2 * 3 and set(rows.seed) == {0, 1, 2}
    assert set(rows.setting) == {"none", "joint", "fine-tuning"}  # the bounds, labelled
    assert (rows[rows.strategy == "split_head"].drift_max == 0).all()  # exact: bitwise
    assert ncr.framework_gap(rows) < 1e-6
    assert len(summary) == 3 * 2 and (summary.n_seeds == 3).all()
    # the intervals are recomputable from the per-seed rows
    for _, s in summary.iterrows():
        seeds = rows[(rows.strategy == s.strategy) & (rows.framework == s.framework)]
        for metric in nc.SUMMARY_METRICS:
            values = seeds[metric].to_numpy()
            assert s[f"{metric}_mean"] == pytest.approx(values.mean(), abs=1e-15)
            if values.std() > 0:
                low, high = scipy_stats.t.interval(0.95, len(values) - 1, loc=values.mean(),
                                                   scale=scipy_stats.sem(values))
                assert (s[f"{metric}_ci_low"], s[f"{metric}_ci_high"]) == pytest.approx(
                    (low, high), abs=1e-12)
            else:
                assert s[f"{metric}_ci_low"] == s[f"{metric}_ci_high"] == values[0]
    assert summary.pareto.dtype == bool and summary.pareto.any()
    assert (summary.pareto == nc.pareto(summary.rename(columns={
        "recall_new_mean": "recall_new", "drift_max_mean": "drift_max"}))).all()
    paths = nc.write(study, tmp_path)
    assert [p.name for p in paths] == list(nc.FILES)
    back = pd.read_csv(paths[1])
    answer = ncr.answer_markdown(back, rows=pd.read_csv(paths[0]))
    assert "**Hidden 16**" in answer and "Ceiling, joint training" in answer
    assert "Floor, fine-tuning" in answer and "[" in answer and "TF1 and PyTorch agree" in answer
    assert len(ncr.front_table(back)) == back.pareto.sum()
    assert len(ncr.plot_tradeoff_front(back).axes) == 2  # one hidden width: two panels
    sweep = pd.read_csv(paths[2])
    assert list(sweep.columns) == nc.SWEEP_COLUMNS
    assert sweep.selected.sum() == 3  # one (optimizer, lr, epochs) per strategy x setting
    # the sweep has no timings: the same sweep writes the same bytes
    again = nc.select(nc.run_sweep(study.grid)[0])
    assert results.csv_text(again) == paths[2].read_text()


def test_the_parts_of_a_study_combine_into_the_files_of_one_run(tmp_path):
    """One papermill run per hidden width (the batch's parts) gives the same bytes as one run."""
    whole = tmp_path / "whole"
    nc.write(tiny_study((16, 64)), whole)
    for hidden in (16, 64):
        nc.write(tiny_study((hidden,)), tmp_path / "staging" / "runs" / f"new_class-h{hidden}")
    paths = results.combine_parts(tmp_path / "staging", "new_class")
    assert sorted(p.name for p in paths) == sorted(nc.FILES)
    for path in paths:
        text = path.read_text()
        if path.name == "new_class.csv":  # seconds per step differ from run to run
            text, expected = (pd.read_csv(p).drop(columns="seconds_per_step")
                              for p in (path, whole / path.name))
            pd.testing.assert_frame_equal(text, expected)
        else:
            assert text == (whole / path.name).read_text(), path.name


@pytest.mark.slow
def test_notebook_runs_quick_and_writes_the_csv(tmp_path):
    import papermill as pm

    pm.execute_notebook(str(ROOT / "notebooks" / "new_class.ipynb"), str(tmp_path / "out.ipynb"),
                        parameters=dict(quick=True, reports_dir=str(tmp_path)),
                        kernel_name="python3", cwd=str(ROOT / "notebooks"), progress_bar=False)
    rows = pd.read_csv(tmp_path / "new_class.csv")
    assert list(rows.columns) == nc.COLUMNS
    assert set(rows.framework) == {"tf1", "torch"} and set(rows.hidden) == {16}
    assert rows.seed.nunique() >= 2 and set(rows.strategy) == set(strategy_settings.strategies())
    summary = pd.read_csv(tmp_path / "new_class_summary.csv")
    assert summary.pareto.any() and (summary.n_seeds >= 2).all()
    assert (tmp_path / "new_class_sweep.csv").is_file()
