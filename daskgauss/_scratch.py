"""Where lazy arrays of chunked centres exchange their Gaussians, and for how long.

``gaussian_sum`` over dask-array centres exchanges each chunk's pairs through storage
(:mod:`._exchange`), as a render does, but it has no store: it uses a directory under
``daskgauss.scratch`` (default: the system's temporary directory), one per array,
named by the array's token. Every task of the array must reach it: on a cluster whose
workers run on more than one host, set ``daskgauss.scratch`` to a directory they all
share, or to an object store URL; the default is refused there, with that advice, when
the array is built.

The directory is removed when the last lazy array made with it is garbage collected,
and at the latest when the process that made it exits. Every compute writes its
exchange again (its tasks run again), so an array derived from one that is gone (a
slice, say) still computes: it writes the directory anew.
"""

from __future__ import annotations

import atexit
import os
import tempfile
import threading
import weakref

from . import _config
from ._cluster import active_client
from ._exchange import Exchange

__all__ = ["keep_while", "scratch_exchange"]

_lock = threading.Lock()
# Lazy arrays alive per scratch directory, and every directory this process made.
_users: dict[str, int] = {}
_made: set[str] = set()


def _root() -> tuple[str, bool]:
    """The scratch root, and whether it is the default (the system's temporary directory)."""
    configured = _config.get("scratch")
    if configured in (None, "", "auto"):
        return os.path.join(tempfile.gettempdir(), "daskgauss-scratch"), True
    return str(configured).rstrip("/"), False


def _check_one_host() -> None:
    """Refuse the default scratch directory for workers on more than one host."""
    client = active_client()
    if client is None:
        return
    workers = client.scheduler_info(n_workers=-1).get("workers", {})
    hosts = {info.get("host") for info in workers.values()}
    if len(hosts) > 1:
        raise ValueError(
            f"the workers run on {len(hosts)} hosts, and a lazy array of dask-array centres "
            "exchanges them through a scratch directory every worker must reach: set "
            "daskgauss.scratch to a directory they share or an object store URL (e.g. "
            "dask.config.set({'daskgauss.scratch': 's3://bucket/scratch'})), or render to "
            "Zarr with render_to_zarr, which exchanges them through the store"
        )


def scratch_exchange(token: str) -> Exchange:
    """The scratch exchange of the lazy array named by ``token``."""
    root, default = _root()
    if default:
        _check_one_host()
    return Exchange(f"{root}/{token}")


def keep_while(exchange: Exchange, owner: object) -> None:
    """Keep ``exchange`` while ``owner`` (a lazy array) or another array made with it is
    alive; remove it then."""
    with _lock:
        _users[exchange.root] = _users.get(exchange.root, 0) + 1
        _made.add(exchange.root)
    weakref.finalize(owner, _release, exchange.root)


def _release(path: str) -> None:
    with _lock:
        _users[path] -= 1
        if _users[path]:
            return
        del _users[path]
    Exchange(path).remove()


@atexit.register
def _remove_all() -> None:
    """At exit, every scratch directory this process made (derived arrays may have
    written one again after its last owner was collected)."""
    for path in list(_made):
        Exchange(path).remove()
