"""daskgauss: sums of 3D Gaussians on regular grids of any size.

``gaussian_sum`` returns a lazy dask array whose every block is computed only from
the Gaussians whose support reaches it; ``render_to_zarr`` writes the same volume
block by block into a Zarr v3 (OME-NGFF) store, resumably, on any dask scheduler.
"""

from importlib.metadata import PackageNotFoundError, version

from ._dataarray import open_dataarray, open_grid, to_dataarray
from ._gaussians import support_half_width
from ._grid import Grid
from ._lazy import gaussian_sum
from ._render import RenderReport, render_to_zarr

try:
    __version__ = version("daskgauss")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

__all__ = [
    "Grid",
    "RenderReport",
    "__version__",
    "gaussian_sum",
    "open_dataarray",
    "open_grid",
    "render_to_zarr",
    "support_half_width",
    "to_dataarray",
]
