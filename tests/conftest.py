"""Shared fixtures and test settings."""

from __future__ import annotations

import dask
import numpy as np
import pytest
from hypothesis import HealthCheck, settings

# The kernel compiles once per process; hypothesis must not count that against an example.
settings.register_profile(
    "daskgauss",
    deadline=None,
    max_examples=60,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("daskgauss")


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded generator: fixed cases stay fixed."""
    return np.random.default_rng(20261126)


@pytest.fixture(autouse=True)
def _synchronous_default():
    """Tests run dask's threaded scheduler unless they choose another; config restored after."""
    with dask.config.set(scheduler="threads"):
        yield


@pytest.fixture
def small_job(rng) -> dict:
    """A render job small enough for tests: 400 centres on a 60 x 52 x 44 grid."""
    import daskgauss as dg

    return {
        "centres": rng.uniform(-12, 12, size=(400, 3)),
        "sigma": 0.9,
        "grid": dg.Grid.from_bounds((-10, -9, -8), (10, 9, 8), (60, 52, 44)),
        "weights": rng.uniform(0.5, 1.5, size=400),
        "chunks": (16, 16, 16),
    }
