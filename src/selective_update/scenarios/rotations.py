"""GEM's MNIST Rotations, run as its authors' code runs it, every row a strategy of the registry.

One network for all 20 tasks, 784-100-100-10, ReLU, Xavier-uniform weights and zero biases, one
shared 10-way softmax head and cross-entropy (su.run(activation="relu", loss="cross_entropy"),
su.init_params(init="xavier_uniform")), trained by plain SGD in mini-batches of 10, float32, one
su.run per task (each starts from the parameters the last one left; plain SGD has no state to
carry). Every output is trained on every task and kept on the earlier tasks' memories: keep and
train are all ten outputs, the memories are run(reference=...).

Rows (Row): the paper's, with its per-method settings (PAPER_ROWS: single, the i.i.d. bound, EWC,
GEM), then the study's, whose settings are chosen on the validation split (rotations_study).
Task 0 has no memory: every row trains it as fine-tuning does, at its own learning rate.

R[i, j] is the accuracy on task j's 1,000 test digits (rotated by task j's angle) after task i;
all 20 test sets are evaluated in one forward pass (numpy, float32) after each task.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .. import core, validation
from . import continual_metrics, rotations_data

SIZES = (784, 100, 100, 10)
OUTPUTS = tuple(range(10))
BATCH = 10
DTYPE = "float32"
NET = dict(activation="relu", loss="cross_entropy", dtype=DTYPE, optimizer="sgd",
           keep=OUTPUTS, train=OUTPUTS, batch_size=BATCH, record_steps=False)


@dataclass(frozen=True)
class Row:
    """A row of the table: a strategy, its learning rate and run options, and its memory.

    memory: examples stored per task (the last ones the task visited, as GEM's ring buffer
    keeps them); None: no memory. memory_kind: "inputs" (the kept outputs are protected on them:
    run(reference=array)), "examples" (gem: a Memory of every earlier task), "last_task" (ewc: a
    Memory of the task just ended, its Fisher added to the carried ones). shuffled: the i.i.d.
    bound, one run on every task's data shuffled together.
    """

    name: str
    strategy: str
    lr: float
    options: dict = field(default_factory=dict)
    memory: int | None = None
    memory_kind: str = "inputs"
    shuffled: bool = False
    setting: str = "paper"


# The paper's rows with the per-method settings of GEM's run_experiments.sh (rotations).
PAPER_ROWS = (
    Row("single", "all_params", 0.003),
    Row("iid", "all_params", 0.1, shuffled=True),  # its lr: chosen on validation (iid_lrs)
    Row("ewc", "ewc", 0.01, {"ewc_strength": 1000.0}, memory=1000, memory_kind="last_task"),
    Row("gem", "gem", 0.1, {"gem_margin": 0.5}, memory=256, memory_kind="examples"),
)


def one_hot(labels, dtype=DTYPE) -> np.ndarray:
    """Return the labels as rows of a 10-way one-hot target matrix."""
    return np.eye(len(OUTPUTS), dtype=dtype)[np.asarray(labels)]


def visit_order(seed, task, n, epochs) -> np.ndarray:
    """Return the rows of a task in the order its run visits them (core.minibatches, the same
    draw su.run makes from batch_seed): the memory is the last rows of it."""
    steps = epochs * (n // BATCH)
    return core.minibatches(n, BATCH, steps, batch_seed(seed, task)).reshape(-1)


def batch_seed(seed, task) -> int:
    """The mini-batch order's seed of one task's run."""
    return 1000 * seed + task


class Evaluation:
    """Every task's test set after each task, in one forward pass (numpy, float32)."""

    def __init__(self, tasks):
        self.tasks, self.x = tasks, tasks.eval_inputs(DTYPE)

    def __call__(self, params) -> np.ndarray:
        out = core.forward(params, self.x, "relu")[1]
        return self.tasks.accuracies(out.argmax(axis=1))


def run_row(row: Row, framework, seed, split="test", epochs=1, n_tasks=None,
            budget=None) -> dict:
    """Run the 20 tasks of one seed for one row; return R (T, T), the initial accuracies (T,)
    and the seconds of the runs (training only, evaluation apart).

    budget: seconds; a run past it stops after the task that crossed it (over_budget, R None).
    A run whose parameters stop being finite stops there too (diverged, R None; `rows` holds
    the tasks it finished).
    """
    import selective_update as su

    validation.check_choice("framework", framework, core.FRAMEWORKS)
    if row.memory is not None and not (validation.is_int(row.memory)
                                       and 1 <= row.memory <= rotations_data.N_TRAIN):
        validation.fail("memory", row.memory, f"None or an integer in 1..{rotations_data.N_TRAIN}"
                        " (examples kept per task; a task has that many)")
    tasks = rotations_data.rotation_tasks(seed, split,
                                          rotations_data.N_TASKS if n_tasks is None else n_tasks)
    T = tasks.n_tasks
    evaluate = Evaluation(tasks)
    params = core.init_params(SIZES, seed=seed, init="xavier_uniform")
    params = {k: v.astype(DTYPE) for k, v in params.items()}
    initial = evaluate(params)
    inputs = [tasks.train_inputs(t, DTYPE) for t in range(T)]
    targets = [one_hot(tasks.train_labels[t]) for t in range(T)]
    if row.shuffled:
        return _shuffled(row, framework, seed, epochs, inputs, targets, params, evaluate,
                         initial, T, budget)
    rows, seconds, stored, carry = [], 0.0, [], None
    for t in range(T):
        reference = _memory(row, stored, t)
        strategy = row.strategy if reference is not None else "all_params"
        kwargs = {**NET, **(row.options if strategy == row.strategy else {})}
        data = core.Data(inputs[t], targets[t], inputs[t][:1], targets[t][:1])
        start = time.perf_counter()
        r = su.run(strategy, framework, params=params, data=data, lr=row.lr,
                   steps=epochs * (len(data.x) // BATCH), batch_seed=batch_seed(seed, t),
                   reference=reference, carry=carry if strategy == row.strategy else None,
                   **kwargs)
        seconds += time.perf_counter() - start
        over, diverged = budget is not None and seconds > budget, not _finite(r.params)
        if over or diverged:
            return dict(R=None, last=None, rows=rows, initial=initial, seconds=seconds,
                        over_budget=over, diverged=diverged)
        params, carry = r.params, r.carry
        rows.append(evaluate(params))
        if row.memory is not None:
            order = visit_order(seed, t, len(data.x), epochs)
            kept = order[-row.memory:] if row.memory_kind != "last_task" else order[:row.memory]
            stored.append((inputs[t][kept], targets[t][kept], t))
    return dict(R=np.stack(rows), last=rows[-1], rows=rows, initial=initial, seconds=seconds,
                over_budget=False, diverged=False)


def _finite(params) -> bool:
    return all(np.all(np.isfinite(v)) for v in params.values())


def _memory(row, stored, t):
    """What task t's run protects: None before any memory; else the stored examples as the
    row's kind takes them."""
    if not stored:
        return None
    if row.memory_kind == "last_task":
        x, y, k = stored[-1]
        return core.Memory(x, y, np.full(len(x), k))
    x = np.concatenate([s[0] for s in stored])
    if row.memory_kind == "inputs":
        return x
    return core.Memory(x, np.concatenate([s[1] for s in stored]),
                       np.concatenate([np.full(len(s[0]), s[2]) for s in stored]))


def _shuffled(row, framework, seed, epochs, inputs, targets, params, evaluate, initial, T,
              budget):
    """The i.i.d. bound: one run over every task's examples shuffled together (one task of all
    rotations, as the paper's "single, shuffled data" row), evaluated at its end: R is its last
    row (BWT 0 by construction, FWT undefined)."""
    import selective_update as su

    x, y = np.concatenate(inputs[:T]), np.concatenate(targets[:T])
    data = core.Data(x, y, x[:1], y[:1])
    start = time.perf_counter()
    r = su.run(row.strategy, framework, params=params, data=data, lr=row.lr,
               steps=epochs * (len(x) // BATCH), batch_seed=batch_seed(seed, T), **NET,
               **row.options)
    seconds = time.perf_counter() - start
    diverged = not _finite(r.params)
    last = None if diverged else evaluate(r.params)
    return dict(R=None, last=last, rows=[] if diverged else [last], initial=initial,
                seconds=seconds, over_budget=budget is not None and seconds > budget,
                diverged=diverged)


def metrics(result) -> dict:
    """ACC, BWT and FWT (continual_metrics) of one run_row result; the i.i.d. bound (one task):
    ACC only, BWT 0 by construction, FWT undefined."""
    nan = float("nan")
    if result.get("diverged") or result.get("over_budget") or result["last"] is None:
        return dict(acc=nan, bwt=nan, bwt_formula=nan, fwt=nan, fwt_formula=nan)
    if result["R"] is None:
        return dict(acc=float(np.mean(result["last"])), bwt=0.0, bwt_formula=0.0,
                    fwt=nan, fwt_formula=nan)
    return continual_metrics.metrics(result["R"], result["initial"])
