"""One job at a time per store: a lock object with a heartbeat, taken over when stale.

A render holds ``STORE/daskgauss.lock`` while it runs. The object says who holds it
(host, process, since when) and carries a heartbeat, rewritten every few seconds by a
thread. A second job finds it and is refused with one line naming the holder, unless
the holder is gone: its heartbeat is older than ``daskgauss.lock-stale-after``, or it
is a process of this host that no longer exists (a job killed with ``kill -9``). Then
the lock is taken over.

On a local filesystem the lock is created with ``O_EXCL``, so of two jobs started
together exactly one gets it. Object stores have no such primitive: there the check and
the write are separate and two jobs started within the same instant could both pass;
their blocks would still be right (both write the same bytes), only done twice.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import dask.utils
import fsspec

from . import _config

__all__ = ["LOCK_NAME", "StoreBusyError", "holding_lock", "is_only_a_lock"]

LOCK_NAME = "daskgauss.lock"


class StoreBusyError(ValueError):
    """Another job, still alive, is rendering into the store."""


def _lock_path(location: str) -> tuple[Any, str]:
    filesystem, path = fsspec.core.url_to_fs(location)
    return filesystem, f"{path.rstrip('/')}/{LOCK_NAME}"


def is_only_a_lock(location: str) -> bool:
    """Whether ``location`` holds nothing but a lock (a job that has just started)."""
    filesystem, path = fsspec.core.url_to_fs(location)
    try:
        names = [name.rstrip("/").rsplit("/", 1)[-1] for name in filesystem.ls(path, detail=False)]
    except (FileNotFoundError, NotADirectoryError):
        return False
    return names == [LOCK_NAME]


def _holder() -> dict[str, Any]:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "since": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "heartbeat": time.time(),
    }


def _alive(holder: dict[str, Any]) -> bool:
    """Whether the lock's holder may still be running."""
    stale_after = dask.utils.parse_timedelta(_config.get("lock-stale-after"))
    if time.time() - float(holder.get("heartbeat", 0)) > stale_after:
        return False
    if holder.get("host") == socket.gethostname():
        try:
            os.kill(int(holder["pid"]), 0)
        except ProcessLookupError:
            return False
        except (PermissionError, KeyError, ValueError):
            pass
    return True


def _create(filesystem: Any, path: str, holder: dict[str, Any]) -> bool:
    """Create the lock object if it does not exist; whether this call created it."""
    content = json.dumps(holder).encode()
    if isinstance(filesystem, fsspec.implementations.local.LocalFileSystem):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(content)
        return True
    if filesystem.exists(path):
        return False
    filesystem.pipe_file(path, content)
    return True


@contextlib.contextmanager
def holding_lock(location: str) -> Iterator[None]:
    """Hold the store's lock for the duration of the block (heartbeat in a thread).

    Raises
    ------
    StoreBusyError
        A live job holds it; the message names the holder.
    """
    filesystem, path = _lock_path(location)
    holder = _holder()
    if not _create(filesystem, path, holder):
        try:
            current = json.loads(filesystem.cat_file(path))
        except (FileNotFoundError, ValueError):
            current = {}
        if current and _alive(current):
            raise StoreBusyError(
                f"{location} is being rendered by process {current.get('pid')} on "
                f"{current.get('host')} since {current.get('since')} (UTC); wait for it to "
                f"finish or stop it, then run the same command to resume"
            )
        # A stale holder (crashed, killed): take the lock over.
        filesystem.rm(path)
        if not _create(filesystem, path, holder):
            raise StoreBusyError(f"{location}: another job took the lock at the same moment")
    interval = dask.utils.parse_timedelta(_config.get("lock-heartbeat"))
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            holder["heartbeat"] = time.time()
            with contextlib.suppress(OSError):
                filesystem.pipe_file(path, json.dumps(holder).encode())

    thread = threading.Thread(target=beat, name="daskgauss-lock-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        with contextlib.suppress(FileNotFoundError):
            filesystem.rm(path)
