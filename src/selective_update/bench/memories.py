"""Time the rotations benchmark's steps at its last task (part `memories`): GEM's network,
784-100-100-10, ReLU, cross-entropy, float32, a batch of 10, 19 earlier tasks behind it.

Rows: the plain step (all_params); gem against 19 x 256 memories (GEM's) and 19 x 32 (the quick
study's); ewc (its Fisher carried, the penalty every step); the study's rows against the
memories their rotations settings keep (null_space, compensated_gradient on 2 a task, layer
subspace and distill on 10 a task). Each framework through its make_steps; synthetic inputs in
[0, 1) (step times do not depend on the digits)."""
from __future__ import annotations

import numpy as np

from .. import core
from .timing import PLAIN, make_steps, measurement_row, time_interleaved

SIZES, BATCH, EARLIER, CLASSES = (784, 100, 100, 10), 10, 19, tuple(range(10))
NET = dict(activation="relu", loss="cross_entropy", keep=CLASSES, train=CLASSES)
# strategy -> memories a task (the rotations' largest settings of each study row; gem's two)
ROWS = {"gem": (256, 32), "ewc": (1000,), "null_space": (2,), "compensated_gradient": (2,),
        "layer_subspace": (10,), "distill": (10,)}


def _memory(per_task, rng):
    n = EARLIER * per_task
    x = rng.random((n, SIZES[0]))
    y = np.eye(len(CLASSES))[rng.integers(0, len(CLASSES), n)]
    return core.Memory(x, y, np.repeat(np.arange(EARLIER), per_task))


def bench_memories(args, env, log) -> list:
    """Time each row's step and the plain step, interleaved, per framework."""
    import argparse

    args = argparse.Namespace(**{**vars(args), "dtype": "float32"})  # the rotations' dtype
    rng = np.random.default_rng(0)
    params = core.init_params(SIZES, init="xavier_uniform")
    x = rng.random((BATCH, SIZES[0]))
    data = core.Data(x, np.eye(len(CLASSES))[rng.integers(0, 10, BATCH)], x[:2], x[:2, :10])
    rows = []
    for fw in args.frameworks:
        steps, sync = make_steps(fw, (PLAIN,), params, data, args, **NET)
        for strategy, sizes in ROWS.items():
            for per_task in sizes:
                memory = _memory(per_task, rng)
                if strategy == "ewc":  # the Fisher of the task just ended; earlier ones carried
                    memory = core.Memory(memory.x[:per_task], memory.y[:per_task],
                                         np.zeros(per_task, int))
                reference = memory if core.STRATEGIES[strategy].memory else memory.x
                made, _ = make_steps(fw, (strategy,), params, data, args, reference=reference,
                                     **NET)
                steps[(strategy, per_task)] = made[strategy]
        seconds = time_interleaved(steps, args.repeats, sync=sync)
        plain = float(np.median(seconds[PLAIN]))
        for key, t in seconds.items():
            strategy, per_task = key if isinstance(key, tuple) else (key, None)
            row = measurement_row("memories", fw, strategy, SIZES, BATCH, t, env, args,
                                  note="" if per_task is None else
                                  f"{per_task} memories x {EARLIER if strategy != 'ewc' else 1}"
                                  " tasks")
            row["n_ref"] = "" if per_task is None else per_task * (
                EARLIER if strategy != "ewc" else 1)
            row["ratio_to_plain"] = row["median_s"] / plain
            rows.append(row)
        log(f"{fw:5s} memories: " + ", ".join(
            f"{r['strategy']}@{r['n_ref']} {r['ratio_to_plain']:.3g}x" for r in rows
            if r["framework"] == fw))
    return rows
