"""The new-class scenario (issue 9): pretrain on digits 0-8, then learn class 9 keeping 0-8.

Set-up, per hidden width and seed: the 1,200 training digits split into a fit part (the first
960) and a validation part (the last NEW_CLASS_N_VAL = 240). A 64-hidden-10 net is fitted on the
fit digits of classes 0-8 with a loss on outputs 0-8 only, so output 9's weights keep their
initial values (datasets.pretrain on the sub-network without output 9). Then every strategy
learns class 9 from one seeded batch of NEW_CLASS_BATCH fit digits of every class (su.run trains
on a fixed batch), keeping outputs 0-8. Reference sets are prefixes of a seeded order of the kept
fit digits ("all": every one of them).

Measured on a split of inputs (validation for choices, the 597 held-out digits for the final
numbers): recall_new (10-way accuracy on the 9s), accuracy_kept (10-way accuracy on 0-8),
drift_max and drift_mean (|change| of the kept logits 0-8 over every input of the split).

The sweep (torch only, validation only): every strategy x setting x optimizer x lr, one run of
max(steps) steps each, measured at every steps checkpoint. The selection rule, per hidden width,
strategy, setting and optimizer (validation metrics averaged over the sweep seeds): among the
(lr, steps) points whose outputs stayed finite and whose accuracy on 0-8 fell by at most
NEW_CLASS_MAX_ACC_DROP, the highest recall_new; ties go to lower drift_max, then fewer steps, then
the smaller lr. Where no point is admissible, the one with the highest accuracy_kept (then recall).
The chosen points run again in both frameworks and are measured on the held-out digits only.

Cost: a reference projection's work per step grows as min(m, P)^2 max(m, P) (m = 9 x protected
inputs, P parameters; x2 with corrections). Reference sets up to NEW_CLASS_FULL_REFERENCE inputs
get the whole grid, larger ones the NEW_CLASS_REDUCED_GRID, and none whose work per step exceeds
NEW_CLASS_MAX_WORK is run: the notebook lists those with their work (Study.skipped).
layer_subspace and distill protect every kept fit digit (reference "all"): their cost does not
grow with it like a Jacobian's does.
"""
from __future__ import annotations

import functools
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from .. import core, datasets, validation
from ..files import atomic_write, csv_text, tidy
from ..settings import (
    DATA_DIR,
    NEW_CLASS,
    NEW_CLASS_BATCH,
    NEW_CLASS_CORRECTED_FACTOR,
    NEW_CLASS_FULL_REFERENCE,
    NEW_CLASS_GRID,
    NEW_CLASS_MAX_ACC_DROP,
    NEW_CLASS_MAX_WORK,
    NEW_CLASS_N_VAL,
    NEW_CLASS_QUICK_GRID,
    NEW_CLASS_REDUCED_GRID,
)

KEEP = tuple(range(NEW_CLASS))
TRAIN = (NEW_CLASS,)
COLUMNS = ["strategy", "setting", "framework", "optimizer", "seed", "hidden", "recall_new",
           "accuracy_kept", "drift_max", "drift_mean", "seconds_per_step", "pareto"]
ORDER = ["hidden", "strategy", "setting", "framework", "optimizer", "seed"]
METRICS = ["recall_new", "accuracy_kept", "drift_max", "drift_mean"]
SWEEP_COLUMNS = ["hidden", "strategy", "setting", "tier", "optimizer", "seed", "lr", "steps",
                 "recall_new", "accuracy_kept", "accuracy_kept_before", "drift_max",
                 "drift_mean", "finite", "admissible", "selected"]
SWEEP_ORDER = ["hidden", "strategy", "setting", "optimizer", "seed", "lr", "steps"]
GROUP = ["hidden", "strategy", "setting", "optimizer"]
REFERENCE_STRATEGIES = ("null_space", "null_space_corrected")


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
    """Hold one set-up: the pretrained net, the batch, the kept pool and the measured splits."""

    hidden: int
    seed: int
    init: dict
    params: dict
    x: np.ndarray  # the training batch (NEW_CLASS_BATCH fit digits, every class)
    y: np.ndarray
    kept_pool: np.ndarray  # the kept fit digits in a seeded order; references are prefixes
    splits: dict = field(repr=False)  # {"validation" | "held_out": (x, y)}

    def reference(self, size):
        """Return the reference inputs for a size: None for "batch", the first n, or "all"."""
        if size == "batch":
            return None
        return self.kept_pool if size == "all" else self.kept_pool[:int(size)]

    def data(self, split):
        """Return the run's Data: the batch, and the split's digits as its held-out inputs."""
        x_eval, y_eval = self.splits[split]
        return core.Data(self.x, self.y, x_eval, y_eval)


@functools.lru_cache(maxsize=8)
def scenario(hidden, seed, data_dir=str(DATA_DIR)) -> Scenario:
    """Split the digits, pretrain on 0-8 and draw the batch for one hidden width and seed."""
    validation.check_int("hidden", hidden, 1)
    validation.check_int("seed", seed, 0)
    full = datasets.load_dataset("digits", data_dir)
    n_fit = len(full.x) - NEW_CLASS_N_VAL
    x_fit, y_fit = full.x[:n_fit], full.y[:n_fit]
    init = core.init_params((full.x.shape[1], hidden, full.y.shape[1]), seed=seed)
    with threadpool_limits(1):  # one BLAS thread: fast next to busy cores, the same bits anywhere
        params = pretrain_kept(init, x_fit, y_fit)
    rng = np.random.default_rng(seed)
    batch = rng.choice(n_fit, NEW_CLASS_BATCH, replace=False)
    kept = np.flatnonzero(y_fit.argmax(axis=1) != NEW_CLASS)
    pool = x_fit[rng.permutation(kept)]
    splits = {"validation": (full.x[n_fit:], full.y[n_fit:]),
              "held_out": (full.x_eval, full.y_eval)}
    return Scenario(hidden, seed, init, params, x_fit[batch], y_fit[batch], pool, splits)


# --- strategies and their settings ------------------------------------------------------------

def known_strategies():
    """Return every strategy su.run knows now (old and new)."""
    import selective_update as su

    return list(su.STRATEGIES)


def settings_for(strategy, grid):
    """Return the setting labels one strategy is swept over ("none" when it has no option)."""
    if strategy in REFERENCE_STRATEGIES:
        return [f"reference={r}" for r in grid["references"]]
    if strategy == "layer_subspace":
        return [f"energy={e}" for e in grid["energies"]]
    if strategy == "distill":
        return [f"distill_weight={w}" for w in grid["distill_weights"]]
    if strategy == "grow":
        return [f"grow={g}" for g in grid["grow"]]
    return ["none"]


def setting_kwargs(setting, sc: Scenario) -> dict:
    """Turn a setting label into su.run keyword arguments for one scenario."""
    name, _, value = setting.partition("=")
    if name == "reference":
        ref = sc.reference(value)
        return {} if ref is None else {"reference": ref}
    if name == "energy":  # the layer subspace of every kept fit digit (cheap: O(d^2) per layer)
        return {"energy": float(value), "reference": sc.reference("all")}
    if name == "distill_weight":  # the kept outputs' change on every kept fit digit
        return {"distill_weight": float(value), "reference": sc.reference("all")}
    if name == "grow":
        return {"grow": int(value)}
    return {}


def protected(sc: Scenario, setting) -> int:
    """Return how many inputs a reference setting protects (0 for the other settings)."""
    name, _, value = setting.partition("=")
    if name != "reference":
        return 0
    return NEW_CLASS_BATCH if value == "batch" else len(sc.reference(value))


def work(sc: Scenario, strategy, setting) -> float:
    """Estimate a reference projection's work per step (0 for the strategies without a solve)."""
    if strategy not in REFERENCE_STRATEGIES:
        return 0.0
    m, P = len(KEEP) * protected(sc, setting), core.n_params(sc.params)
    factor = NEW_CLASS_CORRECTED_FACTOR if strategy == "null_space_corrected" else 1
    return float(min(m, P) ** 2 * max(m, P) * factor)


def tier(sc: Scenario, strategy, setting, quick=False) -> str:
    """Return how much of the sweep a setting gets: "full", "reduced" or "skipped"."""
    if work(sc, strategy, setting) > NEW_CLASS_MAX_WORK:
        return "skipped"
    small = protected(sc, setting) <= NEW_CLASS_FULL_REFERENCE
    return "full" if quick or strategy not in REFERENCE_STRATEGIES or small else "reduced"


def run(sc: Scenario, strategy, setting, framework, optimizer, lr, steps, split):
    """Run one strategy from the pretrained net, measuring the kept logits on one split."""
    import selective_update as su

    with warnings.catch_warnings():  # a reference larger than the null space is the point here
        warnings.simplefilter("ignore", core.TrivialNullSpaceWarning)
        # a correction that stops above its tolerance on the reference: the held-out drift,
        # which is what this scenario reports, is measured either way
        warnings.simplefilter("ignore", core.RestoreWarning)
        return su.run(strategy, framework, params=sc.params, data=sc.data(split), keep=KEEP,
                      train=TRAIN, optimizer=optimizer, lr=lr, steps=steps,
                      **setting_kwargs(setting, sc))


def metrics(outputs, start, y) -> dict:
    """Return recall_new, accuracy_kept, drift_max and drift_mean of outputs against start."""
    labels = y.argmax(axis=1)
    new = labels == NEW_CLASS
    pred = outputs.argmax(axis=1)
    change = np.abs(outputs[:, list(KEEP)] - start[:, list(KEEP)])
    finite = bool(np.all(np.isfinite(outputs)))
    return dict(recall_new=float((pred[new] == NEW_CLASS).mean()),
                accuracy_kept=float((pred[~new] == labels[~new]).mean()),
                drift_max=float(change.max()) if finite else np.inf,
                drift_mean=float(change.mean()) if finite else np.inf, finite=finite)


# --- parameters, sweep, selection, final runs ---------------------------------------------------

def check_params(*, quick, reports_dir=None, hidden=None, seeds=None, strategies=None) -> dict:
    """Validate notebooks/new_class.ipynb's parameters; return the grid they select."""
    validation.check_bool("quick", quick)
    reports_dir = validation.check_folder("reports_dir", reports_dir)
    grid = {k: (dict(v) if isinstance(v, dict) else list(v))
            for k, v in (NEW_CLASS_QUICK_GRID if quick else NEW_CLASS_GRID).items()}
    if hidden is not None:
        grid["hidden"] = [int(h) for h in validation.check_list(
            "hidden", hidden, lambda v: validation.check_int("hidden", v, 1), "integers >= 1")]
    if seeds is not None:
        grid["seeds"] = [int(s) for s in validation.check_list(
            "seeds", seeds, lambda v: validation.check_int("seeds", v, 0), "integers >= 0")]
    grid["quick"] = bool(quick)
    known = known_strategies()
    grid["strategies"] = known if strategies is None else validation.check_list(
        "strategies", strategies, lambda v: validation.check_choice("strategies", v, known),
        ", ".join(known))
    return dict(quick=bool(quick), reports_dir=reports_dir, grid=grid)


@dataclass
class Study:
    """What the scenario measured: the validation sweep, the chosen points, the final rows."""

    grid: dict
    sweep: "object"  # pandas DataFrame, SWEEP_COLUMNS (no timings: byte-stable)
    rows: "object"  # pandas DataFrame, COLUMNS: one row per final run
    seconds: dict = field(default_factory=dict)  # stage -> wall seconds
    sweep_seconds: "object" = None  # pandas DataFrame: sweep wall seconds per strategy x setting
    skipped: "object" = None  # pandas DataFrame: the settings too costly to run, with their work


def run_sweep(grid):
    """Run the torch sweep on the validation split; return (rows, seconds, skipped settings)."""
    import pandas as pd

    rows, costs, skipped = [], [], []
    for hidden in grid["hidden"]:
        for seed in grid["seeds"]:
            sc = scenario(hidden, seed)
            for strategy in grid["strategies"]:
                for setting in settings_for(strategy, grid):
                    amount = work(sc, strategy, setting)
                    level = tier(sc, strategy, setting, grid.get("quick", False))
                    if level == "skipped":
                        skipped.append(dict(hidden=hidden, seed=seed, strategy=strategy,
                                            setting=setting, work=amount))
                        continue
                    start = time.perf_counter()
                    points = grid if level == "full" else NEW_CLASS_REDUCED_GRID
                    rows += _sweep_setting(sc, strategy, setting, level, points)
                    costs.append(dict(hidden=hidden, seed=seed, strategy=strategy,
                                      setting=setting, tier=level, work=amount,
                                      seconds=time.perf_counter() - start))
    frame = pd.DataFrame(rows)
    frame["admissible"] = frame["finite"] & (
        frame["accuracy_kept"] >= frame["accuracy_kept_before"] - NEW_CLASS_MAX_ACC_DROP - 1e-12)
    return frame, pd.DataFrame(costs), pd.DataFrame(
        skipped, columns=["hidden", "seed", "strategy", "setting", "work"])


def _sweep_setting(sc, strategy, setting, level, points):
    """Run one setting over the optimizers and lrs, measured at every steps checkpoint."""
    y_val = sc.splits["validation"][1]
    rows = []
    for optimizer in points["optimizers"]:
        for lr in points["lrs"][optimizer]:
            r = run(sc, strategy, setting, "torch", optimizer, lr, max(points["steps"]),
                    "validation")
            before = metrics(r.eval_outputs[0], r.eval_outputs[0], y_val)
            for steps in points["steps"]:
                m = metrics(r.eval_outputs[steps], r.eval_outputs[0], y_val)
                rows.append(dict(hidden=sc.hidden, strategy=strategy, setting=setting,
                                 tier=level, optimizer=optimizer, seed=sc.seed, lr=lr,
                                 steps=steps, accuracy_kept_before=before["accuracy_kept"], **m))
    return rows


def select(sweep):
    """Mark each group's chosen (lr, steps) by the documented rule; return the sweep with it."""
    mean = sweep.groupby(GROUP + ["lr", "steps"], sort=True).agg(
        recall_new=("recall_new", "mean"), accuracy_kept=("accuracy_kept", "mean"),
        drift_max=("drift_max", "mean"), admissible=("admissible", "all")).reset_index()
    chosen = []
    for _, g in mean.groupby(GROUP, sort=True):
        ok = g[g.admissible]
        if len(ok):
            pick = ok.sort_values(["recall_new", "drift_max", "steps", "lr"],
                                  ascending=[False, True, True, True], kind="mergesort")
        else:
            pick = g.sort_values(["accuracy_kept", "recall_new", "steps", "lr"],
                                 ascending=[False, False, True, True], kind="mergesort")
        chosen.append(pick.iloc[0][GROUP + ["lr", "steps"]])
    keys = {tuple(c) for c in chosen}
    sweep = sweep.copy()
    sweep["selected"] = [tuple(r) in keys for r in sweep[GROUP + ["lr", "steps"]].itertuples(
        index=False)]
    return tidy(sweep[SWEEP_COLUMNS], SWEEP_ORDER)


def chosen_points(sweep):
    """Return the selected (hidden, strategy, setting, optimizer, lr, steps) points."""
    points = sweep[sweep.selected][GROUP + ["lr", "steps"]].drop_duplicates()
    return [dict(zip(points.columns, p)) for p in points.itertuples(index=False)]


def run_final(points, grid, frameworks=core.FRAMEWORKS):
    """Run the chosen points in both frameworks, measured on the held-out digits only."""
    import pandas as pd

    rows = []
    for p in points:
        for seed in grid["seeds"]:
            sc = scenario(int(p["hidden"]), seed)
            y_test = sc.splits["held_out"][1]
            for framework in frameworks:
                r = run(sc, p["strategy"], p["setting"], framework, p["optimizer"],
                        float(p["lr"]), int(p["steps"]), "held_out")
                m = metrics(r.eval_outputs[-1], r.eval_outputs[0], y_test)
                rows.append(dict(strategy=p["strategy"], setting=p["setting"],
                                 framework=framework, optimizer=p["optimizer"], seed=seed,
                                 hidden=int(p["hidden"]),
                                 **{k: m[k] for k in METRICS},
                                 seconds_per_step=float(np.median(r.step_seconds))))
    frame = pd.DataFrame(rows, columns=COLUMNS[:-1])
    frame["pareto"] = pareto(frame)
    return tidy(frame[COLUMNS], ORDER)


def pareto(frame):
    """Flag rows no other row of the same hidden width and framework beats on both axes.

    A row is on the front unless another row has both a higher recall_new and a lower
    drift_max; rows with a non-finite drift or recall are never on it.
    """
    import pandas as pd

    flags = pd.Series(False, index=frame.index)
    for _, g in frame.groupby(["hidden", "framework"], sort=False):
        recall, drift = g["recall_new"].to_numpy(float), g["drift_max"].to_numpy(float)
        ok = np.isfinite(recall) & np.isfinite(drift)
        beaten = ((recall[None, :] > recall[:, None]) & (drift[None, :] < drift[:, None])
                  & ok[None, :]).any(axis=1)
        flags[g.index] = ok & ~beaten
    return flags.astype(bool)


def run_study(cfg) -> Study:
    """Run the sweep, select, and run the final points: the notebook's whole computation."""
    from ..study.grid import deterministic

    deterministic()
    grid, seconds = cfg["grid"], {}
    start = time.perf_counter()
    for hidden in grid["hidden"]:
        for seed in grid["seeds"]:
            scenario(hidden, seed)
    seconds["pretraining"] = time.perf_counter() - start
    start = time.perf_counter()
    sweep, costs, skipped = run_sweep(grid)
    seconds["sweep (torch, validation)"] = time.perf_counter() - start
    sweep = select(sweep)
    start = time.perf_counter()
    rows = run_final(chosen_points(sweep), grid)
    seconds["final runs (tf1 + torch, held out)"] = time.perf_counter() - start
    return Study(grid, sweep, rows, seconds, costs, skipped)


def write(study: Study, reports_dir):
    """Write new_class.csv and new_class_sweep.csv into reports_dir (atomic); return the paths."""
    if reports_dir is None:
        return []
    paths = [Path(reports_dir) / "new_class.csv", Path(reports_dir) / "new_class_sweep.csv"]
    atomic_write(paths[0], csv_text(study.rows))
    atomic_write(paths[1], csv_text(study.sweep))
    return paths
