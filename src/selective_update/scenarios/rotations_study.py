"""The rotations benchmark as a study: the paper's rows, the study's rows chosen on validation
within a cost limit, every row on every seed and framework, and the files it writes.

    rotations.csv          one row per row x setting x framework x seed x epochs x task (-1:
                           before training), acc_0 .. acc_19: R and the initial accuracies, so
                           ACC, BWT and FWT are recomputable from it
    rotations_summary.csv  per row x setting x framework x epochs: n_seeds, ACC, BWT, FWT (mean
                           and 95% t interval), seconds per run, its ratio to the fine-tune run of
                           the same seed, and the paper's ACC and BWT where it has the row
    rotations_sweep.csv    the validation sweep: every point, its ACC/BWT, its cost, the choice;
                           timed_for: the frameworks whose rows it chose (the batch runs one
                           part per framework, and each part times the sweep again, in torch)

The rule (settings.ROTATIONS_COST_LIMIT): on the validation split, for each of the study's
strategies, the highest ACC among the points that took at most ROTATIONS_COST_LIMIT times the
fine-tune run of the same seed (a point is stopped once it is over); ties go to the higher BWT,
then the cheaper point. The i.i.d. bound's learning rate: the highest validation ACC.
"""
from __future__ import annotations

import itertools

import numpy as np

from .. import validation
from ..files import tidy
from ..progress import progress
from ..settings import ROTATIONS_COST_LIMIT, ROTATIONS_GRID, ROTATIONS_QUICK_GRID
from . import rotations, rotations_data, stages, stats
from .rotations import PAPER_ROWS, Row

# Table 3 of the arXiv version (ACC, BWT), from a transcription of the paper: single runs.
PAPER = {("single", 1): (0.53, -0.08), ("single", 2): (0.49, -0.25), ("single", 5): (0.43, -0.40),
         ("iid", 1): (0.83, -0.00), ("iid", 2): (0.87, -0.00), ("iid", 5): (0.89, -0.00),
         ("ewc", 1): (0.55, -0.19), ("ewc", 2): (0.59, -0.17), ("ewc", 5): (0.61, -0.11),
         ("gem", 1): (0.86, 0.05), ("gem", 2): (0.88, 0.02), ("gem", 5): (0.89, -0.02),
         ("independent", 1): (0.56, -0.00), ("independent", 2): (0.64, -0.00),
         ("independent", 5): (0.67, -0.00), ("multimodal", 1): (0.76, -0.02),
         ("multimodal", 2): (0.72, -0.11), ("multimodal", 5): (0.59, -0.28)}
# Table 1, CPU seconds per run on rotations.
PAPER_SECONDS = {"single": 11, "independent": 16, "multimodal": 13, "ewc": 169, "gem": 135}
NOT_RUN = {"independent": "not built: 20 separate 784-5-5-10 nets (shown as published only)",
           "multimodal": "not built: a task-specific input layer (shown as published only)",
           "split_head": "one head per output unit: every task trains all ten outputs, so no "
                         "unit's head can be frozen",
           "grow": "grows new hidden units for new outputs; here every task shares all ten"}
ACCS = [f"acc_{j}" for j in range(rotations_data.N_TASKS)]
KEYS = ["row", "strategy", "setting", "framework", "epochs"]
COLUMNS = KEYS + ["seed", "task", "seconds", "cost_ratio"] + ACCS
ORDER = ["row", "setting", "framework", "epochs", "seed", "task"]
METRICS = ("acc", "bwt", "fwt")
SUMMARY_COLUMNS = KEYS + ["n_seeds"] + [f"{m}_{s}" for m in METRICS for s in stats.SUFFIXES] + [
    "bwt_formula_mean", "seconds_per_run", "cost_ratio", "paper_acc", "paper_bwt"]
SWEEP_COLUMNS = ["timed_for", "row", "strategy", "setting", "seed", "epochs", "acc", "bwt",
                 "seconds", "cost_ratio", "within_limit", "selected"]
FILES = ("rotations.csv", "rotations_summary.csv", "rotations_sweep.csv")


def check_params(*, quick, reports_dir=None, seeds=None, frameworks=None, n_tasks=None) -> dict:
    """Validate notebooks/rotations.ipynb's parameters; return the grid they select.

    n_tasks: fewer than the protocol's 20 tasks, for tests (None: 20)."""
    validation.check_bool("quick", quick)
    reports_dir = validation.check_folder("reports_dir", reports_dir)
    grid = {k: (dict(v) if isinstance(v, dict) else list(v) if isinstance(v, list) else v)
            for k, v in (ROTATIONS_QUICK_GRID if quick else ROTATIONS_GRID).items()}
    if seeds is not None:
        grid["seeds"] = [validation.check_int("seeds", s, 0) for s in validation.check_list(
            "seeds", seeds, lambda v: validation.check_int("seeds", v, 0), "integers >= 0")]
    if frameworks is not None:
        grid["frameworks"] = validation.check_list(
            "frameworks", frameworks, lambda v: validation.check_choice("frameworks", v,
                                                                        ("torch", "tf1")),
            "torch, tf1")
    grid["quick"] = bool(quick)
    grid["n_tasks"] = rotations_data.N_TASKS if n_tasks is None else validation.check_int(
        "n_tasks", n_tasks, 2)
    if grid["n_tasks"] > rotations_data.N_TASKS:
        validation.fail("n_tasks", n_tasks, f"None or an integer in 2..{rotations_data.N_TASKS}")
    return dict(quick=bool(quick), reports_dir=reports_dir, grid=grid)


def candidates(grid) -> list:
    """The study's rows to sweep, one Row per (strategy, lr, memory, option values)."""
    rows = []
    for strategy, spec in grid["study"].items():
        options = spec.get("options", {})
        for lr, memory, values in itertools.product(spec["lrs"], spec["memories"],
                                                    itertools.product(*options.values())):
            chosen = dict(zip(options, values))
            setting = ",".join([f"lr={lr}", f"memory={memory}"]
                               + [f"{k}={v}" for k, v in chosen.items()])
            rows.append(Row(strategy, strategy, lr, chosen, memory=memory, setting=setting))
    return rows


def iid_rows(grid) -> list:
    """The i.i.d. bound at each learning rate of the sweep."""
    base = PAPER_ROWS[1]
    return [Row("iid", base.strategy, lr, shuffled=True, setting=f"lr={lr}")
            for lr in grid["iid_lrs"]]


def paper_rows(grid) -> list:
    """The paper's rows as run (quick: GEM with grid["gem_memories"] a task)."""
    rows = [r for r in PAPER_ROWS if not r.shuffled]
    if grid.get("gem_memories"):
        rows = [Row(r.name, r.strategy, r.lr, r.options, grid["gem_memories"], r.memory_kind,
                    setting=f"memory={grid['gem_memories']}") if r.name == "gem" else r
                for r in rows]
    return rows


def run_sweep(grid):
    """Run the sweep on validation (torch, sweep seeds): the fine-tune run first, then each
    point stopped once it costs more than the limit; return (rows, skipped, None)."""
    import pandas as pd

    out = []
    for seed in grid["sweep_seeds"]:
        base = rotations.run_row(PAPER_ROWS[0], "torch", seed, "validation",
                                 n_tasks=grid["n_tasks"])
        budget = ROTATIONS_COST_LIMIT * base["seconds"]
        for row in progress(iid_rows(grid) + candidates(grid), desc="sweep"):
            result = rotations.run_row(row, "torch", seed, "validation", n_tasks=grid["n_tasks"],
                                       budget=None if row.shuffled else budget)
            scores = rotations.metrics(result)
            out.append(dict(timed_for="+".join(grid["frameworks"]), row=row.name,
                            strategy=row.strategy, setting=row.setting,
                            seed=seed, epochs=1, acc=scores["acc"], bwt=scores["bwt"],
                            seconds=result["seconds"],
                            cost_ratio=result["seconds"] / base["seconds"],
                            within_limit=row.shuffled or not result["over_budget"]))
    skipped = pd.DataFrame([dict(row=k, reason=v) for k, v in NOT_RUN.items()])
    return pd.DataFrame(out, columns=SWEEP_COLUMNS[:-1]), skipped, None


def select(sweep):
    """Mark each row's chosen setting by the rule (the module's docstring)."""
    mean = sweep.groupby(["row", "setting"], sort=True).agg(
        acc=("acc", "mean"), bwt=("bwt", "mean"), seconds=("seconds", "mean"),
        within=("within_limit", "all")).reset_index()
    chosen = set()
    for _, g in mean.groupby("row", sort=True):
        g = g[g.within & np.isfinite(g.acc)]
        if len(g):
            pick = g.sort_values(["acc", "bwt", "seconds"], ascending=[False, False, True],
                                 kind="mergesort").iloc[0]
            chosen.add((pick.row, pick.setting))
    sweep = sweep.copy()
    sweep["selected"] = [(r, s) in chosen for r, s in zip(sweep.row, sweep.setting)]
    return tidy(sweep[SWEEP_COLUMNS], ["timed_for", "row", "setting", "seed"])


def chosen_rows(sweep, grid) -> list:
    """The rows of the final runs: the paper's, the i.i.d. bound and the study's chosen ones."""
    picked = set(zip(sweep[sweep.selected].row, sweep[sweep.selected].setting))
    swept = [r for r in iid_rows(grid) + candidates(grid) if (r.name, r.setting) in picked]
    return paper_rows(grid) + swept


def run_final(sweep, grid):
    """Run every row on every seed, framework and epochs on the test split (rotations.csv)."""
    import pandas as pd

    rows = chosen_rows(sweep, grid)
    plan = [(seed, fw, epochs) for seed in grid["seeds"] for fw in grid["frameworks"]
            for epochs in grid["epochs"]]
    out = []
    for seed, framework, epochs in progress(plan, desc="final runs"):
        base = None
        for row in rows:  # the fine-tune row first: every ratio is to it, side by side
            result = rotations.run_row(row, framework, seed, "test", epochs, grid["n_tasks"])
            base = result["seconds"] if base is None else base
            common = dict(row=row.name, strategy=row.strategy, setting=row.setting,
                          framework=framework, epochs=epochs, seed=seed,
                          seconds=result["seconds"], cost_ratio=result["seconds"] / base)
            out.append(dict(common, task=-1, **dict(zip(ACCS, result["initial"]))))
            # the i.i.d. bound: its end only, as the last task's row; a diverged run: the tasks
            # it finished
            done = result["rows"] if not row.shuffled else [None] * (grid["n_tasks"] - 1) + [
                result["last"]]
            out += [dict(common, task=t, **dict(zip(ACCS, accs)))
                    for t, accs in enumerate(done) if accs is not None]
    return tidy(pd.DataFrame(out, columns=COLUMNS), ORDER)


def per_run(rows):
    """Return one row per run with its ACC, BWT (both forms) and FWT, from rotations.csv."""
    import pandas as pd

    out = []
    for key, g in rows.groupby(KEYS + ["seed"], sort=True):
        initial = g[g.task == -1][ACCS].to_numpy()[0]
        T = int(np.isfinite(initial).sum())  # the tasks of the run (20 but in tests)
        initial = initial[:T]
        trained = g[g.task >= 0].sort_values("task")
        R, last_task = trained[ACCS[:T]].to_numpy(), T - 1
        complete = len(R) == T
        result = dict(R=R if complete else None, initial=initial,
                      last=R[-1] if len(R) and trained.task.iloc[-1] == last_task else None,
                      diverged=not complete and key[0] != "iid")
        out.append(dict(zip(KEYS + ["seed"], key), seconds=g.seconds.iloc[0],
                        cost_ratio=g.cost_ratio.iloc[0], **rotations.metrics(result)))
    return pd.DataFrame(out)


def summarize(rows):
    """Return rotations_summary.csv from rotations.csv (intervals over seeds, the paper's)."""
    runs = per_run(rows)
    summary = stats.summarize(runs, KEYS, list(METRICS))
    grouped = runs.groupby(KEYS, sort=True)
    summary["bwt_formula_mean"] = grouped.bwt_formula.mean().to_numpy()
    summary["seconds_per_run"] = grouped.seconds.mean().to_numpy()
    summary["cost_ratio"] = grouped.cost_ratio.mean().to_numpy()
    paper = [PAPER.get((r, e), (np.nan, np.nan)) for r, e in zip(summary.row, summary.epochs)]
    summary["paper_acc"] = [p[0] for p in paper]
    summary["paper_bwt"] = [p[1] for p in paper]
    return tidy(summary[SUMMARY_COLUMNS], KEYS)


PIPELINE = stages.Pipeline(
    prepare=lambda hidden, seed: [rotations_data.rotation_tasks(seed, s)
                                  for s in rotations_data.SPLITS],  # made once, cached
    sweep=run_sweep, select=select, final=run_final, summarize=summarize)


def run_study(cfg) -> stages.Study:
    """The notebook's whole computation: the data, the sweep, the choice, the final runs."""
    return stages.run_study(PIPELINE, cfg)


def write(study: stages.Study, reports_dir):
    """Write FILES (the rows, the summary, the sweep) into reports_dir (atomic)."""
    return stages.write_tables(study, reports_dir, FILES)
