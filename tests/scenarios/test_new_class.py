"""The new-class scenario: pretraining on 0-8, the front flag, the CSV rows, bad parameters."""
import numpy as np
import pandas as pd
import pytest

from selective_update import core
from selective_update.scenarios import new_class as nc
from selective_update.scenarios import new_class_report as ncr
from selective_update.study import results
from selective_update.settings import (NEW_CLASS, NEW_CLASS_CORRECTED_FACTOR,
                                      NEW_CLASS_QUICK_GRID, ROOT)


def _frame(rows):
    return pd.DataFrame(rows, columns=["hidden", "framework", "strategy", "recall_new",
                                       "drift_max"])


def test_pareto_flags_a_hand_made_frame():
    frame = _frame([
        (16, "torch", "exact", 0.0, 0.0),        # lowest drift: on the front
        (16, "torch", "middle", 0.5, 0.1),       # on the front
        (16, "torch", "beaten", 0.4, 0.2),       # "middle" has higher recall and lower drift
        (16, "torch", "tie", 0.5, 0.3),          # same recall as "middle": not strictly beaten
        (16, "torch", "top", 0.9, 1.0),          # highest recall: on the front
        (16, "torch", "diverged", 1.0, np.inf),  # non-finite drift: never on the front
        (16, "tf1", "alone", 0.1, 5.0),          # other framework: "middle" does not count
        (64, "torch", "wide", 0.2, 0.5),         # other width: "middle" does not count
    ])
    flags = dict(zip(frame.strategy, nc.pareto(frame)))
    assert flags == {"exact": True, "middle": True, "beaten": False, "tie": True, "top": True,
                     "diverged": False, "alone": True, "wide": True}
    front = ncr.front_table(frame.assign(pareto=nc.pareto(frame), setting="none",
                                         optimizer="adam", seed=0, accuracy_kept=0.9,
                                         drift_mean=0.0))
    assert list(front.strategy) == ["alone", "exact", "middle", "tie", "top", "wide"]


def test_pretraining_leaves_output_9_at_its_init():
    sc = nc.scenario(16, 0)
    for name in ("W2", "b2"):
        assert np.array_equal(sc.params[name][..., NEW_CLASS], sc.init[name][..., NEW_CLASS])
        assert not np.array_equal(sc.params[name][..., 0], sc.init[name][..., 0])
    assert not np.array_equal(sc.params["W1"], sc.init["W1"])
    x, y = sc.splits["held_out"]
    out = core.forward(sc.params, x)[1]
    m = nc.metrics(out, out, y)
    assert m["accuracy_kept"] > 0.9 and m["recall_new"] == 0.0 and m["drift_max"] == 0.0
    # the batch mixes every class; references are kept digits only, the validation split is apart
    assert len(np.unique(sc.y.argmax(axis=1))) > 5
    assert len(sc.reference(64)) == 64 and sc.reference("batch") is None
    assert len(sc.reference("all")) > 800


def test_a_tiny_study_writes_one_row_per_strategy_setting_framework_optimizer_seed(tmp_path):
    cfg = nc.check_params(quick=True, hidden=[16], strategies=["split_head", "masked_loss"])
    cfg["grid"].update(lrs={"adam": [0.03]}, steps=[5, 10])
    study = nc.run_study(cfg)
    rows = study.rows
    assert list(rows.columns) == nc.COLUMNS
    keys = ["strategy", "setting", "framework", "optimizer", "seed", "hidden"]
    assert not rows.duplicated(keys).any()
    assert len(rows) == 2 * 1 * 2 * 1 * 1
    assert set(rows.framework) == {"tf1", "torch"} and set(rows.setting) == {"none"}
    assert (rows[rows.strategy == "split_head"].drift_max == 0).all()  # exact: bitwise
    assert ncr.framework_gap(rows) < 1e-6
    assert rows.pareto.dtype == bool and rows.pareto.any()
    assert (rows.seconds_per_step > 0).all()
    paths = nc.write(study, tmp_path)
    back = pd.read_csv(paths[0])
    assert list(back.columns) == nc.COLUMNS and len(back) == len(rows)
    # the summary page calls these on the file alone
    answer = ncr.answer_markdown(back)
    assert "**hidden 16**" in answer and "TF1 and PyTorch agree" in answer
    assert len(ncr.front_table(back)) == back.pareto.sum()
    assert len(ncr.plot_tradeoff_front(back).axes) == 2  # one hidden width: two panels
    sweep = pd.read_csv(paths[1])
    assert list(sweep.columns) == nc.SWEEP_COLUMNS
    assert sweep.selected.sum() == 2  # one (lr, steps) per strategy x setting x optimizer
    # the sweep has no timings: the same sweep writes the same bytes
    again = nc.select(nc.run_sweep(cfg["grid"])[0])
    assert results.csv_text(again) == paths[1].read_text()


def test_settings_per_strategy():
    grid = dict(NEW_CLASS_QUICK_GRID)
    assert nc.settings_for("split_head", grid) == ["none"]
    refs = nc.settings_for("null_space", grid)
    assert refs[0] == "reference=batch"
    assert refs == [f"reference={r}" for r in grid["references"]]
    sc = nc.scenario(16, 0)
    assert nc.setting_kwargs("reference=batch", sc) == {}
    assert len(nc.setting_kwargs("reference=64", sc)["reference"]) == 64
    assert nc.setting_kwargs("grow=4", sc) == {"grow": 4}
    # the cost rule: no solve is always run in full; the widest reference set is not run at all
    assert nc.tier(sc, "split_head", "none") == "full"
    assert nc.tier(sc, "null_space", "reference=batch") == "full"
    assert nc.tier(sc, "null_space_corrected", "reference=64") == "full"
    assert nc.tier(sc, "null_space", "reference=256") == "reduced"
    assert nc.tier(sc, "null_space", "reference=256", quick=True) == "full"
    wide = nc.scenario(64, 0)
    assert nc.tier(wide, "null_space", "reference=256") == "reduced"
    assert nc.tier(wide, "null_space_corrected", "reference=all") == "skipped"
    assert nc.tier(wide, "null_space_corrected", "reference=all", quick=True) == "skipped"
    assert nc.work(wide, "null_space_corrected", "reference=64") == \
        NEW_CLASS_CORRECTED_FACTOR * nc.work(wide, "null_space", "reference=64")


@pytest.mark.parametrize("kwargs, name", [
    (dict(quick="yes"), "quick"),
    (dict(quick=False, reports_dir=str(ROOT / "pyproject.toml")), "reports_dir"),
    (dict(quick=False, hidden=[0]), "hidden"),
    (dict(quick=False, hidden=16), "hidden"),
    (dict(quick=False, seeds=[-1]), "seeds"),
    (dict(quick=False, strategies=["nope"]), "strategies"),
    (dict(quick=False, strategies=[]), "strategies"),
])
def test_bad_parameters_are_refused_in_one_line(kwargs, name):
    with pytest.raises(ValueError) as info:
        nc.check_params(**kwargs)
    message = str(info.value)
    assert message.startswith(f"{name}: got ") and "\n" not in message


@pytest.mark.slow
def test_notebook_runs_quick_and_writes_the_csv(tmp_path):
    import papermill as pm

    pm.execute_notebook(str(ROOT / "notebooks" / "new_class.ipynb"), str(tmp_path / "out.ipynb"),
                        parameters=dict(quick=True, reports_dir=str(tmp_path)),
                        kernel_name="python3", cwd=str(ROOT / "notebooks"), progress_bar=False)
    rows = pd.read_csv(tmp_path / "new_class.csv")
    assert list(rows.columns) == nc.COLUMNS
    assert set(rows.framework) == {"tf1", "torch"} and set(rows.hidden) == {16, 64}
    assert rows.pareto.any() and set(rows.strategy) >= {"split_head", "null_space"}
    assert (tmp_path / "new_class_sweep.csv").is_file()
