"""Zarr v3 storage: the output store's layout, metadata, completion record, exchange place.

This module knows nothing about dask, the kernel or the binning. It creates and opens
the store, writes its metadata and reads back the job it records, records which blocks
are done, and says where each level's exchange (:mod:`._exchange`: the Gaussians of
every block, so that every block task reads only its own) is kept.

Layout of a store (an OME-NGFF 0.5 image group)::

    STORE/
      zarr.json           group; attributes "ome" (multiscales) and "daskgauss" (the job)
      0/                  the volume, one chunk per dask block (all-zero chunks not written)
      block_pairs/        Gaussians reaching each block (int64, one chunk), written before any
                          block is rendered: a block no Gaussian reaches is done by definition
      blocks_done/        a flag object per rendered block, written once its chunk is written
      exchange/           while a render runs: an empty zarr array, and beneath it each level's
                          exchange (exchange/<level>/parts/..., exchange/<level>/index), removed
                          once the level is complete (zarr lists only the children of groups,
                          so these objects do not show as unknown nodes of the store)
      runs/               one JSON object per run of a job (the run log: no run is lost
                          when two runs end together)
      daskgauss.lock      while a job runs: who runs it, since when, and its heartbeat

Which blocks are done is read by listing ``blocks_done/`` (one listing, not one read per
block) and from ``block_pairs``: reads and writes scale with the blocks that hold Gaussians,
not with the grid, so a molecule in a 16384^3 box costs what the molecule costs. Every flag
is its own object, written after its block's chunk: concurrent writers and a kill at any
instant never leave a block recorded but unwritten.
"""

from __future__ import annotations

import contextlib
import functools
import json
import pathlib
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
import zarr
from zarr.codecs import BloscCodec, BloscShuffle, ZstdCodec

from ._grid import Grid
from ._job import JobSpec
from ._lock import LOCK_NAME, is_only_a_lock

__all__ = [
    "SPACE_UNITS",
    "StoreMismatchError",
    "StoreVanishedError",
    "Target",
    "check_creatable",
    "check_unit",
    "compressors_for",
    "create_target",
    "level_targets",
    "location_exists",
    "open_target",
    "recorded_job",
]

DONE_PATH = "blocks_done"
PAIRS_PATH = "block_pairs"
RUNS_PATH = "runs"
EXCHANGE_PATH = "exchange"
# The sidecar of rows per block that releases before 0.3 kept instead of the exchange.
LEGACY_SOURCES_PATH = "sources"
AXES = ("x", "y", "z")

# Space units OME-NGFF accepts (UDUNITS-2 names).
SPACE_UNITS = (
    "angstrom", "attometer", "centimeter", "decimeter", "exameter", "femtometer", "foot",
    "gigameter", "hectometer", "inch", "kilometer", "megameter", "meter", "micrometer", "mile",
    "millimeter", "nanometer", "parsec", "petameter", "picometer", "terameter", "yard",
    "yoctometer", "yottameter", "zeptometer", "zettameter",
)  # fmt: skip


class StoreMismatchError(ValueError):
    """The store holds something other than the job asked for."""


class StoreVanishedError(FileNotFoundError):
    """The store was deleted while a job was writing it."""


def compressors_for(name: str) -> list[Any] | None:
    """Chunk compressors by name.

    ``lz4`` (the default, blosc with byte shuffle) is the fastest codec that still
    compresses, and it shrinks the exact zeros of sparse volumes (molecules in a
    large box) to almost nothing. ``none`` writes raw bytes, fastest of all; ``zstd``
    compresses dense fields best. benchmarks/RESULTS.md has the measurements.
    """
    if name == "none":
        return None
    if name == "lz4":
        return [BloscCodec(cname="lz4", clevel=5, shuffle=BloscShuffle.shuffle)]
    if name == "zstd":
        return [BloscCodec(cname="zstd", clevel=3, shuffle=BloscShuffle.shuffle)]
    if name == "zstd-plain":
        return [ZstdCodec(level=1)]
    raise ValueError(f"compression must be one of none, lz4, zstd, zstd-plain; got {name!r}")


def normalise_location(location: str | Any) -> str:
    """A store location as a string; ``file://`` URLs become plain local paths.

    Local paths go to zarr's LocalStore, which writes every chunk atomically
    (to a temporary file, then renamed) and creates directories as needed.
    """
    text = str(location)
    if text.startswith("file://"):
        return str(fsspec.core.url_to_fs(text)[1])
    return text


def check_creatable(location: str) -> None:
    """Refuse a local store path whose parent is a file (nothing could be created)."""
    if "://" in location:
        return
    parent = pathlib.Path(location).absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise NotADirectoryError(f"cannot create a store at {location}: {parent} is a file")


def location_exists(location: str) -> bool:
    """Whether anything (a file, a non-empty directory, an object prefix) is at ``location``."""
    filesystem, path = fsspec.core.url_to_fs(str(location))
    if not filesystem.exists(path):
        return False
    if filesystem.isdir(path):
        return bool(filesystem.ls(path, detail=False))
    return True


def remove_location(location: str, *, keep: str | None = None) -> None:
    """Delete whatever is at ``location`` (but the entry named ``keep`` in it)."""
    filesystem, path = fsspec.core.url_to_fs(str(location))
    if not filesystem.exists(path):
        return
    if keep is None or not filesystem.isdir(path):
        filesystem.rm(path, recursive=True)
        return
    for entry in filesystem.ls(path, detail=False):
        if entry.rstrip("/").rsplit("/", 1)[-1] != keep:
            filesystem.rm(entry, recursive=True)


def level_path(name: str, level: int) -> str:
    """Where level ``level``'s array ``name`` (done flags, pairs, sidecar) is: level 0's
    names are the single-scale store's, so that such stores read as they always did."""
    return name if level == 0 else f"{name}_{level}"


def ngff_attributes(grid: Grid, unit: str | None, name: str, levels: int = 0) -> dict[str, Any]:
    """OME-NGFF 0.5 ``ome`` attributes for a 3D image at paths "0" ... ``levels``.

    Level ``l`` has scale ``spacing 2^l`` and translation ``origin + (2^l - 1) / 2
    spacing``: the centre of the level-0 samples each of its samples averages.
    """
    axes = []
    for axis in AXES:
        description: dict[str, Any] = {"name": axis, "type": "space"}
        if unit is not None:
            description["unit"] = unit
        axes.append(description)
    datasets = []
    for level in range(levels + 1):
        level_grid = grid.level(level)
        datasets.append({
            "path": str(level),
            "coordinateTransformations": [
                {"type": "scale", "scale": list(level_grid.spacing)},
                {"type": "translation", "translation": list(level_grid.origin)},
            ],
        })  # fmt: skip
    multiscale: dict[str, Any] = {"name": name, "axes": axes, "datasets": datasets}
    if levels:
        multiscale["type"] = "mean"
        multiscale["metadata"] = {
            "description": "each level's sample is the mean of the 2x2x2 samples it covers in "
            "the level below, rendered from the Gaussians (never by reading level 0 back)",
        }
    return {"version": "0.5", "multiscales": [multiscale]}


def check_unit(unit: str | None) -> None:
    """Refuse a unit that OME-NGFF does not know."""
    if unit is not None and unit not in SPACE_UNITS:
        raise ValueError(
            f"unit must be an OME-NGFF space unit such as 'angstrom' or 'nanometer'; got {unit!r}"
        )


@dataclass(frozen=True, eq=False)
class Target:
    """An output store opened for rendering or reading.

    Attributes
    ----------
    location : str
        Path or fsspec URL of the store.
    group : zarr.Group
    data : zarr.Array
        The volume (of pyramid level ``level``), one chunk per block.
    done : zarr.Array
        One uint8 flag per block.
    level : int
        The pyramid level this target reads and writes (0: the full resolution).
    """

    location: str
    group: zarr.Group
    data: zarr.Array
    done: zarr.Array
    level: int = 0

    @property
    def levels(self) -> int:
        """Pyramid levels above 0 in the store."""
        return int(self.record.get("levels", 0))

    @property
    def record(self) -> dict[str, Any]:
        """The job as the store records it (JSON), for people and tools reading it."""
        return dict(self.group.attrs["daskgauss"]["job"])

    @property
    def grid(self) -> Grid:
        """The grid of this target's level (level 0's is the one the store records)."""
        return Grid.from_dict(self.record["grid"]).level(self.level)

    @property
    def block_shape(self) -> tuple[int, int, int]:
        """Shape of one (interior) block, equal to the chunk shape."""
        return tuple(self.data.chunks)  # type: ignore[return-value]

    @property
    def numblocks(self) -> tuple[int, int, int]:
        """Number of blocks along each axis."""
        return tuple(self.done.shape)  # type: ignore[return-value]

    def recorded_done(self) -> np.ndarray:
        """Boolean array of shape ``numblocks``: which blocks have their done flag.

        One listing of the flags' objects (each exists once its block is written).
        """
        mask = np.zeros(self.numblocks, dtype=bool)
        filesystem, path = fsspec.core.url_to_fs(self.location)
        prefix = f"{path.rstrip('/')}/{level_path(DONE_PATH, self.level)}/c/"
        try:
            keys = filesystem.find(prefix)
        except FileNotFoundError:
            return mask
        # Only whole chunk keys: a writer killed mid-write leaves "<key>.<id>.partial".
        parts = [key[len(prefix) :].split("/") for key in keys if key.startswith(prefix)]
        indices = [part for part in parts if len(part) == 3 and all(p.isdigit() for p in part)]
        if indices:
            mask[tuple(np.array(indices, dtype=np.int64).T)] = True
        return mask

    def done_mask(self) -> np.ndarray:
        """Boolean array of shape ``numblocks``: which blocks are done (rendered and
        recorded, or reached by no Gaussian)."""
        done = self.recorded_done()
        pairs = self.block_pairs()
        if pairs is not None:
            done |= pairs == 0
        return done

    def record_run(self, record: dict[str, Any]) -> None:
        """Add one run to the run log: an object of its own, so concurrent runs keep both."""
        filesystem, path = fsspec.core.url_to_fs(self.location)
        # Named by the time in nanoseconds, so that the names sort as the runs ended.
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:12]}.json"
        directory = f"{path.rstrip('/')}/{RUNS_PATH}"
        filesystem.makedirs(directory, exist_ok=True)
        filesystem.pipe_file(f"{directory}/{name}", json.dumps(record).encode())

    def runs(self) -> list[dict[str, Any]]:
        """The run log, oldest first."""
        filesystem, path = fsspec.core.url_to_fs(self.location)
        prefix = f"{path.rstrip('/')}/{RUNS_PATH}"
        try:
            names = sorted(filesystem.ls(prefix, detail=False))
        except FileNotFoundError:
            return []
        return [json.loads(filesystem.cat_file(name)) for name in names if name.endswith(".json")]

    def write_block_pairs(self, pairs: np.ndarray) -> None:
        """Record how many Gaussians reach each block (shape ``numblocks``); ``complete`` last."""
        array = self.group.create_array(
            level_path(PAIRS_PATH, self.level), shape=pairs.shape, dtype="int64",
            chunks=pairs.shape,
            compressors=compressors_for("lz4"), dimension_names=list(AXES), overwrite=True,
        )  # fmt: skip
        array[...] = pairs
        array.attrs["complete"] = True

    def block_pairs(self) -> np.ndarray | None:
        """Gaussians reaching each block, or None where not (completely) recorded yet."""
        try:
            array = self.group[level_path(PAIRS_PATH, self.level)]
        except KeyError:
            return None
        if not array.attrs.get("complete", False):
            return None
        return np.asarray(array[...])

    def block_slices(self, block_index: Sequence[int]) -> tuple[slice, slice, slice]:
        """Where a block sits in the volume."""
        shape = self.data.shape
        return tuple(  # type: ignore[return-value]
            slice(i * b, min((i + 1) * b, n))
            for i, b, n in zip(block_index, self.block_shape, shape, strict=True)
        )

    @functools.cached_property
    def _chunk_writer(self) -> zarr.Array:
        # zarr's own empty-chunk test (write_empty_chunks=False) compares the whole
        # chunk with the fill value on zarr's single event-loop thread: 150 ms a
        # 64 MiB chunk, serialising every writer. write_block tests for zeros itself.
        return self.data.with_config({"write_empty_chunks": True})

    def write_block(self, block_index: Sequence[int], values: np.ndarray) -> None:
        """Write one block's chunk (none if all zeros: it reads as the fill value),
        then record the block as done.

        The order matters: a process killed between the two leaves the block not
        done, so it is rendered again; never done but unwritten.

        Raises
        ------
        StoreVanishedError
            The store's metadata is gone (the store was deleted while rendering):
            writing on would leave chunks in a directory that is no store.
        """
        self._check_present(block_index, written=False)
        if not _all_zero(values):
            self._chunk_writer[self.block_slices(block_index)] = values
        self.done[tuple(slice(i, i + 1) for i in block_index)] = 1
        self._check_present(block_index, written=True)

    def _check_present(self, block_index: Sequence[int], *, written: bool) -> None:
        """Raise :class:`StoreVanishedError` if the store's metadata is gone.

        Writing a chunk recreates the directories above it, so a block written just
        as the store was deleted would leave a directory that is no store, and the
        rerun would refuse it; such a block's chunks, and the directories they
        brought back, are removed first.
        """
        if self._filesystem.exists(self._metadata):
            return
        if written:
            self._remove_block(block_index)
        raise StoreVanishedError(f"{self.location} was deleted while it was being rendered")

    def _remove_block(self, block_index: Sequence[int]) -> None:
        root = self._root
        key = "/".join(str(i) for i in block_index)
        for array in (str(self.level), level_path(DONE_PATH, self.level)):
            chunk = f"{root}/{array}/c/{key}"
            with contextlib.suppress(OSError):
                self._filesystem.rm_file(chunk)
            # Empty directories from the chunk up to the store itself (local paths:
            # object stores have none). One that is not empty is someone else's.
            directory = chunk.rsplit("/", 1)[0]
            while self._local and len(directory) >= len(root):
                try:
                    self._filesystem.rmdir(directory)
                except OSError:
                    break
                directory = directory.rsplit("/", 1)[0]

    @functools.cached_property
    def _filesystem(self) -> Any:
        return fsspec.core.url_to_fs(self.location)[0]

    @functools.cached_property
    def _local(self) -> bool:
        protocols = self._filesystem.protocol
        return "file" in (protocols if isinstance(protocols, tuple) else (protocols,))

    @functools.cached_property
    def _root(self) -> str:
        """The store's path on its filesystem."""
        return fsspec.core.url_to_fs(self.location)[1].rstrip("/")

    @functools.cached_property
    def _metadata(self) -> str:
        return f"{self._root}/zarr.json"

    @property
    def exchange_root(self) -> str:
        """Where this level's exchange is kept while the level is rendered."""
        return f"{self.location.rstrip('/')}/{EXCHANGE_PATH}/{self.level}"

    def open_exchange(self) -> None:
        """Create the store's node the exchanges are kept beneath, where missing."""
        if EXCHANGE_PATH not in self.group:
            self.group.create_array(EXCHANGE_PATH, shape=(0,), dtype="uint8", attributes={
                "description": "while a level is rendered, its exchange (daskgauss/_exchange.py) "
                "is kept beneath this node: exchange/<level>/parts/<n> and exchange/<level>/index",
            })  # fmt: skip

    def remove_exchanges(self) -> None:
        """Delete every level's exchange and the node they are kept beneath (a complete
        store has none)."""
        with contextlib.suppress(FileNotFoundError):
            self._filesystem.rm(f"{self._root}/{EXCHANGE_PATH}", recursive=True)

    def remove_legacy_sources(self) -> None:
        """Delete the sidecar an earlier release kept for this level, if any."""
        name = level_path(LEGACY_SOURCES_PATH, self.level)
        if name in self.group:
            with contextlib.suppress(FileNotFoundError):
                self._filesystem.rm(f"{self._root}/{name}", recursive=True)


def _all_zero(values: np.ndarray) -> bool:
    """Whether every element is zero; stops at the first 1 MiB piece that is not."""
    flat = values.reshape(-1)
    step = 2**20 // flat.itemsize
    return not any(flat[start : start + step].any() for start in range(0, flat.size, step))


def _target_from_group(location: str, group: zarr.Group, level: int = 0) -> Target:
    return Target(location=location, group=group, data=group[str(level)],
                  done=group[level_path(DONE_PATH, level)], level=level)  # fmt: skip


def open_target(location: str, level: int = 0) -> Target:
    """Open an existing daskgauss store (at pyramid level ``level``).

    Raises
    ------
    FileNotFoundError
        Nothing is at ``location``.
    StoreMismatchError
        Something is there, but not a complete store daskgauss wrote.
    ValueError
        The store has no level ``level``.
    """
    location = normalise_location(location)
    if not location_exists(location):
        raise FileNotFoundError(f"no store at {location}")
    group = _open_job_group(location)
    levels = int(group.attrs["daskgauss"]["job"].get("levels", 0))
    if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= levels:
        raise ValueError(
            f"{location} has pyramid levels 0 to {levels}; there is no level {level!r}"
        )
    try:
        return _target_from_group(location, group, level)
    except KeyError as error:
        raise StoreMismatchError(f"{location} is an incomplete daskgauss store: {error}") from None


def level_targets(location: str) -> list[Target]:
    """The store opened at each of its pyramid levels, level 0 first (see
    :func:`open_target` for the errors)."""
    first = open_target(location)
    return [first, *(open_target(location, level) for level in range(1, first.levels + 1))]


@functools.lru_cache(maxsize=16)
def open_target_for_job(location: str, token: str, level: int = 0) -> Target:
    """:func:`open_target`, cached per process, job and level: what block tasks call."""
    return open_target(location, level)


def _open_job_group(location: str) -> zarr.Group:
    """The group of an existing daskgauss store, or StoreMismatchError."""
    try:
        group = zarr.open_group(location, mode="r+")
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise StoreMismatchError(
            f"{location} exists but is not a daskgauss store ({type(error).__name__}: {error})"
        ) from None
    if "daskgauss" not in group.attrs:
        raise StoreMismatchError(f"{location} is a zarr store that daskgauss did not write")
    return group


def recorded_job(location: str) -> JobSpec | None:
    """The job the store at ``location`` records, or None where nothing is there.

    Raises
    ------
    StoreMismatchError
        Something is at ``location`` that is not a daskgauss store.
    StoreFormatError
        A daskgauss store of another format is there.
    """
    location = normalise_location(location)
    if not location_exists(location) or is_only_a_lock(location):
        return None
    try:
        group = _open_job_group(location)
    except StoreMismatchError as error:
        raise StoreMismatchError(
            f"{error}; refusing to touch it. Choose another path or pass overwrite=True "
            "(--overwrite) to replace it."
        ) from None
    return JobSpec.from_json(dict(group.attrs["daskgauss"]["job"]))


def create_target(location: str, *, spec: JobSpec, overwrite: bool) -> Target:
    """Create the store of a job, or open it to resume the same job.

    The caller has checked, with :func:`recorded_job`, that ``location`` is free,
    holds this very job, or is to be replaced (``overwrite``).

    Parameters
    ----------
    location : str
        Path or fsspec URL.
    spec : JobSpec
        The job: its grid, dtype, blocks, unit and codec shape the store.
    overwrite : bool
        Replace whatever is at ``location``.
    """
    location = normalise_location(location)
    if overwrite:
        remove_location(location, keep=LOCK_NAME)
    if location_exists(location) and not is_only_a_lock(location):
        group = _open_job_group(location)
    else:
        group = zarr.create_group(location, zarr_format=3, attributes={
            "ome": ngff_attributes(spec.grid, spec.unit, name="daskgauss", levels=spec.levels),
            "daskgauss": {"job": spec.to_json(), "token": spec.token},
        })  # fmt: skip
    # Arrays are created only where missing, so a job killed while creating its
    # store resumes like any other.
    for level in range(spec.levels + 1):
        _create_level(group, spec, level)
    return _target_from_group(location, zarr.open_group(location, mode="r+"))


def _create_level(group: zarr.Group, spec: JobSpec, level: int) -> None:
    """Level ``level``'s volume and done flags, where missing."""
    if str(level) not in group:
        group.create_array(
            str(level),
            shape=spec.grid.level(level).shape,
            chunks=spec.block_shape,
            dtype=spec.dtype,
            fill_value=0,
            compressors=compressors_for(str(spec.compression)),
            dimension_names=list(AXES),
            config={"write_empty_chunks": False},
        )
    if level_path(DONE_PATH, level) not in group:
        group.create_array(
            level_path(DONE_PATH, level),
            shape=tuple(len(sizes) for sizes in spec.level_chunks(level)),
            chunks=(1, 1, 1),
            dtype="uint8",
            fill_value=0,
            compressors=None,
            dimension_names=list(AXES),
            # A flag equal to the fill value is no object: listing finds the done blocks.
            config={"write_empty_chunks": False},
        )
