"""The class sequence: GEM's ACC and BWT, the tasks, growth, intervals, the CSVs."""
from functools import lru_cache

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from selective_update import core
from selective_update.scenarios import class_sequence as cs
from selective_update.scenarios import strategy_settings
from selective_update.scenarios import class_sequence_report as csr
from selective_update.settings import CLASS_SEQUENCE, ROOT


def _task(task, new, recalls):
    row = dict(task=task, class_new=new, **{f"recall_{c}": np.nan for c in range(10)})
    row.update({f"recall_{c}": v for c, v in recalls.items()})
    return row


def test_acc_and_bwt_are_gems_over_the_ten_classes():
    """R[i, j]: recall of class j after task i. ACC = mean_j R[5, j]; BWT = mean over the classes
    learned before the last of R[5, j] - R[t(j), j] (t(j) = 0 for the pretrained 0-4)."""
    after = {0: dict(zip(range(5), [0.9] * 5))}
    for t, c in enumerate(CLASS_SEQUENCE, start=1):
        after[t] = {**{k: v - 0.1 for k, v in after[t - 1].items()}, c: 0.8}
    rows = [_task(0, None, after[0])] + [_task(t, c, after[t])
                                         for t, c in enumerate(CLASS_SEQUENCE, start=1)]
    acc, bwt = cs.acc_bwt(rows)
    final = after[5]
    assert acc == pytest.approx(np.mean([final[c] for c in range(10)]))
    # classes 0-4 fell by 0.5 (five later tasks), class 5 by 0.4, ..., class 8 by 0.1
    assert bwt == pytest.approx(-(5 * 0.5 + 0.4 + 0.3 + 0.2 + 0.1) / 9)
    frame = pd.DataFrame(rows).assign(class_new=lambda f: f.class_new.astype("Int64"))
    assert cs.acc_bwt(frame.sample(frac=1, random_state=0).to_dict("records")) == (acc, bwt)


def test_pretraining_learns_0_to_4_and_leaves_5_to_9_at_their_init():
    sq = cs.sequence(64, 0)
    init = core.init_params((64, 64, 10), seed=0)
    for c in range(10):
        same = np.array_equal(sq.params["W2"][:, c], init["W2"][:, c])
        assert same == (c >= 5), c
    x, y = sq.splits["held_out"]
    accuracy, recall = cs.scores(core.forward(sq.params, x)[1], y, range(5))
    assert accuracy > 0.9 and set(recall) == set(range(5))
    # references accumulate: N fit digits of every kept class
    reference = sq.reference_for((0, 1, 2))(8)
    assert reference.shape == (24, 64) and sq.reference_for((0, 1))("batch") is None
    assert len(sq.reference_for(range(5))("all")) == sum(len(sq.pools[c]) for c in range(5))


@pytest.mark.parametrize("framework", core.FRAMEWORKS)
def test_split_head_keeps_every_learned_output_through_the_sequence(framework):
    rows, _ = cs.run_sequence(cs.sequence(64, 0), "split_head", "none", framework, "adam", 0.1, 1,
                              "validation")
    assert [r["task"] for r in rows] == list(range(6))
    assert [r["class_new"] for r in rows] == [None, *CLASS_SEQUENCE]
    assert all(r["drift_max"] == 0.0 for r in rows[1:])  # exact, since each output's own task
    assert np.isnan(rows[1]["recall_6"]) and not np.isnan(rows[-1]["recall_9"])


def test_grow_adds_units_at_every_task():
    _, params = cs.run_sequence(cs.sequence(64, 0), "grow", "grow=4", "torch", "adam", 0.03, 1,
                                "validation")
    assert params["W1"].shape == (64, 64 + 4 * len(CLASS_SEQUENCE))


TINY = ["split_head", "masked_loss", "all_params"]


@lru_cache(maxsize=None)
def tiny_study():
    cfg = cs.check_params(quick=True, strategies=TINY, seeds=[0, 1, 2])
    return cs.run_study(cfg)


def test_a_tiny_study_writes_the_tasks_and_acc_bwt_with_intervals(tmp_path):
    study = tiny_study()
    rows, summary = study.rows, study.summary
    assert list(rows.columns) == cs.COLUMNS and list(summary.columns) == cs.SUMMARY_COLUMNS
    assert len(rows) == len(TINY) * 2 * 3 * 6  # strategies x frameworks x seeds x tasks
    assert set(rows.setting) == {"none", "joint", "fine-tuning"}
    exact = rows[(rows.strategy == "split_head") & (rows.task > 0)]
    assert (exact.drift_max == 0).all()
    assert len(summary) == len(TINY) * 2 and (summary.n_seeds == 3).all()
    tf1, torch = (summary[summary.framework == f].set_index("strategy") for f in ("tf1",
                                                                                   "torch"))
    assert np.abs(tf1.acc_mean - torch.acc_mean).max() < 1e-6
    paths = cs.write(study, tmp_path)
    back = pd.read_csv(paths[0])
    # ACC and BWT and their intervals are recomputable from the per-task rows
    for _, s in pd.read_csv(paths[1]).iterrows():
        part = back[(back.strategy == s.strategy) & (back.framework == s.framework)]
        per_seed = np.array([cs.acc_bwt(g.to_dict("records")) for _, g in part.groupby("seed")])
        for i, metric in enumerate(("acc", "bwt")):
            values = per_seed[:, i]
            assert s[f"{metric}_mean"] == pytest.approx(values.mean(), abs=1e-15)
            if values.std() > 0:
                assert (s[f"{metric}_ci_low"], s[f"{metric}_ci_high"]) == pytest.approx(
                    scipy_stats.t.interval(0.95, 2, loc=values.mean(),
                                           scale=scipy_stats.sem(values)), abs=1e-12)
    assert back[back.task == 0].class_new.isna().all()
    answer = csr.answer_markdown(pd.read_csv(paths[1]))
    assert "Ceiling, joint training" in answer and "Floor, fine-tuning" in answer
    assert "ACC" in answer and "BWT" in answer and "[" in answer
    assert len(csr.plot_acc_bwt(pd.read_csv(paths[1])).axes) == 1
    assert len(csr.recall_matrix(back)) == len(TINY)
    csr.plot_class_accuracy(back)
    sweep = pd.read_csv(paths[2])
    assert list(sweep.columns) == cs.SWEEP_COLUMNS and sweep.selected.sum() == len(TINY)


@pytest.mark.parametrize("kwargs, name", [(dict(quick=1), "quick"), (dict(quick=True, seeds=[]),
                                                                      "seeds")])
def test_bad_parameters_are_refused_in_one_line(kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name}: got "):
        cs.check_params(**kwargs)


@pytest.mark.slow
def test_notebook_runs_quick_and_writes_the_csv(tmp_path):
    import papermill as pm

    pm.execute_notebook(str(ROOT / "notebooks" / "class_sequence.ipynb"),
                        str(tmp_path / "out.ipynb"),
                        parameters=dict(quick=True, reports_dir=str(tmp_path)),
                        kernel_name="python3", cwd=str(ROOT / "notebooks"), progress_bar=False)
    rows = pd.read_csv(tmp_path / "class_sequence.csv")
    assert list(rows.columns) == cs.COLUMNS and set(rows.framework) == {"tf1", "torch"}
    assert rows.seed.nunique() >= 2 and set(rows.strategy) == set(strategy_settings.strategies())
    summary = pd.read_csv(tmp_path / "class_sequence_summary.csv")
    assert (summary.n_seeds >= 2).all() and summary.acc_mean.notna().all()
