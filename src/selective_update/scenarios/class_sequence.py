"""A sequence of new classes: pretrain on digits 0-4, then learn 5, 6, 7, 8 and 9 one at a time.

Each task learns one class (train=[c]) and keeps every output learned before it (keep=[0..c-1]),
including those added by earlier tasks; the next task starts from the net the last one left
(grow's grown net, so grow adds units at every task). A task trains on the fit digits of every
class seen so far (0..c), in mini-batches of CLASS_SEQUENCE_BATCH (su.run(batch_size, batch_seed)),
for a number of epochs. Reference sets accumulate: "reference=N" protects the first N fit digits
(a seeded order) of every kept class, so N more join with each task; "all" every kept fit digit
(layer_subspace and distill). The bounds: all_params ("joint": every output retrained on all seen
classes at each task) and masked_loss ("fine-tuning").

Scored like the literature (GEM, Lopez-Paz & Ranzato 2017), over the 10 classes: R[i, j] is the
recall of class j after task i (argmax over the outputs seen so far), task 0 the pretrained net.
ACC = mean_j R[5, j] (every class at the end); BWT = mean over j < 9 of R[5, j] - R[t(j), j], t(j)
the task that learned class j (0 for 0-4). class_sequence.csv keeps one row per task with
recall_0..recall_9, so both are recomputable from it; drift_max is the largest held-out change of
any kept logit since the task that learned it (summed over the later tasks' runs, each measured
within its own run: 0 for a logit no step moved).

The sweep (torch, validation, sweep seeds) runs each strategy's settings x (optimizer, lr,
epochs per task); the rule, per hidden width and strategy: the highest validation ACC among the
points whose outputs stayed finite; ties go to higher BWT, fewer epochs, the smaller lr. The
chosen point of every strategy runs on every seed in both frameworks, measured on held-out digits.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
from threadpoolctl import threadpool_limits

from .. import core, validation
from ..files import tidy
from ..progress import progress
from ..settings import (CLASS_SEQUENCE, CLASS_SEQUENCE_BATCH, CLASS_SEQUENCE_GRID,
                        CLASS_SEQUENCE_QUICK_GRID, DATA_DIR, NEW_CLASS_CORRECTED_FACTOR,
                        NEW_CLASS_MAX_WORK)
from . import new_class, stages, stats, strategy_settings

PRETRAINED = tuple(range(CLASS_SEQUENCE[0]))  # classes the pretraining learns (task 0)
N_CLASSES = 10
RECALLS = [f"recall_{c}" for c in range(N_CLASSES)]
COLUMNS = ["strategy", "setting", "framework", "seed", "hidden", "task", "class_new",
           "accuracy_seen", "recall_new", "drift_max", "optimizer", "lr", "epochs"] + RECALLS
ORDER = ["hidden", "strategy", "setting", "framework", "seed", "task"]
KEYS = ["hidden", "strategy", "setting", "framework", "optimizer", "lr", "epochs"]
SUMMARY_COLUMNS = KEYS + ["n_seeds"] + [f"{m}_{s}" for m in ("acc", "bwt")
                                        for s in stats.SUFFIXES]
SWEEP_COLUMNS = ["hidden", "strategy", "setting", "tier", "optimizer", "lr", "epochs", "seed",
                 "acc", "bwt", "drift_max", "finite", "selected"]
SWEEP_ORDER = ["hidden", "strategy", "setting", "optimizer", "lr", "epochs", "seed"]
FILES = ("class_sequence.csv", "class_sequence_summary.csv", "class_sequence_sweep.csv")


@dataclass(frozen=True)
class Sequence:
    """One set-up: the net pretrained on 0-4, the fit digits, per-class pools, the splits."""

    hidden: int
    seed: int
    params: dict
    x: np.ndarray
    y: np.ndarray
    pools: dict  # class -> its fit digits in a seeded order (references are prefixes)
    splits: dict = field(repr=False)

    def reference_for(self, kept):
        """Return reference_for(size) for the kept classes: None ("batch"), N per class, all."""
        def reference(size):
            if size == "batch":
                return None
            return np.concatenate([self.pools[c] if size == "all" else self.pools[c][:int(size)]
                                   for c in kept])
        return reference

    def data(self, classes, split):
        """Return a task's Data: the fit digits of `classes`, the split's digits held out."""
        rows = np.isin(self.y.argmax(axis=1), list(classes))
        return core.Data(self.x[rows], self.y[rows], *self.splits[split])


@functools.lru_cache(maxsize=8)
def sequence(hidden, seed, data_dir=str(DATA_DIR)) -> Sequence:
    """Pretrain on 0-4 (outputs 5-9 stay at their init) and draw the pools for a width and seed."""
    validation.check_int("hidden", hidden, 1)
    validation.check_int("seed", seed, 0)
    x_fit, y_fit, splits = new_class.split_digits(data_dir)
    init = core.init_params((x_fit.shape[1], hidden, N_CLASSES), seed=seed)
    with threadpool_limits(1):
        params = new_class.pretrain_kept(init, x_fit, y_fit, keep=PRETRAINED)
    rng, labels = np.random.default_rng(seed), y_fit.argmax(axis=1)
    pools = {c: x_fit[rng.permutation(np.flatnonzero(labels == c))] for c in range(N_CLASSES)}
    return Sequence(hidden, seed, params, x_fit, y_fit, pools, splits)


def scores(outputs, y, seen):
    """Return (accuracy on the seen classes' digits, {class: recall}), argmax over seen outputs."""
    labels, seen = y.argmax(axis=1), list(seen)
    pred = np.asarray(seen)[outputs[:, seen].argmax(axis=1)]
    rows = np.isin(labels, seen)
    recall = {c: float((pred[labels == c] == c).mean()) for c in seen}
    return float((pred[rows] == labels[rows]).mean()), recall


def run_sequence(sq: Sequence, strategy, setting, framework, optimizer, lr, epochs, split):
    """Run the five tasks; return (one row per task as dicts, task 0 the pretrained net; the
    final params)."""
    x_split, y_split = sq.splits[split]
    params, out = sq.params, core.forward(sq.params, x_split)[1]
    # each kept logit's change since its task: the sum of its changes within every later task's
    # run (one graph each), so a logit no step moved is exactly 0, not recomputation noise
    moved = {c: np.zeros(len(x_split)) for c in PRETRAINED}
    accuracy, recall = scores(out, y_split, PRETRAINED)
    rows = [dict(task=0, class_new=None, accuracy_seen=accuracy, recall_new=np.nan,
                 drift_max=np.nan, **{f"recall_{c}": recall.get(c, np.nan)
                                      for c in range(N_CLASSES)})]
    for task, c in enumerate(CLASS_SEQUENCE, start=1):
        kept = tuple(range(c))
        data = sq.data(range(c + 1), split)
        kwargs = strategy_settings.run_kwargs(strategy, setting, sq.reference_for(kept))
        r = strategy_settings.run_quietly(
            strategy, framework, params=params, data=data, keep=kept, train=(c,),
            optimizer=optimizer, lr=lr, steps=int(epochs) * (len(data.x) // CLASS_SEQUENCE_BATCH),
            batch_size=CLASS_SEQUENCE_BATCH, batch_seed=sq.seed, **kwargs)
        params, out = r.params, r.eval_outputs[-1]
        for k in kept:
            moved[k] = moved[k] + (out[:, k] - r.eval_outputs[0][:, k])
        finite = bool(np.all(np.isfinite(out)))
        drift = max(float(np.abs(moved[k]).max()) for k in kept) if finite else np.inf
        moved[c] = np.zeros(len(x_split))
        accuracy, recall = scores(out, y_split, range(c + 1))
        rows.append(dict(task=task, class_new=c, accuracy_seen=accuracy, recall_new=recall[c],
                         drift_max=drift, **{f"recall_{k}": recall.get(k, np.nan)
                                             for k in range(N_CLASSES)}))
    return rows, params


def acc_bwt(rows):
    """Return (ACC, BWT) of one sequence's task rows (GEM's definitions over the 10 classes)."""
    import pandas as pd

    frame = pd.DataFrame(rows).sort_values("task")
    final = frame.iloc[-1]
    learned_at = {c: 0 for c in PRETRAINED}
    learned_at.update({int(c): int(t) for t, c in zip(frame.task, frame.class_new)
                       if pd.notna(c)})
    just = {c: frame[frame.task == t].iloc[0][f"recall_{c}"] for c, t in learned_at.items()}
    acc = float(np.mean([final[f"recall_{c}"] for c in range(N_CLASSES)]))
    last = max(learned_at, key=learned_at.get)
    bwt = float(np.mean([final[f"recall_{c}"] - just[c] for c in range(N_CLASSES) if c != last]))
    return acc, bwt


# --- parameters, sweep, selection, final runs ---------------------------------------------------

def check_params(*, quick, reports_dir=None, hidden=None, seeds=None, sweep_seeds=None,
                 strategies=None) -> dict:
    """Validate notebooks/class_sequence.ipynb's parameters; return the grid they select."""
    return new_class.check_params(quick=quick, reports_dir=reports_dir, hidden=hidden,
                                  seeds=seeds, sweep_seeds=sweep_seeds, strategies=strategies,
                                  quick_grid=CLASS_SEQUENCE_QUICK_GRID, grid=CLASS_SEQUENCE_GRID)


def work(sq: Sequence, strategy, setting) -> float:
    """Estimate a projection's work per step at the last task (the most kept outputs)."""
    kept = tuple(range(CLASS_SEQUENCE[-1]))
    protected = strategy_settings.protected_count(setting, CLASS_SEQUENCE_BATCH,
                                                  sq.reference_for(kept))
    return strategy_settings.work(strategy, len(kept), protected, core.n_params(sq.params),
                                  NEW_CLASS_CORRECTED_FACTOR)


def run_sweep(grid):
    """Run every strategy's settings and points in torch on the validation split."""
    import pandas as pd

    plan, skipped = [], []
    for hidden in grid["hidden"]:
        for strategy in grid["strategies"]:
            for setting in strategy_settings.settings_for(strategy, grid):
                sq = sequence(hidden, grid["sweep_seeds"][0])
                amount = work(sq, strategy, setting)
                level = strategy_settings.tier(strategy, amount, NEW_CLASS_MAX_WORK, True)
                if level == "skipped":
                    skipped.append(dict(hidden=hidden, strategy=strategy, setting=setting,
                                        work=amount))
                    continue
                points = strategy_settings.points(strategy, grid)
                plan += [(hidden, strategy, setting, level, optimizer, lr, epochs, seed)
                         for optimizer in points["optimizers"]
                         for lr in points["lrs"][optimizer] for epochs in points["epochs"]
                         for seed in grid["sweep_seeds"]]
    rows = []
    for hidden, strategy, setting, level, optimizer, lr, epochs, seed in progress(
            plan, desc="sweep"):
        tasks, _ = run_sequence(sequence(hidden, seed), strategy, setting, "torch", optimizer,
                                lr, epochs, "validation")
        acc, bwt = acc_bwt(tasks)
        drift = max(t["drift_max"] for t in tasks[1:])
        rows.append(dict(hidden=hidden, strategy=strategy, setting=setting, tier=level,
                         optimizer=optimizer, lr=lr, epochs=epochs, seed=seed, acc=acc, bwt=bwt,
                         drift_max=drift, finite=bool(np.isfinite(drift))))
    return pd.DataFrame(rows, columns=SWEEP_COLUMNS[:-1]), pd.DataFrame(
        skipped, columns=["hidden", "strategy", "setting", "work"]), None


def select(sweep):
    """Mark each strategy's chosen (setting, optimizer, lr, epochs) by the documented rule."""
    point = ["setting", "optimizer", "lr", "epochs"]
    mean = sweep.groupby(["hidden", "strategy"] + point, sort=True).agg(
        acc=("acc", "mean"), bwt=("bwt", "mean"), finite=("finite", "all")).reset_index()
    chosen = set()
    for _, g in mean.groupby(["hidden", "strategy"], sort=True):
        g = g[g.finite] if g.finite.any() else g
        pick = g.sort_values(["acc", "bwt", "epochs", "lr"], ascending=[False, False, True, True],
                             kind="mergesort").iloc[0]
        chosen.add(tuple(pick[["hidden", "strategy"] + point]))
    sweep = sweep.copy()
    sweep["selected"] = [tuple(r) in chosen for r in
                         sweep[["hidden", "strategy"] + point].itertuples(index=False)]
    return tidy(sweep[SWEEP_COLUMNS], SWEEP_ORDER)


def run_final(sweep, grid, frameworks=core.FRAMEWORKS):
    """Run each strategy's chosen point on every seed in both frameworks, held out."""
    import pandas as pd

    points = sweep[sweep.selected][["hidden", "strategy", "setting", "optimizer", "lr",
                                    "epochs"]].drop_duplicates()
    plan = [(p, seed, fw) for p in points.itertuples(index=False) for seed in grid["seeds"]
            for fw in frameworks]
    rows = []
    for p, seed, framework in progress(plan, desc="final runs"):
        tasks, _ = run_sequence(sequence(int(p.hidden), seed), p.strategy, p.setting,
                                framework, p.optimizer, float(p.lr), int(p.epochs), "held_out")
        rows += [dict(strategy=p.strategy, setting=p.setting, framework=framework, seed=seed,
                      hidden=int(p.hidden), optimizer=p.optimizer, lr=float(p.lr),
                      epochs=int(p.epochs), **t) for t in tasks]
    frame = pd.DataFrame(rows, columns=COLUMNS)
    frame["class_new"] = frame["class_new"].astype("Int64")  # empty for task 0 (pretraining)
    return tidy(frame, ORDER)


def summarize(rows):
    """Return class_sequence_summary.csv: ACC and BWT per final point, 95% t-intervals."""
    import pandas as pd

    per_seed = [dict(zip(KEYS + ["seed"], key), **dict(zip(("acc", "bwt"), acc_bwt(
        g.to_dict("records"))))) for key, g in rows.groupby(KEYS + ["seed"], sort=True)]
    return tidy(stats.summarize(pd.DataFrame(per_seed), KEYS, ["acc", "bwt"]), KEYS)


PIPELINE = stages.Pipeline(prepare=sequence, sweep=run_sweep, select=select, final=run_final,
                           summarize=summarize)


def run_study(cfg) -> stages.Study:
    """Run the sweep, select, and run the chosen sequences: the notebook's whole computation."""
    return stages.run_study(PIPELINE, cfg)


def write(study: stages.Study, reports_dir):
    """Write FILES (the task rows, the summary, the sweep) into reports_dir (atomic)."""
    return stages.write_tables(study, reports_dir, FILES)
