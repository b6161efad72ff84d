"""The framework-free core: strategies and their promises, runs and their results, verdicts.

    strategies  the registry: each strategy's whole description (what it trains, its loss, its
                correction, its options, its promise rule), and promise()
    promises    a promise as a value (strength, where) and the rules that give it
    nets        the study's MLPs as numpy: weights, widths, forward pass, output masks, toy data
    runs        a run's configuration (RunConfig) and its RunResult
    arguments   a run's arguments checked before any work (check_run)
    seed_demo   the seed's three train ops and the compensated G', as a record
    verdicts    whether a measured run kept its promise
"""
from __future__ import annotations

from .nets import Data, init_params, make_toy_data
from .promises import Promise
from .arguments import check_run
from .nets import Memory
from .runs import RestoreWarning, RunConfig, RunResult, TrivialNullSpaceWarning, drift
from .seed_demo import COMPENSATED_PHASE, SEED_PHASES, SeedDemo
from .strategies import (DEVICES, DTYPES, FRAMEWORKS, OPTIMIZERS, PROMISES, STRATEGIES, Strategy,
                         promise)
# The package's own shorthands (the runners, the study and the scenarios call them core.X).
from .nets import forward as forward, layer_sizes as layer_sizes, n_layers as n_layers
from .nets import n_params as n_params, output_gradient as output_gradient
from .nets import output_mask as output_mask
from .runs import ARGUMENTS as ARGUMENTS, make_result as make_result
from .runs import minibatches as minibatches
from .seed_demo import make_seed_demo as make_seed_demo
from .seed_demo import question_gradient as question_gradient

# The public face; the shorthands above stay the package's own.
__all__ = ["COMPENSATED_PHASE", "DEVICES", "DTYPES", "Data", "FRAMEWORKS", "Memory", "OPTIMIZERS",
           "PROMISES", "Promise", "RestoreWarning", "RunConfig", "RunResult", "SEED_PHASES",
           "STRATEGIES", "SeedDemo", "Strategy", "TrivialNullSpaceWarning", "check_run", "drift",
           "init_params", "make_toy_data", "promise"]
