"""The framework-free core: strategies and their promises, runs and their results, verdicts.

    strategies  the registry: each strategy's whole description (what it trains, its loss, its
                correction, its options, its promise rule), and promise()
    promises    a promise as a value (strength, where) and the rules that give it
    nets        the study's MLPs as numpy: weights, widths, forward pass, output masks, toy data
    runs        a run's checked arguments (check_run) and its RunResult
    seed_demo   the seed's three train ops and the compensated G', as a record
    verdicts    whether a measured run kept its promise
"""
from __future__ import annotations

from .nets import (Data, init_params, layer_sizes, make_toy_data, n_layers, n_params,
                   output_gradient, output_mask, forward)
from .runs import (ARGUMENTS, RestoreWarning, RunConfig, RunResult, TrivialNullSpaceWarning,
                   check_data, check_run, check_weights, drift, make_result, minibatches, mse,
                   warn_if_not_restored, warn_if_trivial_null_space)
from .seed_demo import COMPENSATED_PHASE, SEED_PHASES, SeedDemo, make_seed_demo, question_gradient
from .strategies import (DEVICES, DTYPES, FRAMEWORKS, OPTIMIZERS, PROMISES, STRATEGIES, Strategy,
                         promise)

__all__ = ["ARGUMENTS", "COMPENSATED_PHASE", "DEVICES", "DTYPES", "Data", "FRAMEWORKS",
           "OPTIMIZERS", "PROMISES", "RestoreWarning", "RunConfig", "RunResult", "SEED_PHASES",
           "STRATEGIES", "SeedDemo", "Strategy", "TrivialNullSpaceWarning", "check_data",
           "check_run", "check_weights", "drift", "forward", "init_params", "layer_sizes",
           "make_result", "make_seed_demo", "make_toy_data", "minibatches", "mse", "n_layers",
           "n_params", "output_gradient", "output_mask", "promise", "question_gradient",
           "warn_if_not_restored", "warn_if_trivial_null_space"]
