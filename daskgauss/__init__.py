"""daskgauss: sums of 3D Gaussians on regular grids of any size.

``gaussian_sum`` returns a lazy dask array whose every block is computed only from
the Gaussians whose support reaches it; ``render_to_zarr`` writes the same volume
block by block into a Zarr v3 (OME-NGFF) store, resumably, on any dask scheduler.
Gaussians may be aligned with the axes (``sigma``) or have full covariances
(``covariance``); ``kde`` evaluates scipy's ``gaussian_kde`` on a grid through them, and
``model_map`` turns an atomic model (PDB/mmCIF, through gemmi) into a density map.
"""

from importlib.metadata import PackageNotFoundError, version

from ._dataarray import open_dataarray, open_grid, to_dataarray
from ._gaussians import support_half_width
from ._grid import Grid
from ._kde import KdeBandwidth, kde, kde_bandwidth, kde_grid
from ._lazy import gaussian_sum
from ._models import cell_grid, model_grid, model_map
from ._render import RenderReport, render_to_zarr

try:
    __version__ = version("daskgauss")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

__all__ = [
    "Grid",
    "KdeBandwidth",
    "RenderReport",
    "__version__",
    "cell_grid",
    "gaussian_sum",
    "kde",
    "kde_bandwidth",
    "kde_grid",
    "model_grid",
    "model_map",
    "open_dataarray",
    "open_grid",
    "render_to_zarr",
    "support_half_width",
    "to_dataarray",
]
