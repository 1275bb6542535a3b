"""Shared fixtures and test settings."""

from __future__ import annotations

import os
import subprocess
import sys

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


def compiled_assembly(
    setup: str, functions: str, cache: object
) -> list[tuple[str, int, bool, bool]]:
    """What numba compiles for ``functions`` (a Python expression naming them, after the
    code ``setup`` has called them), freshly in a subprocess with its own cache folder
    (numba cannot show code it loaded from its cache): per compiled signature, the
    function's name, its assembly's length, whether it multiplies packed vectors, and
    whether it fuses a multiply with an add (which would make the bits depend on the CPU).
    """
    script = (
        setup
        + f"""
for function in ({functions}):
    for assembly in function.inspect_asm().values():
        print(function.__name__, len(assembly), "vmulp" in assembly,
              any(op in assembly for op in ("vfmadd", "vfnmadd", "vfmsub", "vfnmsub")))
"""
    )
    environment = {**os.environ, "NUMBA_CACHE_DIR": str(cache)}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=environment, check=True, timeout=300)  # fmt: skip
    return [(name, int(length), vector == "True", fused == "True")
            for name, length, vector, fused in (line.split() for line in
                                                 result.stdout.splitlines())]  # fmt: skip
