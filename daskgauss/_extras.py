"""Optional dependencies: import one, or say which extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["MissingExtraError", "require"]


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message says which extra brings it."""


def require(module: str, *, extra: str, purpose: str) -> ModuleType:
    """Import ``module``, or raise :class:`MissingExtraError` naming the extra to install.

    Parameters
    ----------
    module : str
        The module to import, e.g. ``"mrcfile"``.
    extra : str
        The daskgauss extra that installs it, e.g. ``"mrc"``.
    purpose : str
        What needs it, for the message, e.g. ``"MRC export"``.
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(
            f"{purpose} needs {module.split('.')[0]}: pip install 'daskgauss[{extra}]'"
        ) from None
