"""Shared fixtures: the seed's data and params, and a cache of runs (each config runs once);
the run's order and its last guard against a hung test."""
import faulthandler
from functools import lru_cache

import pytest

import selective_update as su

DATA = su.make_toy_data()
PARAMS = su.init_params()


@lru_cache(maxsize=None)
def cached_run(strategy, framework, optimizer="sgd", weight_decay=0.0, warm_start_steps=0,
               lr=0.1, steps=5, dtype="float64", warm_start_lr=None):
    """Run one configuration on the seed's toy set-up, once per test session."""
    return su.run(strategy, framework, params=PARAMS, data=DATA, optimizer=optimizer, lr=lr,
                  steps=steps, weight_decay=weight_decay, warm_start_steps=warm_start_steps,
                  dtype=dtype, warm_start_lr=warm_start_lr)


# The marked tests start kernels, clusters, pip or a browser: seconds to minutes each.
HEAVY_MARKS = ("slow", "browser", "registry")


def pytest_collection_modifyitems(items):
    """Run the heavy tests first (in their collected order), then the rest: pytest-xdist hands
    them out in this order, so the long ones spread over both workers and the many quick ones
    fill the gaps at the end instead of one long test ending the run alone."""
    items.sort(key=lambda item: not any(item.get_closest_marker(m) for m in HEAVY_MARKS))


@pytest.fixture
def toy():
    return DATA, PARAMS


def pytest_timeout_set_timer(item, settings):
    """Beside pytest-timeout's own timer (this returns None, so it still sets it), with the same
    limit however it was given (ini, marker, --timeout): a test still running 5 minutes past it is
    stuck where the timeout's signal cannot reach (inside C code). End the process, so that
    pytest-xdist reports the test as crashed and goes on with a new worker instead of waiting for
    it until CI gives up."""
    faulthandler.dump_traceback_later(settings.timeout + 300, exit=True)


def pytest_timeout_cancel_timer(item):
    faulthandler.cancel_dump_traceback_later()
