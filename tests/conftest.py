"""Shared fixtures: small real Keras models of every kind, seeded data."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

# A quick default profile; SALIENCEKIT_PROFILE=thorough for a longer search.
settings.register_profile(
    "quick", max_examples=8, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "thorough", max_examples=100, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile(os.environ.get("SALIENCEKIT_PROFILE", "quick"))

from helpers import IMAGE_SHAPE, MODEL_FACTORIES


@pytest.fixture(params=sorted(MODEL_FACTORIES))
def any_model(request):
    return request.param, MODEL_FACTORIES[request.param]()


@pytest.fixture
def images():
    return np.random.default_rng(0).random((7, *IMAGE_SHAPE)).astype("float32")


@pytest.fixture
def labels():
    return np.array([0, 1, 2, 3, 0, 1, 2])


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true",
                     help="also run the tests marked slow (thorough variants)")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: a thorough variant of a test the suite runs in a smaller form; "
        "runs with --slow or SALIENCEKIT_PROFILE=thorough")


def pytest_collection_modifyitems(config, items):
    """Slow variants are deselected (not skipped) unless asked for."""
    if config.getoption("--slow") or os.environ.get("SALIENCEKIT_PROFILE") == "thorough":
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]
