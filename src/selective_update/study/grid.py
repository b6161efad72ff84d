"""One strategy notebook's grid: its parameters, its set-ups and its runs in both frameworks.

notebooks/strategy.ipynb calls check_params, then run_grid; notebooks/00_seed_answer.ipynb calls
seed_setup. The batch (`python -m selective_update study`) runs those notebooks.
"""
from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field

import numpy as np

from .. import core, datasets, validation
from ..core import verdicts
from ..files import tidy
from ..settings import DEFAULT_HIDDEN, DEFAULT_N_SAMPLE, LR_FACTORS
from . import results

FAULTS = ("raise", "hang", "die")  # test hook: make one run fail on purpose


# --- parameters of notebooks/strategy.ipynb -------------------------------------------------------

def _optimizer(v):
    validation.check_choice("optimizer", v, core.OPTIMIZERS)


def _decay(v):
    validation.check_real("weight_decay", v, 0.0)


def _count(v):
    validation.check_int("count", v, 0)


def check_params(*, strategy, dataset, optimizers, weight_decays, warm_start_steps, lr, steps,
                 seeds, n_sample=None, hidden=None, keep=None, train=None, dtype="float64",
                 results_dir=None, inject_fault=None) -> dict:
    """Validate every parameter of notebooks/strategy.ipynb; raise ValueError naming the first bad.

    Returns the parameters normalized (keep/train resolved to the dataset's defaults).
    """
    validation.check_choice("strategy", strategy, core.STRATEGIES)
    validation.check_choice("dataset", dataset, datasets.DATASETS)
    optimizers = validation.check_list("optimizers", optimizers, _optimizer,
                                       ", ".join(core.OPTIMIZERS))
    weight_decays = [float(v) for v in validation.check_list("weight_decays", weight_decays, _decay,
                                                              "finite numbers >= 0")]
    warm_start_steps = [int(v) for v in validation.check_list(
        "warm_start_steps", warm_start_steps, _count, "integers >= 0")]
    validation.check_real("lr", lr, 0.0, strict=True)
    validation.check_int("steps", steps, 1)
    seeds = [int(v) for v in validation.check_list("seeds", seeds, _count, "integers >= 0")]
    hidden = DEFAULT_HIDDEN[dataset] if hidden is None else hidden
    validation.check_int("hidden", hidden, 1)
    validation.check_choice("dtype", dtype, core.DTYPES)
    results_dir = validation.check_folder("results_dir", results_dir)
    if inject_fault is not None and inject_fault not in FAULTS:
        validation.fail("inject_fault", inject_fault, "None, " + ", ".join(FAULTS))
    setup = _prepare(dataset, n_sample, hidden, seeds[0], keep, train)  # n_sample, keep, train
    return dict(strategy=strategy, dataset=dataset, optimizers=optimizers,
                weight_decays=weight_decays, warm_start_steps=warm_start_steps, lr=float(lr),
                steps=int(steps), seeds=seeds, n_sample=len(setup.data.x), hidden=int(hidden),
                keep=list(setup.keep), train=list(setup.train), dtype=dtype,
                results_dir=results_dir,
                inject_fault=inject_fault)


def seed_setup(*, lr=0.1, steps=1, seed=0, hidden=4):
    """Validate notebooks/00_seed_answer.ipynb's parameters; return its toy Setup."""
    validation.check_real("lr", lr, 0.0, strict=True)
    validation.check_int("steps", steps, 1)
    validation.check_int("seed", seed, 0)
    validation.check_int("hidden", hidden, 1)
    return datasets.prepare("toy", hidden=hidden, seed=seed)


_SETUPS: dict = {}


def _prepare(dataset, n_sample, hidden, seed, keep, train):
    # key on the resolved values, so check_params (defaults) and run_grid (filled in) share it;
    # repr keeps True apart from 1, so a bad value never hits a cached good one
    default_keep, default_train = datasets.default_outputs(dataset)
    key = repr((dataset, DEFAULT_N_SAMPLE[dataset] if n_sample is None else n_sample,
                DEFAULT_HIDDEN[dataset] if hidden is None else hidden, seed,
                tuple(default_keep if keep is None else keep),
                tuple(default_train if train is None else train)))
    if key not in _SETUPS:
        _SETUPS[key] = datasets.prepare(dataset, n_sample=n_sample, hidden=hidden, seed=seed,
                                        keep=keep, train=train)
    return _SETUPS[key]


# --- one notebook's grid --------------------------------------------------------------------------

@dataclass
class Grid:
    """What one strategy notebook measured."""

    cfg: dict
    rows: "object"  # pandas DataFrame, one row per framework x set-up x seed x step
    sweep: "object"  # pandas DataFrame, one-step drift at several lr
    results: dict = field(default_factory=dict)  # (fw, optimizer, wd, warm, seed) -> RunResult
    verdicts: "object" = None  # pandas DataFrame, one row per run: promise, holds, measured


def deterministic(threads=1):
    """Make both frameworks deterministic and single-threaded (each framework's configure()).

    One thread each: these nets are tiny, the batch runs one kernel per core, and torch's and
    TF's thread pools in one process fight over the cores (measured: torch null-space steps
    10-30x slower with the default threads next to TF). It also keeps the numbers independent
    of the machine's core count.
    """
    import selective_update as su

    for framework in core.FRAMEWORKS:
        su.backend(framework).configure(threads)


def _inject(fault):
    """The test hook: fail this run on purpose (clearly named in the error)."""
    if fault == "raise":
        raise RuntimeError("inject_fault='raise': this run fails on purpose (test hook)")
    if fault == "hang":
        time.sleep(10 ** 6)
    if fault == "die":  # the kernel is killed mid-run (as by the OOM killer)
        os.kill(os.getpid(), signal.SIGKILL)


def _accuracy(outputs, y, classes):
    return [datasets.accuracy(o, y, classes) for o in outputs]


def run_grid(cfg) -> Grid:
    """Run the strategy over the grid in both frameworks; return tidy rows and the lr sweep."""
    import pandas as pd

    import selective_update as su

    _inject(cfg.get("inject_fault"))
    deterministic()
    strategy, dataset = cfg["strategy"], cfg["dataset"]
    rows, sweep, runs, judged = [], [], {}, []
    for seed in cfg["seeds"]:
        setup = _prepare(dataset, cfg["n_sample"], cfg["hidden"], seed, cfg["keep"], cfg["train"])
        common = dict(params=setup.params, data=setup.data, keep=setup.keep, train=setup.train,
                      dtype=cfg["dtype"])
        if core.STRATEGIES[strategy].memory:  # gem and ewc keep an earlier task's loss
            common["reference"] = datasets.memory_for(setup)
        for fw in core.FRAMEWORKS:
            for opt in cfg["optimizers"]:
                for wd in cfg["weight_decays"]:
                    for warm in cfg["warm_start_steps"]:
                        set_up = dict(optimizer=opt, weight_decay=wd, warm_start_steps=warm)
                        r = su.run(strategy, fw, lr=cfg["lr"], steps=cfg["steps"], **set_up,
                                   **common)
                        runs[(fw, opt, wd, warm, seed)] = r
                        promised = r.promise
                        half, ratio, halved = None, np.nan, None
                        if promised in ("first_order", "reference_no_loss_rise"):
                            # halve the strategy's own step only: same warm start, same state
                            halved = su.run(strategy, fw, lr=cfg["lr"] / 2, steps=1, **set_up,
                                            warm_start_lr=cfg["lr"], **common)
                            half = halved.drift_train[1]
                            ratio = verdicts.drift_ratio(r.drift_train[1], half)
                        verdict = verdicts.promise_holds(
                            promised, r.drift_train, r.drift_eval, dtype=cfg["dtype"],
                            drift_train_half_lr=half, restore_residual=r.restore_residual,
                            drift_reference=r.drift_reference, memory_loss=r.memory_loss,
                            memory_loss_half_lr=None if halved is None else halved.memory_loss)
                        judged.append(dict(dataset=dataset, strategy=strategy, framework=fw,
                                           **set_up, seed=seed, promise=promised,
                                           holds=verdict.holds, measured=verdict.measured))
                        if dataset == "digits":
                            y = setup.data.y_eval
                            acc_keep = _accuracy(r.eval_outputs, y, setup.keep)
                            acc_train = _accuracy(r.eval_outputs, y, setup.train)
                        else:
                            acc_keep = acc_train = [np.nan] * (cfg["steps"] + 1)
                        for step in range(cfg["steps"] + 1):
                            rows.append(dict(
                                dataset=dataset, strategy=strategy, framework=fw, optimizer=opt,
                                weight_decay=wd, warm_start_steps=warm, lr=cfg["lr"], seed=seed,
                                step=step, dtype=cfg["dtype"], n_sample=cfg["n_sample"],
                                hidden=cfg["hidden"], loss=float(r.loss[step]),
                                train_loss=float(r.train_loss[step]),
                                drift_train=float(r.drift_train[step]),
                                drift_eval=float(r.drift_eval[step]), acc_keep=acc_keep[step],
                                acc_train=acc_train[step], promise=promised,
                                holds=verdict.holds, drift_ratio=ratio))
            if seed == cfg["seeds"][0]:
                wd, warm = cfg["weight_decays"][0], cfg["warm_start_steps"][0]
                for opt in cfg["optimizers"]:
                    for factor in LR_FACTORS:
                        r = su.run(strategy, fw, lr=cfg["lr"] * factor, steps=1, optimizer=opt,
                                   weight_decay=wd, warm_start_steps=warm,
                                   warm_start_lr=cfg["lr"], **common)
                        sweep.append(dict(dataset=dataset, strategy=strategy, framework=fw,
                                          optimizer=opt, weight_decay=wd, warm_start_steps=warm,
                                          seed=seed, lr=cfg["lr"] * factor,
                                          drift_train=float(r.drift_train[1]),
                                          drift_eval=float(r.drift_eval[1]), promise=r.promise))
    rows = tidy(pd.DataFrame(rows, columns=results.RESULT_COLUMNS), results.RESULT_ORDER)
    judged = tidy(pd.DataFrame(judged, columns=results.VERDICT_COLUMNS),
                          results.VERDICT_ORDER)
    sweep = tidy(pd.DataFrame(sweep, columns=results.SWEEP_COLUMNS), results.SWEEP_ORDER)
    return Grid(cfg, rows, sweep, runs, judged)
