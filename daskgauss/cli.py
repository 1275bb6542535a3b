"""The ``daskgauss`` command line: render (Gaussians or a KDE), inspect, preview and export
stores."""

from __future__ import annotations

import errno
import json
import logging
import pathlib
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import click
import numpy as np

from ._centres_io import is_number, read_centres
from ._chunked import is_chunked
from ._cluster import ClusterError, SchedulerLostError, connect
from ._export import export_mrc, preview_png, store_summary
from ._extras import MissingExtraError
from ._grid import Grid
from ._kde import kde_bandwidth, kde_grid
from ._models import model_gaussians, model_grid
from ._plan import Request
from ._render import prepare_render
from ._store import SPACE_UNITS, StoreVanishedError, level_targets

__all__ = ["main"]

# Options that take one value (the same on every axis) or three (x y z).
_PER_AXIS_OPTIONS = (
    "--shape", "--lower", "--upper", "--origin", "--spacing", "--chunks", "--sigma",
)  # fmt: skip
# Errors that are the user's to fix: reported in one line, no traceback. ValueError
# is what daskgauss raises for bad input (StoreMismatchError, StoreFormatError and
# CentresFileError are ValueErrors); the OS errors are paths a user can fix. Anything
# else is a bug: main() shows its traceback and asks for a report.
_USER_ERRORS = (
    ValueError,
    ClusterError,
    MissingExtraError,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
)
# Exit status of an internal error (BSD's EX_SOFTWARE); user errors exit with 1.
EXIT_INTERNAL_ERROR = 70
# Exit status after Ctrl-C: 128 + SIGINT, as shells report it.
EXIT_INTERRUPTED = 130
# Storage failures a user can fix, by errno: what happened, and what to do.
_STORAGE_FAILURES = {
    errno.ENOSPC: "no space left on the device holding the store",
    errno.EDQUOT: "the disk quota of the store's filesystem is used up",
    errno.EROFS: "the store's filesystem is read-only",
    errno.EACCES: "permission denied writing the store",
    errno.EPERM: "permission denied writing the store",
}
_STORAGE_REMEDIES = {
    errno.ENOSPC: "free some space",
    errno.EDQUOT: "free some space or raise the quota",
    errno.EROFS: "make it writable or choose another path",
    errno.EACCES: "fix its permissions or choose another path",
    errno.EPERM: "fix its permissions or choose another path",
}


def join_per_axis_values(arguments: Sequence[str]) -> list[str]:
    """Turn ``--shape 256 256 128`` into ``--shape 256,256,128`` for click.

    Click options take a fixed number of values; these take one or three, so the
    numbers that follow such an option (negative ones included) are joined.
    """
    joined: list[str] = []
    position = 0
    while position < len(arguments):
        token = arguments[position]
        joined.append(token)
        position += 1
        if token in _PER_AXIS_OPTIONS:
            values = []
            while position < len(arguments) and len(values) < 3 and is_number(arguments[position]):
                values.append(arguments[position])
                position += 1
            if values:
                joined.append(",".join(values))
    return joined


def _per_axis(kind: Callable[[str], Any]) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """A click callback parsing ``a`` or ``a,b,c`` into one value or a 3-tuple."""

    def parse(context: click.Context, parameter: click.Parameter, value: Any) -> Any:
        if value is None:
            return None
        parts = [part for part in str(value).split(",") if part]
        if len(parts) not in (1, 3):
            raise click.BadParameter(f"give one value or three (x y z), got {value!r}")
        try:
            numbers = [kind(part) for part in parts]
        except ValueError as error:
            raise click.BadParameter(f"{error}: {value!r}") from None
        return numbers[0] if len(numbers) == 1 else tuple(numbers)

    return parse


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError("not a number") from None


def _positive_int(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        raise ValueError("must be a positive integer") from None
    if number < 1:
        raise ValueError("must be a positive integer")
    return number


def _rate(voxels: float, seconds: float) -> str:
    """Voxels per second with a prefix that keeps small jobs from reading as zero."""
    rate = voxels / max(seconds, 1e-9)
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if rate >= factor:
            return f"{rate / factor:.3g} {prefix}voxel/s"
    return f"{rate:.3g} voxel/s"


class _Commands(click.Group):
    def parse_args(self, context: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(context, join_per_axis_values(args))


def _fail(error: BaseException) -> None:
    message = " ".join(str(error).split()) or type(error).__name__
    raise click.ClickException(message)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="daskgauss")
def cli() -> None:
    """Render sums of 3D Gaussians into Zarr v3 (OME-NGFF) stores, on dask clusters."""


def _options(*decorators: Callable[[Callable], Callable]) -> Callable[[Callable], Callable]:
    """Several click options as one decorator (shared by the commands that render)."""

    def apply(function: Callable) -> Callable:
        for decorator in reversed(decorators):
            function = decorator(function)
        return function

    return apply


_shape_option = click.option(
    "--shape",
    required=True,
    callback=_per_axis(_positive_int),
    metavar="N [N N]",
    help="Samples per axis: one number for all axes or three (x y z).",
)
_grid_options = _options(
    click.option(
        "--lower",
        callback=_per_axis(_number),
        metavar="X [Y Z]",
        help="First sample's coordinates (with --upper: linspace bounds, both ends sampled).",
    ),
    click.option(
        "--upper",
        callback=_per_axis(_number),
        metavar="X [Y Z]",
        help="Last sample's coordinates (with --lower).",
    ),
    click.option(
        "--origin",
        callback=_per_axis(_number),
        metavar="X [Y Z]",
        help="First sample's coordinates (with --spacing).",
    ),
    click.option(
        "--spacing",
        callback=_per_axis(_number),
        metavar="D [D D]",
        help="Distance between samples (with --origin).",
    ),
)
_tol_option = click.option(
    "--tol",
    default=1e-6,
    show_default=True,
    type=float,
    help="Cut each Gaussian below this fraction of its peak.",
)
_output_options = _options(
    click.option(
        "--chunks",
        callback=_per_axis(_positive_int),
        metavar="C [C C]",
        help="Block (and Zarr chunk) size. Default: near-cubic blocks of about 64 MiB, cut "
        "into x slabs (at least 4 MiB) when that makes fewer than 8; a store being resumed "
        "keeps its own.",
    ),
    click.option(
        "--dtype",
        type=click.Choice(["float32", "float64"]),
        default="float32",
        show_default=True,
    ),
    click.option(
        "--unit",
        type=click.Choice(SPACE_UNITS),
        default=None,
        help="Unit of the coordinates, recorded in the OME-NGFF metadata.",
    ),
    click.option(
        "--compression",
        type=click.Choice(["lz4", "none", "zstd", "zstd-plain"]),
        default=None,
        help="Chunk codec (default lz4).",
    ),
    click.option("--overwrite", is_flag=True, help="Replace whatever is at STORE."),
    click.option(
        "--levels",
        default=None,
        metavar="N|auto",
        callback=lambda context, parameter, value: _levels(value),
        help="Also render pyramid levels 1..N (each the 2x2x2 mean of the one below, rendered "
        "from the Gaussians, coarsest first); auto: until the coarsest is at most 256 "
        "samples a side. Axis-aligned Gaussians only.",
    ),
)
_cluster_options = _options(
    click.option(
        "--workers",
        type=click.IntRange(min=1),
        default=None,
        help="Local cluster: worker processes (default: one per 4 cores).",
    ),
    click.option(
        "--threads-per-worker",
        type=click.IntRange(min=1),
        default=None,
        help="Local cluster: threads per worker (default: 2 x cores / workers).",
    ),
    click.option(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="Use the running scheduler at ADDRESS (tcp://host:port) instead.",
    ),
    click.option(
        "--scheduler-file",
        default=None,
        type=click.Path(dir_okay=False),
        help="Use the scheduler described in this file (dask scheduler --scheduler-file).",
    ),
    click.option(
        "--verbose",
        is_flag=True,
        help="Show the local cluster's warnings, and the full traceback of a storage failure.",
    ),
)


@cli.command()
@click.argument("centres")
@click.argument("store")
@_shape_option
@_grid_options
@click.option(
    "--sigma",
    callback=_per_axis(_number),
    metavar="S [S S]",
    help="Standard deviation for every centre (three for anisotropic); "
    "or give sigma / sx sy sz columns in CENTRES.",
)
@click.option(
    "--covariance",
    type=float,
    nargs=6,
    default=None,
    metavar="XX XY XZ YY YZ ZZ",
    help="One full covariance for every centre (coordinate units squared), instead of "
    "--sigma; or give cxx cxy cxz cyy cyz czz columns in CENTRES.",
)
@_tol_option
@click.option(
    "--normalize",
    type=click.Choice(["peak", "density"]),
    default="peak",
    show_default=True,
    help="peak: each peaks at its weight; density: integrates to it.",
)
@click.option("--periodic", is_flag=True, help="Wrap Gaussians around the grid's periodic box.")
@_output_options
@_cluster_options
def render(
    centres: str,
    store: str,
    shape: Any,
    lower: Any,
    upper: Any,
    origin: Any,
    spacing: Any,
    sigma: Any,
    covariance: tuple[float, ...] | None,
    tol: float,
    normalize: str,
    periodic: bool,
    chunks: Any,
    dtype: str,
    **options: Any,
) -> None:
    """Render the Gaussians centred at CENTRES into the Zarr store STORE.

    CENTRES is .npy (M x 3) or .csv/.txt/.xyz with a header naming x y z and
    optional weight and sigma (or sx sy sz, or cxx cxy cxz cyy cyz czz) columns; or,
    read lazily chunk by chunk on the cluster, a Zarr array (M x 3) or group
    (centres, optional weights and sigma or covariance) or Parquet file(s) with
    columns x y z [weight] [sigma | sx sy sz | cxx cxy cxz cyy cyz czz]. CENTRES
    and STORE are paths or fsspec URLs. Running the same command again resumes an
    interrupted render.
    """

    def request() -> tuple[Request, str]:
        grid = _grid_from_options(shape, lower, upper, origin, spacing)
        data = read_centres(centres)
        given = [name for name, value in (("--sigma", sigma), ("--covariance", covariance),
                                          ("sigma columns", data.sigma),
                                          ("covariance columns", data.covariance))
                 if value is not None]  # fmt: skip
        if len(given) != 1:
            raise ValueError(
                f"give one of {' or '.join(given)} (in {centres}), not both" if given else
                f"give --sigma or --covariance, or sigma (sx sy sz) or covariance (cxx cxy cxz "
                f"cyy cyz czz) columns in {centres}"
            )  # fmt: skip
        shared_covariance = None
        if covariance is not None:
            entries = np.array(covariance)
            shared_covariance = entries[[0, 1, 2, 1, 3, 4, 2, 4, 5]].reshape(3, 3)
        return Request(
            data.centres,
            np.array([sigma]) if isinstance(sigma, tuple) else sigma if sigma is not None
            else data.sigma,
            grid,
            weights=data.weights,
            normalize=normalize,
            tol=tol,
            periodic=periodic,
            chunks=chunks,
            dtype=dtype,
            covariance=shared_covariance if covariance is not None else data.covariance,
            pieces=data.pieces,
        ), data.source  # fmt: skip

    _render_job(store, request, **options)


@cli.command()
@click.argument("points")
@click.argument("store")
@_shape_option
@_grid_options
@click.option(
    "--bw",
    default="scott",
    show_default=True,
    metavar="scott|silverman|FACTOR",
    help="Bandwidth rule, as scipy.stats.gaussian_kde's bw_method: the kernel covariance is "
    "the data's (weighted) covariance times the factor squared.",
)
@click.option(
    "--padding",
    type=click.FloatRange(min=0),
    default=3.0,
    show_default=True,
    help="Without grid bounds: the grid spans the points and this many kernel standard "
    "deviations more on every side.",
)
@_tol_option
@_output_options
@_cluster_options
def kde(
    points: str,
    store: str,
    shape: Any,
    lower: Any,
    upper: Any,
    origin: Any,
    spacing: Any,
    bw: str,
    padding: float,
    tol: float,
    chunks: Any,
    dtype: str,
    **options: Any,
) -> None:
    """The kernel density estimate of POINTS on a grid, into the Zarr store STORE.

    The density scipy.stats.gaussian_kde(POINTS.T, BW, weights) gives at each grid
    point. POINTS is a centres file (see `daskgauss render --help`) held in memory;
    its weight column, if any, weights the points. Without --lower/--upper or
    --origin/--spacing the grid spans the points plus --padding bandwidths.
    """

    def request() -> tuple[Request, str]:
        data = read_centres(points)
        if is_chunked(data.centres, data.weights):
            raise ValueError(
                f"daskgauss kde needs the points in memory; {data.source} is read lazily "
                "(Zarr or Parquet): export it to .npy, or call daskgauss.kde in Python"
            )
        if data.sigma is not None or data.covariance is not None:
            raise ValueError(
                f"{points} has sigma or covariance columns: a KDE's kernel comes from --bw; "
                "drop those columns or use `daskgauss render`"
            )
        method: Any = bw if bw in ("scott", "silverman") else _bandwidth_factor(bw)
        bandwidth = kde_bandwidth(data.centres, bw_method=method, weights=data.weights)
        if any(value is not None for value in (lower, upper, origin, spacing)):
            grid = _grid_from_options(shape, lower, upper, origin, spacing)
        else:
            grid = kde_grid(data.centres, shape, bw_method=method, weights=data.weights,
                            padding=padding)  # fmt: skip
        click.echo(f"bandwidth factor {bandwidth.factor:.6g}, {data.centres.shape[0]} points, "
                   f"effective {bandwidth.neff:.6g}")  # fmt: skip
        return Request(data.centres, None, grid, covariance=bandwidth.covariance,
                       weights=bandwidth.weights, normalize="density", tol=tol,
                       chunks=chunks, dtype=dtype), data.source  # fmt: skip

    _render_job(store, request, **options)


@cli.command("model-map")
@click.argument("model")
@click.argument("store")
@click.option(
    "--resolution",
    type=float,
    default=None,
    metavar="R",
    help="Map resolution (Å): molmap's width, sigma = R / (pi sqrt 2), and the default grid "
    "(spacing R / 3, padding 3 R).",
)
@click.option(
    "--mode",
    type=click.Choice(["molmap", "xray", "electron"]),
    default="molmap",
    show_default=True,
    help="molmap: ChimeraX's; xray: electrons/Å³ from gemmi's IT92 tables; electron: the "
    "potential from gemmi's C4322 tables (both with B or ANISOU).",
)
@click.option("--spacing", type=float, default=None, metavar="S", help="Grid spacing (Å).")
@click.option(
    "--padding", type=float, default=None, metavar="P", help="Margin around the atoms (Å)."
)
@click.option("--blur", type=float, default=0.0, show_default=True, help="Extra B (Å²), xray "
              "and electron modes.")  # fmt: skip
@click.option("--no-hydrogens", is_flag=True, help="Leave out hydrogen and deuterium atoms.")
@click.option("--no-waters", is_flag=True, help="Leave out water residues.")
@_tol_option
@_output_options
@_cluster_options
def model_map(
    model: str,
    store: str,
    resolution: float | None,
    mode: str,
    spacing: float | None,
    padding: float | None,
    blur: float,
    no_hydrogens: bool,
    no_waters: bool,
    tol: float,
    chunks: Any,
    dtype: str,
    **options: Any,
) -> None:
    """The density map of the atomic model MODEL (PDB or mmCIF, gzipped or not) into STORE.

    The grid is ChimeraX molmap's (spacing resolution / 3, padding 3 x resolution around
    the atoms) unless --spacing or --padding say otherwise; the unit is angstrom, so
    `daskgauss export STORE map.mrc` gives a map ChimeraX, Coot and gemmi place right.
    """

    def request() -> tuple[Request, str]:
        grid = model_grid(model, resolution=resolution, spacing=spacing, padding=padding)
        gaussians = model_gaussians(model, grid, mode=mode, resolution=resolution, blur=blur,
                                    hydrogens=not no_hydrogens, waters=not no_waters)  # fmt: skip
        return Request(gaussians.centres, gaussians.sigma, grid, weights=gaussians.weights,
                       normalize="density", tol=tol, chunks=chunks,
                       dtype=dtype, covariance=gaussians.covariance,
                       ), gaussians.source  # fmt: skip

    options["unit"] = options["unit"] or "angstrom"
    _render_job(store, request, **options)


def _levels(text: str | None) -> int | str | None:
    if text is None or text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise click.BadParameter(f"give a number of levels or 'auto', got {text!r}") from None


def _bandwidth_factor(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(
            f"--bw must be scott, silverman or a positive number, got {text!r}"
        ) from None


def _render_job(
    store: str,
    request: Callable[[], tuple[Request, str]],
    *,
    unit: str | None,
    compression: str | None,
    overwrite: bool,
    levels: int | str | None,
    workers: int | None,
    threads_per_worker: int | None,
    scheduler: str | None,
    scheduler_file: str | None,
    verbose: bool,
) -> None:
    """Build the request, render it on a cluster, and report the outcome in one line.

    ``request`` is called inside the error handling, so that bad input is reported
    as any other user error.
    """
    started = time.perf_counter()
    if not verbose:
        _quiet_distributed()
    try:
        if scheduler and scheduler_file:
            raise ValueError("give --scheduler or --scheduler-file, not both")
        job_request, source = request()
        grid = job_request.grid
        options = {"unit": unit, "compression": compression, "overwrite": overwrite,
                   "source": source, "levels": levels}  # fmt: skip
        # Centres in memory are validated before a cluster starts; chunked ones (Zarr,
        # Parquet) are validated where their chunks are read, on the cluster.
        chunked = is_chunked(job_request.centres, job_request.sigma, job_request.weights,
                             job_request.covariance)  # fmt: skip
        job = None if chunked else prepare_render(store, job_request, **options)
        with connect(
            scheduler=scheduler,
            scheduler_file=scheduler_file,
            workers=workers,
            threads_per_worker=threads_per_worker,
            quiet=not verbose,
        ) as client:
            where = scheduler or scheduler_file or "a local cluster"
            click.echo(f"rendering {grid.shape} on {where} (dashboard: {client.dashboard_link})")
            if job is None:
                click.echo(f"reading and checking {source} on the cluster")
                job = prepare_render(store, job_request, **options, progress=True)
            report = job.run(progress=True)
    except StoreVanishedError as error:
        _fail(RuntimeError(f"{error}; run the same command to start it again"))
    except SchedulerLostError as error:
        where = scheduler or scheduler_file or "the local cluster"
        _fail(RuntimeError(f"{error} ({where}) {_progress(store)}: when it is back, run the "
                           "same command to resume"))  # fmt: skip
    except KeyboardInterrupt:
        # The local cluster has been shut down by leaving its context above.
        click.echo(f"\ninterrupted {_progress(store)}; run the same command to resume", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except OSError as error:
        problem = _STORAGE_FAILURES.get(error.errno)
        if problem is None:
            if isinstance(error, _USER_ERRORS):
                _fail(error)
            raise
        if verbose:
            traceback.print_exc()
        _fail(RuntimeError(f"{problem} ({store}), {_progress(store)}: "
                           f"{_STORAGE_REMEDIES[error.errno]}, then run the same command to "
                           "resume"))  # fmt: skip
    except _USER_ERRORS as error:
        _fail(error)
    seconds = time.perf_counter() - started
    voxels = float(np.prod(grid.shape))
    click.echo(
        f"wrote {store}: shape {grid.shape} {job_request.dtype}, {report.blocks} blocks "
        f"({report.rendered} rendered, {report.empty} empty, {report.already_done} already done) "
        f"in {seconds:.1f} s, {_rate(voxels, seconds)}"
    )


def _quiet_distributed() -> None:
    """Keep distributed's log to critical messages: expected failures (a lost scheduler, a
    full disk) are reported in one line, and its own log would repeat them as tracebacks."""
    import distributed  # noqa: F401  (configures its loggers, which are then quietened)

    names = [name for name in logging.root.manager.loggerDict if name.startswith("distributed")]
    for name in ["distributed", *names]:
        logging.getLogger(name).setLevel(logging.CRITICAL)


def _progress(store: str) -> str:
    """How far a render got (all levels), for the message after it stopped."""
    try:
        masks = [target.done_mask() for target in level_targets(store)]
    except (*_USER_ERRORS, OSError, KeyError):
        return "before any block was written"
    done, blocks = sum(int(mask.sum()) for mask in masks), sum(mask.size for mask in masks)
    return f"after {done} of {blocks} blocks"


def _grid_from_options(shape: Any, lower: Any, upper: Any, origin: Any, spacing: Any) -> Grid:
    bounds = lower is not None or upper is not None
    placed = origin is not None or spacing is not None
    if bounds == placed:
        raise ValueError("give either --lower and --upper, or --origin and --spacing")
    if bounds:
        if lower is None or upper is None:
            raise ValueError("--lower and --upper go together")
        return Grid.from_bounds(lower, upper, shape)
    if origin is None or spacing is None:
        raise ValueError("--origin and --spacing go together")
    return Grid(shape=shape, origin=origin, spacing=spacing)


_level_option = click.option(
    "--level",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Pyramid level (0: full resolution).",
)


@cli.command()
@click.argument("store")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def info(store: str, as_json: bool) -> None:
    """Shape, grid, parameters and progress of STORE."""
    try:
        summary = store_summary(store)
    except _USER_ERRORS as error:
        _fail(error)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    job = summary["job"]
    grid = summary["grid"]
    unit = summary["unit"] or "coordinate units"
    sigma = job["sigma"]
    lines = [
        f"store       {summary['location']}",
        f"shape       {tuple(summary['shape'])} {summary['dtype']}, "
        f"blocks of {tuple(summary['block_shape'])}",
        f"grid        origin {tuple(grid['origin'])}, spacing {tuple(grid['spacing'])} ({unit})",
        f"gaussians   {job['centres']} centres, "
        f"{'full covariances, sqrt(diagonal) ' if job.get('covariance') else 'sigma '}"
        f"{sigma['min']}..{sigma['max']}, "
        f"tol {job['tol']}, {job['normalize']}{', periodic' if job['periodic'] else ''}",
        f"progress    {summary['blocks_done']} of {summary['blocks']} blocks done",
        f"runs        {len(summary['runs'])}",
    ]
    if len(summary["levels"]) > 1:
        lines[-1:-1] = [
            f"level {level['level']:<5} {tuple(level['shape'])}, spacing "
            f"{tuple(round(h, 9) for h in level['spacing'])}, {level['blocks_done']} of "
            f"{level['blocks']} blocks done"
            for level in summary["levels"]
        ]
    if summary["runs"] and summary["runs"][-1].get("source"):
        lines.append(f"centres     {summary['runs'][-1]['source']}")
    if summary["bytes_on_disk"] is not None:
        lines.append(f"on disk     {summary['bytes_on_disk'] / 2**20:.1f} MiB")
    click.echo("\n".join(lines))


@cli.command()
@click.argument("store")
@click.argument("output", type=click.Path(dir_okay=False))
@click.option(
    "--axis",
    type=click.Choice(["0", "1", "2", "x", "y", "z"]),
    default="z",
    show_default=True,
    help="Axis the plane is cut across.",
)
@click.option("--index", type=int, default=None, help="Plane index (default: the middle).")
@click.option("--max", "projection", is_flag=True, help="Maximum projection along the axis.")
@_level_option
def preview(store: str, output: str, axis: str, index: int | None, projection: bool,
            level: int) -> None:  # fmt: skip
    """Save a plane of STORE, or a maximum projection, as the PNG OUTPUT."""
    if index is not None and projection:
        _fail(ValueError("give --index or --max, not both"))
    try:
        preview_png(store, output, axis="xyz".index(axis) if axis in "xyz" else int(axis),
                    index=index, projection=projection, level=level)  # fmt: skip
    except _USER_ERRORS as error:
        _fail(error)
    click.echo(f"wrote {output}")


@cli.command()
@click.argument("store")
@click.argument("output", type=click.Path(dir_okay=False))
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@_level_option
def export(store: str, output: str, overwrite: bool, level: int) -> None:
    """Write STORE as the MRC file OUTPUT (voxel size and origin set), block by block."""
    try:
        export_mrc(store, output, overwrite=overwrite, level=level)
    except _USER_ERRORS as error:
        _fail(error)
    click.echo(f"wrote {output}")


@cli.command("demo-centres")
@click.argument("output", type=click.Path(dir_okay=False))
@click.option("--count", type=click.IntRange(min=1), default=10000, show_default=True)
@click.option(
    "--box",
    type=click.FloatRange(min=0, min_open=True),
    default=100.0,
    show_default=True,
    help="Side of the cube, centred on 0, the centres fill.",
)
@click.option("--seed", type=int, default=0, show_default=True)
def demo_centres(output: str, count: int, box: float, seed: int) -> None:
    """Write COUNT random centres to OUTPUT (.npy or .csv), for trying daskgauss out."""
    centres = np.random.default_rng(seed).uniform(-box / 2, box / 2, size=(count, 3))
    path = pathlib.Path(output)
    if path.suffix == ".npy":
        np.save(path, centres)
    elif path.suffix in (".csv", ".txt"):
        np.savetxt(path, centres, delimiter=",", header="x,y,z", comments="", fmt="%.6f")
    else:
        _fail(ValueError(f"OUTPUT must end in .npy, .csv or .txt, got {output}"))
    click.echo(f"wrote {count} centres in [{-box / 2:g}, {box / 2:g}]^3 to {output}")


def main(arguments: Sequence[str] | None = None) -> None:
    """Entry point of the ``daskgauss`` command.

    User errors print one line and exit with status 1 (click's habit). Anything
    else is a bug in daskgauss: its full traceback is printed, with a request to
    report it, and the exit status is :data:`EXIT_INTERNAL_ERROR`.
    """
    try:
        cli.main(args=list(sys.argv[1:] if arguments is None else arguments),
                 prog_name="daskgauss")  # fmt: skip
    except Exception:
        traceback.print_exc()
        click.echo(
            "\ndaskgauss hit an internal error: a bug, not a problem with your input. Please "
            "report it to the daskgauss developers with the traceback above and the command "
            "you ran.",
            err=True,
        )
        sys.exit(EXIT_INTERNAL_ERROR)
