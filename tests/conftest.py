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
