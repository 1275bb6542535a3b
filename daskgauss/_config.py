"""The package's dask.config defaults, shipped in ``daskgauss.yaml``."""

from __future__ import annotations

import pathlib

import dask.config
import yaml

__all__ = ["get"]

_DEFAULTS_FILE = pathlib.Path(__file__).with_name("daskgauss.yaml")

with _DEFAULTS_FILE.open() as stream:
    dask.config.update_defaults(yaml.safe_load(stream))


def get(key: str) -> object:
    """The current value of ``daskgauss.<key>``, as dask.config resolves it now."""
    return dask.config.get(f"daskgauss.{key}")
