"""One job at a time per store: the lock, its heartbeat, and taking over a stale one."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import dask
import numpy as np
import pytest
import zarr

import daskgauss as dg
from daskgauss._lock import LOCK_NAME, StoreBusyError, holding_lock
from daskgauss._store import open_target
from tests.long_render import long_render, long_render_expected


def _render(store, **options):
    rng = np.random.default_rng(3)
    return dg.render_to_zarr(store, rng.uniform(-5, 5, size=(50, 3)), 0.7,
                             dg.Grid.from_bounds(-6, 6, 24), chunks=8, **options)  # fmt: skip


def test_a_live_holder_refuses_a_second_job_naming_itself(tmp_path):
    store = tmp_path / "busy.zarr"
    complete = _render(store)[...]
    with holding_lock(str(store)):
        holder = json.loads((store / LOCK_NAME).read_text())
        assert holder["pid"] == os.getpid()
        assert holder["host"] == socket.gethostname()
        with pytest.raises(StoreBusyError, match=rf"being rendered by process {os.getpid()} on"):
            _render(store)
        with pytest.raises(StoreBusyError):  # overwrite too: never under a live job's feet
            _render(store, overwrite=True)
    assert not (store / LOCK_NAME).exists()
    np.testing.assert_array_equal(zarr.open_array(str(store), path="0")[...], complete)
    assert len(open_target(store).runs()) == 1


@pytest.mark.parametrize(
    "holder",
    [
        {"host": "another-host", "pid": 1, "since": "then", "heartbeat": 0.0},  # old heartbeat
        {"host": socket.gethostname(), "pid": None, "since": "then", "heartbeat": None},
    ],
    ids=["old-heartbeat", "dead-process-here"],
)
def test_a_stale_lock_is_taken_over(tmp_path, holder):
    if holder["pid"] is None:  # a process of this host that has ended
        ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                               capture_output=True, text=True, check=True)  # fmt: skip
        holder = holder | {"pid": int(ended.stdout), "heartbeat": time.time()}
    store = tmp_path / "stale.zarr"
    store.mkdir()
    (store / LOCK_NAME).write_text(json.dumps(holder))
    array = _render(store)
    assert array.shape == (24, 24, 24)
    assert not (store / LOCK_NAME).exists()
    assert open_target(store).runs()[-1]["rendered"] > 0


def test_the_heartbeat_moves_while_a_job_runs(tmp_path):
    store = tmp_path / "beat.zarr"
    with dask.config.set({"daskgauss.lock-heartbeat": "50ms"}), holding_lock(str(store)):
        first = json.loads((store / LOCK_NAME).read_text())["heartbeat"]
        time.sleep(0.3)
        later = json.loads((store / LOCK_NAME).read_text())["heartbeat"]
    assert later > first


@pytest.mark.slow
def test_two_renders_started_together_render_once(tmp_path):
    """Two CLI processes on one store at once: one renders, the other is refused in one
    line; the run log has the one run and the data are right."""
    store = tmp_path / "shared.zarr"
    centres, command = long_render(tmp_path, store)
    command += ["--workers", "1", "--threads-per-worker", "1"]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for _ in range(2)]  # fmt: skip
    outputs = [process.communicate(timeout=300) for process in processes]
    results = [(process.returncode, *output) for process, output in zip(processes, outputs,
                                                                         strict=True)]  # fmt: skip
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 1], results
    (refused,) = [errors for code, _, errors in results if code == 1]
    assert "Traceback" not in refused
    errors = [line for line in refused.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1
    assert "is being rendered by process" in errors[0]
    assert len(open_target(store).runs()) == 1
    np.testing.assert_array_equal(zarr.open_array(str(store), path="0")[...],
                                  long_render_expected(centres))  # fmt: skip
