"""The package's dask.config defaults, shipped in ``daskgauss.yaml``."""

from __future__ import annotations

import pathlib
from collections.abc import Callable

import dask.config
import yaml

__all__ = ["chunk_rows", "get", "positive"]

_DEFAULTS_FILE = pathlib.Path(__file__).with_name("daskgauss.yaml")

with _DEFAULTS_FILE.open() as stream:
    dask.config.update_defaults(yaml.safe_load(stream))


def get(key: str) -> object:
    """The current value of ``daskgauss.<key>``, as dask.config resolves it now."""
    return dask.config.get(f"daskgauss.{key}")


def positive(key: str, parse: Callable[[object], int], expected: str) -> int:
    """``daskgauss.<key>`` read by ``parse``; a clear error, saying it must be
    ``expected``, unless it reads as at least 1."""
    setting = get(key)
    try:
        value = parse(setting)
    except (TypeError, ValueError):
        value = 0
    if value < 1:
        raise ValueError(f"daskgauss.{key} must be {expected}, got {setting!r}")
    return value


def chunk_rows() -> int:
    """``daskgauss.chunk-rows``: the fewest rows of dask-array centres read as one chunk."""
    return positive("chunk-rows", int, "a whole number of rows of at least 1")
