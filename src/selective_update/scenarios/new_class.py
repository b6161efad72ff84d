"""The new-class scenario: pretrain on digits 0-8, then learn class 9 keeping outputs 0-8.

Set-up, per hidden width and seed: the 1,200 training digits split into a fit part (the first
960) and a validation part (the last NEW_CLASS_N_VAL = 240). A 64-hidden-10 net is fitted on the
fit digits of classes 0-8 with a loss on outputs 0-8 only, so output 9's weights keep their
initial values (datasets.pretrain on the sub-network without output 9). Then every strategy
learns class 9 from all the fit digits, in mini-batches of NEW_CLASS_BATCH drawn from every class
(su.run(batch_size=32, batch_seed=seed)), for a number of epochs, keeping outputs 0-8. Reference
sets are prefixes of a seeded order of the kept fit digits ("all": every one of them). A seed sets
the initial weights (so the pretraining), the batch order and the reference draw.

Measured on a split of inputs (validation for choices, the 597 held-out digits for the final
numbers): recall_new (10-way accuracy on the 9s), accuracy_kept (10-way accuracy on 0-8),
drift_max and drift_mean (|change| of the kept logits 0-8 over every input of the split).

The sweep (torch only, validation only, the sweep seeds): every strategy x setting x optimizer x
lr, one run of max(epochs) epochs each, measured at every epochs checkpoint. The selection rule,
per hidden width, strategy and setting (validation metrics averaged over the sweep seeds): among
the (optimizer, lr, epochs) points whose outputs stayed finite and whose accuracy on 0-8 fell by
at most NEW_CLASS_MAX_ACC_DROP in every sweep seed, the highest recall_new; ties go to lower
drift_max, then fewer epochs, then the smaller lr, then the optimizer's name. Where no point is
admissible, the one with the highest accuracy_kept (then recall). The chosen points run again in
both frameworks on every seed and are measured on the held-out digits only.

new_class_summary.csv: per hidden x strategy x setting x framework x optimizer, the mean and a
95% Student t interval over seeds of recall_new, accuracy_kept and drift_max (scenarios.stats),
the pretrained net's accuracy_kept_before (mean); its pareto flag is computed on the means.

Cost: scenarios.strategy_settings.work; projections get NEW_CLASS_REDUCED_GRID in the sweep, and
none whose work per step exceeds NEW_CLASS_MAX_WORK is run: the notebook lists those with their
work (Study.skipped).
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field

import numpy as np
from threadpoolctl import threadpool_limits

from .. import core, datasets, validation
from ..files import tidy
from ..progress import progress
from ..settings import (
    DATA_DIR,
    NEW_CLASS,
    NEW_CLASS_BATCH,
    NEW_CLASS_CORRECTED_FACTOR,
    NEW_CLASS_GRID,
    NEW_CLASS_MAX_ACC_DROP,
    NEW_CLASS_MAX_WORK,
    NEW_CLASS_N_VAL,
    NEW_CLASS_QUICK_GRID,
    NEW_CLASS_REDUCED_GRID,
)
from . import stages, stats, strategy_settings

KEEP = tuple(range(NEW_CLASS))
TRAIN = (NEW_CLASS,)
COLUMNS = ["strategy", "setting", "framework", "optimizer", "seed", "hidden", "lr", "epochs",
           "recall_new", "accuracy_kept", "accuracy_all", "drift_max", "drift_mean",
           "accuracy_kept_before", "seconds_per_step"]
ORDER = ["hidden", "strategy", "setting", "framework", "optimizer", "seed"]
METRICS = ["recall_new", "accuracy_kept", "accuracy_all", "drift_max", "drift_mean"]
SUMMARY_KEYS = ["hidden", "strategy", "setting", "framework", "optimizer", "lr", "epochs"]
SUMMARY_METRICS = ["recall_new", "accuracy_kept", "drift_max"]
SUMMARY_COLUMNS = SUMMARY_KEYS + ["n_seeds"] + [f"{m}_{s}" for m in SUMMARY_METRICS
                                                for s in stats.SUFFIXES] + [
    "accuracy_kept_before", "pareto"]
SWEEP_COLUMNS = ["hidden", "strategy", "setting", "tier", "optimizer", "seed", "lr", "epochs",
                 "recall_new", "accuracy_kept", "accuracy_all", "accuracy_kept_before",
                 "drift_max", "drift_mean", "finite", "admissible", "selected"]
SWEEP_ORDER = ["hidden", "strategy", "setting", "optimizer", "seed", "lr", "epochs"]
GROUP = ["hidden", "strategy", "setting"]
POINT = ["optimizer", "lr", "epochs"]
# The files it writes, each sorted by hidden width first: the parts of a study (one per width)
# concatenate into the file one run of every width writes.
FILES = ("new_class.csv", "new_class_summary.csv", "new_class_sweep.csv")


# --- the set-up -------------------------------------------------------------------------------

def pretrain_kept(params, x, y, keep=KEEP):
    """Fit the hidden layers and the kept outputs on digits of the kept classes; leave the rest."""
    keep = list(keep)
    L = core.n_layers(params)
    rows = np.isin(y.argmax(axis=1), keep)
    sub = dict(params, **{f"W{L}": params[f"W{L}"][:, keep], f"b{L}": params[f"b{L}"][keep]})
    fitted = datasets.pretrain(sub, x[rows], y[rows][:, keep])
    W, b = params[f"W{L}"].copy(), params[f"b{L}"].copy()
    W[:, keep], b[keep] = fitted[f"W{L}"], fitted[f"b{L}"]
    return dict(fitted, **{f"W{L}": W, f"b{L}": b})


@dataclass(frozen=True)
class Scenario:
    """Hold one set-up: the pretrained net, the fit digits, the kept pool and the splits."""

    hidden: int
    seed: int
    init: dict
    params: dict
    x: np.ndarray  # every fit digit (the mini-batches are drawn from these)
    y: np.ndarray
    kept_pool: np.ndarray  # the kept fit digits in a seeded order; references are prefixes
    splits: dict = field(repr=False)  # {"validation" | "held_out": (x, y)}

    @property
    def steps_per_epoch(self) -> int:
        return len(self.x) // NEW_CLASS_BATCH

    def reference(self, size):
        """Return the reference inputs for a size: None for "batch", the first n, or "all"."""
        if size == "batch":
            return None
        return self.kept_pool if size == "all" else self.kept_pool[:int(size)]

    def data(self, split):
        """Return the run's Data: the fit digits, and the split's digits as its held-out inputs."""
        x_eval, y_eval = self.splits[split]
        return core.Data(self.x, self.y, x_eval, y_eval)


def split_digits(data_dir=DATA_DIR):
    """Return (x_fit, y_fit, {"validation": ..., "held_out": ...}) of the digits."""
    full = datasets.load_dataset("digits", data_dir)
    n_fit = len(full.x) - NEW_CLASS_N_VAL
    splits = {"validation": (full.x[n_fit:], full.y[n_fit:]),
              "held_out": (full.x_eval, full.y_eval)}
    return full.x[:n_fit], full.y[:n_fit], splits


@functools.lru_cache(maxsize=16)
def scenario(hidden, seed, data_dir=str(DATA_DIR)) -> Scenario:
    """Split the digits, pretrain on 0-8 and draw the reference order for a width and seed."""
    validation.check_int("hidden", hidden, 1)
    validation.check_int("seed", seed, 0)
    x_fit, y_fit, splits = split_digits(data_dir)
    init = core.init_params((x_fit.shape[1], hidden, y_fit.shape[1]), seed=seed)
    with threadpool_limits(1):  # one BLAS thread: fast next to busy cores, the same bits anywhere
        params = pretrain_kept(init, x_fit, y_fit)
    kept = np.flatnonzero(y_fit.argmax(axis=1) != NEW_CLASS)
    pool = x_fit[np.random.default_rng(seed).permutation(kept)]
    return Scenario(hidden, seed, init, params, x_fit, y_fit, pool, splits)


# --- settings and their cost ------------------------------------------------------------------

def settings_for(strategy, grid):
    """Return the setting labels one strategy is swept over (strategy_settings.settings_for)."""
    return strategy_settings.settings_for(strategy, grid)


def setting_kwargs(strategy, setting, sc: Scenario) -> dict:
    """Turn a setting label into su.run keyword arguments for one scenario."""
    return strategy_settings.run_kwargs(strategy, setting, sc.reference)


def work(sc: Scenario, strategy, setting) -> float:
    """Estimate a projection's work per step (0 for the strategies without a solve)."""
    protected = strategy_settings.protected_count(setting, NEW_CLASS_BATCH, sc.reference)
    return strategy_settings.work(strategy, len(KEEP), protected, core.n_params(sc.params),
                                  NEW_CLASS_CORRECTED_FACTOR)


def tier(sc: Scenario, strategy, setting, quick=False) -> str:
    """Return how much of the sweep a setting gets: "full", "reduced" or "skipped"."""
    return strategy_settings.tier(strategy, work(sc, strategy, setting), NEW_CLASS_MAX_WORK,
                                  quick)


def run(sc: Scenario, strategy, setting, framework, optimizer, lr, epochs, split):
    """Learn class 9 from the pretrained net in mini-batches, measuring one split each step."""
    return strategy_settings.run_quietly(
        strategy, framework, params=sc.params, data=sc.data(split), keep=KEEP, train=TRAIN,
        optimizer=optimizer, lr=lr, steps=int(epochs) * sc.steps_per_epoch,
        batch_size=NEW_CLASS_BATCH, batch_seed=sc.seed, **setting_kwargs(strategy, setting, sc))


def metrics(outputs, start, y) -> dict:
    """Return recall_new, accuracy_kept, drift_max and drift_mean of outputs against start."""
    labels = y.argmax(axis=1)
    new = labels == NEW_CLASS
    pred = outputs.argmax(axis=1)
    change = np.abs(outputs[:, list(KEEP)] - start[:, list(KEEP)])
    finite = bool(np.all(np.isfinite(outputs)))
    return dict(recall_new=float((pred[new] == NEW_CLASS).mean()),
                accuracy_kept=float((pred[~new] == labels[~new]).mean()),
                accuracy_all=float((pred == labels).mean()),
                drift_max=float(change.max()) if finite else np.inf,
                drift_mean=float(change.mean()) if finite else np.inf, finite=finite)


# --- parameters, sweep, selection, final runs ---------------------------------------------------

def _int_list(name, value):
    return [int(v) for v in validation.check_list(
        name, value, lambda v: validation.check_int(name, v, 0 if "seed" in name else 1),
        "integers >= 0" if "seed" in name else "integers >= 1")]


def check_params(*, quick, reports_dir=None, hidden=None, seeds=None, sweep_seeds=None,
                 strategies=None, quick_grid=NEW_CLASS_QUICK_GRID, grid=NEW_CLASS_GRID) -> dict:
    """Validate a scenario notebook's parameters; return the grid they select."""
    validation.check_bool("quick", quick)
    reports_dir = validation.check_folder("reports_dir", reports_dir)
    chosen = {k: (dict(v) if isinstance(v, dict) else list(v))
              for k, v in (quick_grid if quick else grid).items()}
    for name, value in (("hidden", hidden), ("seeds", seeds), ("sweep_seeds", sweep_seeds)):
        if value is not None:
            chosen[name] = _int_list(name, value)
    chosen["quick"] = bool(quick)
    known = strategy_settings.strategies()
    chosen["strategies"] = known if strategies is None else validation.check_list(
        "strategies", strategies, lambda v: validation.check_choice("strategies", v, known),
        ", ".join(known))
    return dict(quick=bool(quick), reports_dir=reports_dir, grid=chosen)


def sweep_plan(grid):
    """Return the sweep's (hidden, seed, strategy, setting) in order."""
    return [(hidden, seed, strategy, setting) for hidden in grid["hidden"]
            for seed in grid["sweep_seeds"] for strategy in grid["strategies"]
            for setting in settings_for(strategy, grid)]


def run_sweep(grid):
    """Run the torch sweep on the validation split; return (rows, skipped settings, seconds)."""
    import pandas as pd

    rows, costs, skipped = [], [], []
    for hidden, seed, strategy, setting in progress(sweep_plan(grid), desc="sweep"):
        sc = scenario(hidden, seed)
        amount = work(sc, strategy, setting)
        level = tier(sc, strategy, setting, grid.get("quick", False))
        if level == "skipped":
            skipped.append(dict(hidden=hidden, seed=seed, strategy=strategy, setting=setting,
                                work=amount))
            continue
        start = time.perf_counter()
        points = strategy_settings.points(strategy, grid)
        if level != "full":
            points = {**points, **NEW_CLASS_REDUCED_GRID}
        rows += _sweep_setting(sc, strategy, setting, level, points)
        costs.append(dict(hidden=hidden, seed=seed, strategy=strategy, setting=setting,
                          tier=level, work=amount, seconds=time.perf_counter() - start))
    frame = pd.DataFrame(rows, columns=[c for c in SWEEP_COLUMNS
                                        if c not in ("admissible", "selected")])
    frame["admissible"] = frame["finite"] & (
        frame["accuracy_kept"] >= frame["accuracy_kept_before"] - NEW_CLASS_MAX_ACC_DROP - 1e-12)
    return frame, pd.DataFrame(skipped, columns=["hidden", "seed", "strategy", "setting",
                                                 "work"]), pd.DataFrame(costs)


def _sweep_setting(sc, strategy, setting, level, points):
    """Run one setting over the optimizers and lrs, measured at every epochs checkpoint."""
    y_val = sc.splits["validation"][1]
    rows = []
    for optimizer in points["optimizers"]:
        for lr in points["lrs"][optimizer]:
            r = run(sc, strategy, setting, "torch", optimizer, lr, max(points["epochs"]),
                    "validation")
            before = metrics(r.eval_outputs[0], r.eval_outputs[0], y_val)
            for epochs in points["epochs"]:
                m = metrics(r.eval_outputs[epochs * sc.steps_per_epoch], r.eval_outputs[0],
                            y_val)
                rows.append(dict(hidden=sc.hidden, strategy=strategy, setting=setting,
                                 tier=level, optimizer=optimizer, seed=sc.seed, lr=lr,
                                 epochs=epochs, accuracy_kept_before=before["accuracy_kept"],
                                 **m))
    return rows


def select(sweep, group=GROUP, order=SWEEP_ORDER, columns=SWEEP_COLUMNS):
    """Mark each group's chosen (optimizer, lr, epochs) by the documented rule."""
    mean = sweep.groupby(group + POINT, sort=True).agg(
        recall_new=("recall_new", "mean"), accuracy_kept=("accuracy_kept", "mean"),
        accuracy_all=("accuracy_all", "mean"), drift_max=("drift_max", "mean"),
        admissible=("admissible", "all"), finite=("finite", "all")).reset_index()
    chosen = []
    for _, g in mean.groupby(group, sort=True):
        ok = g[g.admissible]
        if g.strategy.iloc[0] == strategy_settings.CEILING:  # the best model of every class
            pick = g[g.finite].sort_values(["accuracy_all", "epochs", "lr", "optimizer"],
                                           ascending=[False, True, True, True],
                                           kind="mergesort")
        elif len(ok):
            pick = ok.sort_values(["recall_new", "drift_max", "epochs", "lr", "optimizer"],
                                  ascending=[False, True, True, True, True], kind="mergesort")
        else:
            pick = g.sort_values(["accuracy_kept", "recall_new", "epochs", "lr", "optimizer"],
                                 ascending=[False, False, True, True, True], kind="mergesort")
        chosen.append(tuple(pick.iloc[0][group + POINT]))
    keys = set(chosen)
    sweep = sweep.copy()
    sweep["selected"] = [tuple(r) in keys for r in sweep[group + POINT].itertuples(index=False)]
    return tidy(sweep[columns], order)


def chosen_points(sweep, group=GROUP):
    """Return the selected (hidden, strategy, setting, optimizer, lr, epochs) points."""
    points = sweep[sweep.selected][group + POINT].drop_duplicates()
    return [dict(zip(points.columns, p)) for p in points.itertuples(index=False)]


def run_final(points, grid, frameworks=core.FRAMEWORKS):
    """Run the chosen points in both frameworks on every seed, measured on held-out digits."""
    import pandas as pd

    rows = []
    plan = [(p, seed) for p in points for seed in grid["seeds"]]
    for p, seed in progress(plan, desc="final runs"):
        sc = scenario(int(p["hidden"]), seed)
        y_test = sc.splits["held_out"][1]
        for framework in frameworks:
            r = run(sc, p["strategy"], p["setting"], framework, p["optimizer"], float(p["lr"]),
                    int(p["epochs"]), "held_out")
            m = metrics(r.eval_outputs[-1], r.eval_outputs[0], y_test)
            before = metrics(r.eval_outputs[0], r.eval_outputs[0], y_test)["accuracy_kept"]
            rows.append(dict(strategy=p["strategy"], setting=p["setting"], framework=framework,
                             optimizer=p["optimizer"], seed=seed, hidden=int(p["hidden"]),
                             lr=float(p["lr"]), epochs=int(p["epochs"]),
                             **{k: m[k] for k in METRICS}, accuracy_kept_before=before,
                             seconds_per_step=float(np.median(r.step_seconds))))
    return tidy(pd.DataFrame(rows, columns=COLUMNS), ORDER)


def summarize(rows):
    """Return new_class_summary.csv: intervals over seeds per final point, the front on means."""
    summary = stats.summarize(rows, SUMMARY_KEYS, SUMMARY_METRICS)
    before = rows.groupby(SUMMARY_KEYS, sort=True)["accuracy_kept_before"].mean()
    summary["accuracy_kept_before"] = before.to_numpy()  # the pretrained net's, mean over seeds
    summary["pareto"] = stats.pareto(summary, ["hidden", "framework"], "recall_new_mean",
                                     "drift_max_mean")
    return tidy(summary[SUMMARY_COLUMNS], SUMMARY_KEYS)


def pareto(frame):
    """Flag rows no other row of the same width and framework dominates (recall up, drift down),
    on a frame with recall_new and drift_max columns (stats.pareto)."""
    return stats.pareto(frame, ["hidden", "framework"], "recall_new", "drift_max")


PIPELINE = stages.Pipeline(
    prepare=scenario, sweep=run_sweep, select=select,
    final=lambda sweep, grid: run_final(chosen_points(sweep), grid), summarize=summarize)


def run_study(cfg) -> stages.Study:
    """Run the sweep, select, and run the final points: the notebook's whole computation."""
    return stages.run_study(PIPELINE, cfg)


def write(study: stages.Study, reports_dir):
    """Write FILES (the rows, the summary, the sweep) into reports_dir (atomic); return paths."""
    return stages.write_tables(study, reports_dir, FILES)
