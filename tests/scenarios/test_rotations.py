"""GEM's MNIST Rotations: the protocol's rows, the choice rule, the files and their summary, the
page's reproduction check; on 3 tasks where a whole run would take minutes."""
import numpy as np
import pandas as pd
import pytest

from selective_update.scenarios import continual_metrics, rotations, rotations_report
from selective_update.scenarios import rotations_study as rs
from selective_update.settings import ROOT, ROTATIONS_COST_LIMIT

T = 3


@pytest.fixture(scope="module")
def runs():
    """single, ewc and gem on 3 tasks, seed 0, torch."""
    return {row.name: rotations.run_row(row, "torch", 0, n_tasks=T)
            for row in rotations.PAPER_ROWS if not row.shuffled}


def test_each_row_fills_R_and_the_initial_accuracies(runs):
    for name, result in runs.items():
        R, initial = result["R"], result["initial"]
        assert R.shape == (T, T) and initial.shape == (T,), name
        assert np.all((0 <= R) & (R <= 1)) and result["seconds"] > 0
        assert R[0, 0] > initial[0] + 0.1  # the first task is learned
    # gem and ewc keep more of task 0 than fine-tuning, each from its own learning rate
    assert runs["gem"]["R"][-1, 0] > runs["single"]["R"][-1, 0]
    metrics = rotations.metrics(runs["gem"])
    assert metrics["acc"] == pytest.approx(runs["gem"]["R"][-1].mean())
    assert metrics["bwt"] == pytest.approx(continual_metrics.bwt(runs["gem"]["R"]))


def test_a_row_past_its_budget_or_diverging_stops_with_nan_metrics():
    row = rotations.PAPER_ROWS[0]
    over = rotations.run_row(row, "torch", 0, n_tasks=T, budget=1e-9)
    assert over["over_budget"] and over["R"] is None and len(over["rows"]) == 0
    assert np.isnan(rotations.metrics(over)["acc"])
    wild = rotations.Row("wild", "all_params", 1e6)
    diverged = rotations.run_row(wild, "torch", 0, n_tasks=T)
    assert diverged["diverged"] and np.isnan(rotations.metrics(diverged)["bwt"])


def test_the_iid_bound_is_one_task_of_every_rotation():
    result = rotations.run_row(rotations.PAPER_ROWS[1], "torch", 0, n_tasks=T)
    assert result["R"] is None and result["last"].shape == (T,)
    m = rotations.metrics(result)
    assert m["bwt"] == 0.0 and np.isnan(m["fwt"]) and m["acc"] == pytest.approx(
        result["last"].mean())


def test_memories_are_the_last_examples_a_task_visited():
    order = rotations.visit_order(3, 2, 1000, 1)
    assert sorted(order) == list(range(1000))
    assert not np.array_equal(order, rotations.visit_order(3, 1, 1000, 1))
    stored = [(np.arange(6.0).reshape(3, 2), np.eye(3), 0), (np.ones((3, 2)), np.eye(3), 1)]
    gem = rotations._memory(rotations.PAPER_ROWS[3], stored, 2)
    assert gem.task.tolist() == [0, 0, 0, 1, 1, 1] and gem.x.shape == (6, 2)
    ewc = rotations._memory(rotations.PAPER_ROWS[2], stored, 2)
    assert ewc.task.tolist() == [1, 1, 1]  # the task just ended
    ours = rotations._memory(rotations.Row("n", "null_space", 0.1, memory=3), stored, 2)
    assert isinstance(ours, np.ndarray) and ours.shape == (6, 2)
    assert rotations._memory(rotations.PAPER_ROWS[3], [], 0) is None


@pytest.mark.parametrize("memory", [0, 1001, 2.5])
def test_a_memory_larger_than_a_task_is_refused_before_any_run(memory):
    row = rotations.Row("gem", "gem", 0.1, memory=memory, memory_kind="examples")
    with pytest.raises(ValueError) as info:
        rotations.run_row(row, "torch", 0, n_tasks=2)
    assert str(info.value).startswith(f"memory: got {memory}; allowed: None or an integer in "
                                      "1..1000") and "\n" not in str(info.value)


def test_the_rule_picks_the_best_validation_acc_within_the_cost_limit():
    sweep = pd.DataFrame([
        dict(row="null_space", strategy="null_space", setting="a", seed=0, epochs=1, acc=0.9,
             bwt=0.0, seconds=10.0, cost_ratio=ROTATIONS_COST_LIMIT + 1, within_limit=False),
        dict(row="null_space", strategy="null_space", setting="b", seed=0, epochs=1, acc=0.6,
             bwt=-0.1, seconds=3.0, cost_ratio=2.0, within_limit=True),
        dict(row="null_space", strategy="null_space", setting="c", seed=0, epochs=1, acc=0.6,
             bwt=0.0, seconds=4.0, cost_ratio=2.5, within_limit=True),
        dict(row="distill", strategy="distill", setting="d", seed=0, epochs=1, acc=np.nan,
             bwt=np.nan, seconds=1.0, cost_ratio=0.5, within_limit=True)]).assign(timed_for="torch")
    chosen = rs.select(sweep)
    assert chosen[chosen.selected].setting.tolist() == ["c"]  # ties on ACC: the higher BWT


def test_check_params_refuses_bad_input_in_one_line():
    for kwargs, name in ((dict(quick="yes"), "quick"), (dict(quick=False, seeds=[-1]), "seeds"),
                         (dict(quick=False, frameworks=["jax"]), "frameworks"),
                         (dict(quick=False, n_tasks=1), "n_tasks"),
                         (dict(quick=False, n_tasks=21), "n_tasks")):
        with pytest.raises(ValueError) as info:
            rs.check_params(**kwargs)
        assert str(info.value).startswith(f"{name}: got") and "\n" not in str(info.value)
    grid = rs.check_params(quick=True)["grid"]
    assert grid["n_tasks"] == 20 and grid["gem_memories"] == 32


def _rows():
    """rotations.csv rows of two seeds of two rows (R made up, so the metrics are known)."""
    out = []
    for seed, shift in ((0, 0.0), (1, 0.1)):
        for row in ("single", "gem"):
            base = dict(row=row, strategy=row if row == "gem" else "all_params",
                        setting="paper", framework="torch", epochs=1, seed=seed,
                        seconds=2.0 if row == "single" else 30.0,
                        cost_ratio=1.0 if row == "single" else 15.0)
            out.append(dict(base, task=-1, **{f"acc_{j}": 0.1 for j in range(T)}))
            R = np.tril(np.full((T, T), 0.8 + shift)) + np.triu(np.full((T, T), 0.3), 1)
            if row == "single":
                R[-1, :-1] -= 0.2
            out += [dict(base, task=t, **{f"acc_{j}": R[t, j] for j in range(T)})
                    for t in range(T)]
    return pd.DataFrame(out, columns=rs.COLUMNS)


def test_the_summary_recomputes_acc_bwt_fwt_from_the_rows_with_the_papers():
    summary = rs.summarize(_rows())
    single = summary[summary.row == "single"].iloc[0]
    assert single.n_seeds == 2 and single.acc_mean == pytest.approx(
        np.mean([(0.6 + 0.6 + 0.8) / 3, (0.7 + 0.7 + 0.9) / 3]))
    assert single.bwt_mean == pytest.approx(-0.2 * (T - 1) / T)
    assert single.bwt_formula_mean == pytest.approx(-0.2)
    assert single.fwt_mean == pytest.approx(0.2 * (T - 1) / T)
    assert (single.paper_acc, single.paper_bwt) == (0.53, -0.08)
    assert summary[summary.row == "gem"].iloc[0].cost_ratio == 15.0


def test_the_page_puts_the_papers_numbers_beside_ours_and_says_the_misses():
    summary = rs.summarize(_rows())
    table = rotations_report.paper_table(summary)
    assert "| GEM | paper | 0.86 / +0.05 |" in table and "as published only" in table
    checks = dict((n, ok) for n, _, _, _, ok in rotations_report.reproduction(summary))
    assert checks == {"single": False, "gem": True}  # made-up R: single far from the paper
    text = rotations_report.reproduction_markdown(summary)
    assert "**Missed**" in text and "single (fine-tune): 0.717 against 0.53, +0.187" in text
    answer = rotations_report.answer_markdown(summary)
    assert "Differences from the paper" in answer and "4,000 real MNIST digits" in answer
    assert "| GEM |" in rotations_report.brief_markdown(summary)


def test_the_page_says_whether_the_frameworks_parts_chose_alike():
    summary = rs.summarize(_rows())
    both = pd.concat([summary, summary.assign(framework="tf1")])
    assert "chose the same settings for tf1 and torch" in rotations_report.answer_markdown(both)
    study = pd.concat([both, both[both.row == "gem"].assign(row="distill", setting="lr=0.1")])
    study.loc[(study.row == "distill") & (study.framework == "tf1"), "setting"] = "lr=0.03"
    text = rotations_report.choices_markdown(study)
    assert "chose differently for `distill` (tf1: lr=0.03; torch: lr=0.1)" in text
    assert rotations_report.choices_markdown(summary) == ""  # one framework: nothing to compare


@pytest.mark.slow
def test_notebook_runs_quick_and_writes_the_csv(tmp_path):
    import papermill as pm

    pm.execute_notebook(str(ROOT / "notebooks" / "rotations.ipynb"), str(tmp_path / "out.ipynb"),
                        parameters=dict(quick=True, reports_dir=str(tmp_path), n_tasks=T,
                                        frameworks=["torch", "tf1"]),
                        kernel_name="python3", cwd=str(ROOT / "notebooks"), progress_bar=False)
    rows = pd.read_csv(tmp_path / "rotations.csv")
    assert list(rows.columns) == rs.COLUMNS and set(rows.framework) == {"torch", "tf1"}
    assert {"single", "iid", "ewc", "gem"} <= set(rows.row)
    summary = pd.read_csv(tmp_path / "rotations_summary.csv")
    assert list(summary.columns) == rs.SUMMARY_COLUMNS
    assert (summary[summary.row == "single"].cost_ratio == 1.0).all()
    assert summary.paper_acc.notna().sum() >= 4
    sweep = pd.read_csv(tmp_path / "rotations_sweep.csv")
    assert sweep.selected.any() and set(sweep.timed_for) == {"torch+tf1"}
