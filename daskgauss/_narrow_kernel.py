"""A block kernel for narrow Gaussians (sigma of 0.3 to 3 samples) in large numbers.

Same inputs, same output bits and same update count as
:func:`daskgauss._kernel.add_gaussians_to_block`, built for the other end of the
range: supports of 3 to 30 samples and 10^6 or more Gaussians per block, where
the cost per Gaussian, not per update, decides.

How
---
* Gaussian by Gaussian, in the order given: the caller hands the sources already
  in a spatially local order (:func:`spatial_order`), so that consecutive
  Gaussians touch the same cache lines.
* Batched 1D factors: the exponents of the clipped sample ranges of a batch of
  Gaussians are laid end to end in small reused buffers (one per axis, about a
  thousand samples; written 8 samples at a time, one vector each), and the
  factors ``exp(-exponent)`` are evaluated in one long loop per axis, which LLVM
  vectorises (the exp is most of the per-Gaussian work); a loop per Gaussian
  would be seven iterations long and stay scalar. The same loop notes a NaN
  exponent (an or-reduction; a float sum would be a serial chain).
* Lazy clearing (``overwrite``): each plane's rows are cleared just before the
  first Gaussian that reaches them (and the rest at the end), so the zeros are
  written into lines the rows are about to update rather than in a separate
  pass over the whole block, which went out of cache before the sweep came back
  (about 7 % of the time at 10^6 Gaussians on 256^3). Correct for any order:
  a plane's rows are cleared upwards from the last cleared one, nothing is ever
  added beyond it, and the batch is gathered (and cleared) before it is added.
* One call per Gaussian for all its rows (:func:`_add_gaussian_rows`): every
  candidate row of every plane is visited (fixed trip counts, no mispredicted
  loop ends), a row's x-y cut is a lane mask, and a row of up to 8 (16 in
  float32) samples is a single vector load, multiply, add and store; where
  a full vector fits inside the block the load is a plain one (LLVM turns the
  blend of old and new values into a masked store all the same).

Why the bits are the existing kernel's
--------------------------------------
Every value is computed by the same IEEE operations in the same order: the
factors ``scale * exp_negative(0.5 ((origin + t spacing - p) / s)^2)`` (``1.0 * v``
is ``v``, so y and z skip the multiply), z factors rounded to the block's dtype,
the row weight ``dtype(fx * fy)`` and ``voxel + weight * fz`` with no fused
multiply-add; each voxel receives its Gaussians in the given order. The existing
kernel keeps, on each plane, the run of rows its grow-and-shrink scan finds;
with no NaN among the exponents and the cut that run is exactly the set of rows
whose x-y exponent is within the cut (the y exponent is monotone on each side of
its minimum in floating point, and ``ex + ey`` is monotone in ``ey``), which is
what this kernel tests row by row. A batch holding a NaN exponent (or a NaN cut)
is rendered with the existing kernel's scan instead.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ._exp import exp_negative
from ._vector_rows import _splat, add_outer_rows

__all__ = ["add_narrow_gaussians_to_block", "prefer_narrow"]

# Samples per axis of the factor buffers of one batch (at least the block's width).
BATCH_SAMPLES = 1024
# prefer_narrow's rule: narrow where a block holds a source per this many voxels ...
DENSE_VOXELS = 1000
# ... or where the supports' widest sides average at most this many samples.
NARROW_WIDTH = 8.0


def _is_c_array(value, ndim: int) -> bool:
    return isinstance(value, types.Array) and value.layout == "C" and value.ndim == ndim


@intrinsic
def _add_gaussian_rows(typingctx, block, offset, plane_stride, row_stride, room, exponent_x,
                       factor_x, x_start, planes, exponent_y, factor_y, y_start, rows, factor_z,
                       z_start, length, cut):  # fmt: skip
    """Add one Gaussian's kept rows to its clipped box of ``block``; return the kept row count.

    For plane ``i < planes`` and row ``r < rows`` the row is kept where
    ``exponent_x[x_start + i] + exponent_y[y_start + r] <= cut`` (unordered, as
    ``not >``), and then ``block.flat[offset + i * plane_stride + r * row_stride + k]
    += w * factor_z[z_start + k]`` for ``k < length``, with
    ``w = block.dtype(factor_x[x_start + i] * factor_y[y_start + r])``.
    ``room``: elements of ``block`` from the start of the box's last row to the
    array's end; where a full vector fits, rows are written whole (old values in
    the lanes outside the row), else with masked stores.
    """
    if not (_is_c_array(block, 3) and block.dtype in (types.float32, types.float64)):
        return None
    floats = (exponent_x, factor_x, exponent_y, factor_y)
    if not all(_is_c_array(a, 1) and a.dtype == types.float64 for a in floats):
        return None
    if not (_is_c_array(factor_z, 1) and factor_z.dtype == block.dtype):
        return None
    signature = types.intp(block, types.intp, types.intp, types.intp, types.intp, exponent_x,
                           factor_x, types.intp, types.intp, exponent_y, factor_y, types.intp,
                           types.intp, factor_z, types.intp, types.intp, types.float64)  # fmt: skip

    def codegen(context, builder, signature, arguments):
        (block_value, offset, plane_stride, row_stride, room, ex_value, fx_value, x_start, planes,
         ey_value, fy_value, y_start, rows, fz_value, z_start, length, cut) = arguments  # fmt: skip

        def data(position, value, start):
            array = context.make_array(signature.args[position])(context, builder, value)
            return builder.gep(array.data, [start])

        block_base = data(0, block_value, offset)
        ex_base = data(5, ex_value, x_start)
        fx_base = data(6, fx_value, x_start)
        ey_base = data(9, ey_value, y_start)
        fy_base = data(10, fy_value, y_start)
        fz_base = data(13, fz_value, z_start)
        element = context.get_value_type(signature.args[0].dtype)
        element_bytes = context.get_abi_sizeof(element)
        intp = context.get_value_type(types.intp)
        int32 = ir.IntType(32)
        alignment = int32(element_bytes)
        kept_rows = cgutils.alloca_once_value(builder, intp(0))

        def masked_functions(lanes):
            vector = ir.VectorType(element, lanes)
            mask = ir.VectorType(ir.IntType(1), lanes)
            suffix = f"v{lanes}{'f32' if element_bytes == 4 else 'f64'}"
            load = cgutils.get_or_insert_function(
                builder.module,
                ir.FunctionType(vector, [vector.as_pointer(), int32, mask, vector]),
                f"llvm.masked.load.{suffix}.p0",
            )
            store = cgutils.get_or_insert_function(
                builder.module,
                ir.FunctionType(ir.VoidType(), [vector, vector.as_pointer(), int32, mask]),
                f"llvm.masked.store.{suffix}.p0",
            )
            return vector, mask, load, store

        def lane_mask(lanes, count):
            numbers = ir.Constant(ir.VectorType(intp, lanes), list(range(lanes)))
            return builder.icmp_signed("<", numbers, _splat(builder, count, numbers.type))

        def each_row(body):
            """``body(kept, weight, row pointer)`` for every plane and row of the box."""
            with cgutils.for_range(builder, planes, intp=intp) as plane_loop:
                i = plane_loop.index
                ex = builder.load(builder.gep(ex_base, [i]))
                fx = builder.load(builder.gep(fx_base, [i]))
                plane = builder.gep(block_base, [builder.mul(i, plane_stride)])
                with cgutils.for_range(builder, rows, intp=intp) as row_loop:
                    r = row_loop.index
                    total = builder.fadd(ex, builder.load(builder.gep(ey_base, [r])))
                    kept = builder.fcmp_unordered("<=", total, cut)
                    weight = builder.fmul(fx, builder.load(builder.gep(fy_base, [r])))
                    if element_bytes == 4:
                        weight = builder.fptrunc(weight, element)
                    body(kept, weight, builder.gep(plane, [builder.mul(r, row_stride)]))

        def one_vector_rows(lanes):
            """Rows of at most ``lanes`` samples: one vector each, no branch."""
            vector, mask_type, load, store = masked_functions(lanes)
            pointer_type = vector.as_pointer()
            zero = ir.Constant(vector, None)
            tail = lane_mask(lanes, length)
            factors = builder.call(load, [builder.bitcast(fz_base, pointer_type), alignment, tail,
                                          zero])  # fmt: skip
            whole = builder.icmp_signed(">=", room, intp(lanes))

            def blended(kept, weight, row):
                mask = builder.and_(tail, _splat(builder, kept, mask_type))
                pointer = builder.bitcast(row, pointer_type)
                current = builder.load(pointer, align=element_bytes)
                updated = builder.fadd(current, builder.fmul(_splat(builder, weight, vector),
                                                             factors))  # fmt: skip
                builder.store(builder.select(mask, updated, current), pointer, align=element_bytes)
                count = builder.load(kept_rows)
                builder.store(builder.add(count, builder.zext(kept, intp)), kept_rows)

            def masked(kept, weight, row):
                mask = builder.and_(tail, _splat(builder, kept, mask_type))
                pointer = builder.bitcast(row, pointer_type)
                current = builder.call(load, [pointer, alignment, mask, zero])
                updated = builder.fadd(current, builder.fmul(_splat(builder, weight, vector),
                                                             factors))  # fmt: skip
                builder.call(store, [updated, pointer, alignment, mask])
                count = builder.load(kept_rows)
                builder.store(builder.add(count, builder.zext(kept, intp)), kept_rows)

            with builder.if_else(whole) as (then, otherwise):
                with then:
                    each_row(blended)
                with otherwise:
                    each_row(masked)

        def long_rows():
            """Rows of any length: skipped when cut, 64-byte vectors, masked tail."""
            lanes = 64 // element_bytes
            vector, _, load, store = masked_functions(lanes)
            pointer_type = vector.as_pointer()
            zero = ir.Constant(vector, None)
            full = builder.mul(builder.sdiv(length, intp(lanes)), intp(lanes))
            remainder = builder.sub(length, full)
            tail = lane_mask(lanes, remainder)
            tail_pointer = builder.bitcast(builder.gep(fz_base, [full]), pointer_type)
            tail_factors = builder.call(load, [tail_pointer, alignment, tail, zero])

            def body(kept, weight, row):
                with builder.if_then(kept):
                    count = builder.load(kept_rows)
                    builder.store(builder.add(count, intp(1)), kept_rows)
                    weights = _splat(builder, weight, vector)
                    step = intp(lanes)
                    with cgutils.for_range_slice(builder, intp(0), full, step, intp) as (k, _):
                        factor_pointer = builder.bitcast(builder.gep(fz_base, [k]), pointer_type)
                        factor = builder.load(factor_pointer, align=element_bytes)
                        pointer = builder.bitcast(builder.gep(row, [k]), pointer_type)
                        current = builder.load(pointer, align=element_bytes)
                        updated = builder.fadd(current, builder.fmul(weights, factor))
                        builder.store(updated, pointer, align=element_bytes)
                    with builder.if_then(builder.icmp_signed(">", remainder, intp(0))):
                        pointer = builder.bitcast(builder.gep(row, [full]), pointer_type)
                        current = builder.call(load, [pointer, alignment, tail, zero])
                        updated = builder.fadd(current, builder.fmul(weights, tail_factors))
                        builder.call(store, [updated, pointer, alignment, tail])

            each_row(body)

        with builder.if_else(builder.icmp_signed("<=", length, intp(8))) as (short, longer):
            with short:
                one_vector_rows(8)
            with longer:
                if element_bytes == 4:
                    medium = builder.icmp_signed("<=", length, intp(16))
                    with builder.if_else(medium) as (then, otherwise):
                        with then:
                            one_vector_rows(16)
                        with otherwise:
                            long_rows()
                else:
                    long_rows()
        return builder.load(kept_rows)

    return signature, codegen


@numba.njit(nogil=True, cache=True, error_model="numpy", inline="always")
def _lay_out(first, count, origin, spacing, position, sigma, at, exponents):
    """Exponents of a Gaussian's samples ``first .. first + count - 1`` of one axis at ``at``.

    ``0.5 ((origin + t spacing - position) / sigma)^2``, written in whole 8-sample
    pieces (one vector each); the buffer has 8 spare entries, and whatever lies
    past ``at + count`` is overwritten by the next Gaussian or never read.
    """
    for base in range(0, count, 8):
        piece = exponents[at + base : at + base + 8]
        for j in range(8):
            coordinate = origin + (first + base + j) * spacing
            scaled = (coordinate - position) / sigma
            piece[j] = 0.5 * scaled * scaled


@numba.njit(nogil=True, cache=True, error_model="numpy", inline="always")
def _lay_out_scale(count, scale, at, weight):
    """``scale`` over the Gaussian's ``count`` samples at ``at`` (as :func:`_lay_out`)."""
    for base in range(0, count, 8):
        piece = weight[at + base : at + base + 8]
        for j in range(8):
            piece[j] = scale


@numba.njit(nogil=True, cache=True, error_model="numpy")
def _evaluate(count, weight, exponents, factors):
    """``weight * exp(-exponent)`` of ``count`` laid-out exponents (vectorised); any NaN?"""
    nan = False
    for e in range(count):
        exponent = exponents[e]
        nan |= exponent != exponent
        factors[e] = weight[e] * exp_negative(exponent)
    return nan


@numba.njit(nogil=True, cache=True, error_model="numpy")
def _evaluate_unscaled(count, exponents, factors):
    """As :func:`_evaluate` with weight 1 (``1.0 * v`` is ``v``: the same bits)."""
    nan = False
    for e in range(count):
        exponent = exponents[e]
        nan |= exponent != exponent
        factors[e] = exp_negative(exponent)
    return nan


@numba.njit(nogil=True, cache=True)
def _add_scanned_rows(block, x0, y0, z0, ex, fx, ox, lx, ey, fy, oy, ly, fz, oz, lz, cut):
    """One Gaussian with the existing kernel's grow-and-shrink row scan (NaN batches)."""
    ny = block.shape[1]
    nz = block.shape[2]
    updates = 0
    first = oy
    last = oy - 1
    low = oy
    high = oy + ly - 1
    for i in range(lx):
        e = ex[ox + i]
        if first > last:
            first = low
            last = high
        while first > low and e + ey[first - 1] <= cut:
            first -= 1
        while last < high and e + ey[last + 1] <= cut:
            last += 1
        while first <= last and e + ey[first] > cut:
            first += 1
        while last >= first and e + ey[last] > cut:
            last -= 1
        if first > last:
            continue
        rows = last - first + 1
        offset = ((x0 + i) * ny + y0 + first - oy) * nz + z0
        add_outer_rows(block, offset, nz, fx[ox + i], fy, first, rows, fz, oz, lz)
        updates += rows * lz
    return updates


@numba.njit(nogil=True, cache=True, error_model="numpy")
def add_narrow_gaussians_to_block(
    block: np.ndarray,
    block_start: np.ndarray,
    origin: np.ndarray,
    spacing: np.ndarray,
    positions: np.ndarray,
    sigma: np.ndarray,
    amplitude: np.ndarray,
    index_low: np.ndarray,
    index_high: np.ndarray,
    log_inverse_tol: float,
    overwrite: bool,
) -> int:
    """Add truncated Gaussians into ``block`` in place, Gaussian by Gaussian.

    Arguments, result and output bits are those of
    :func:`daskgauss._kernel.add_gaussians_to_block` (without ``strip``): for the
    same inputs in the same order the block ends bit-identical and the returned
    number of voxel updates is equal. Fast when the sources come in a spatially
    local order (:func:`spatial_order`) and are narrow; correct for any.
    """
    nx, ny, nz = block.shape
    # Rows cleared so far per plane (overwrite): rows are cleared just before the first
    # Gaussian that reaches them, while the lines are about to be used anyway.
    cleared = np.full(nx, 0 if overwrite else ny, np.int64)
    capacity = max(BATCH_SAMPLES, nx, ny, nz)
    weight = np.empty(capacity + 8)
    exponents = np.empty((3, capacity + 8))
    factors = np.empty((3, capacity))
    factor_z = np.empty(capacity, block.dtype)
    # Per Gaussian of a batch: clipped box start (block-local) and sample offsets.
    box = np.empty((capacity, 3), np.int64)
    start = np.empty((capacity + 1, 3), np.int64)
    start[0, :] = 0
    exponent_x, factor_x = exponents[0], factors[0]
    exponent_y, factor_y = exponents[1], factors[1]
    cut = log_inverse_tol
    size = block.size
    updates = 0
    count = positions.shape[0]
    # sigma and amplitude may hold one row shared by every Gaussian.
    sigma_step = 1 if sigma.shape[0] > 1 else 0
    amplitude_step = 1 if amplitude.shape[0] > 1 else 0
    c = 0
    while c < count:
        # Gather a batch: the next Gaussians whose samples fit the buffers.
        batch = 0
        used_x = used_y = used_z = 0
        while c < count:
            x0 = max(index_low[c, 0] - block_start[0], 0)
            x1 = min(index_high[c, 0] - block_start[0], nx - 1)
            y0 = max(index_low[c, 1] - block_start[1], 0)
            y1 = min(index_high[c, 1] - block_start[1], ny - 1)
            z0 = max(index_low[c, 2] - block_start[2], 0)
            z1 = min(index_high[c, 2] - block_start[2], nz - 1)
            if x0 > x1 or y0 > y1 or z0 > z1:
                c += 1
                continue
            lx = x1 - x0 + 1
            ly = y1 - y0 + 1
            lz = z1 - z0 + 1
            if used_x + lx > capacity or used_y + ly > capacity or used_z + lz > capacity:
                break
            # Before anything of this batch is added (below), its rows are cleared.
            for p in range(x0, x1 + 1):
                if cleared[p] <= y1:
                    block[p, cleared[p] : y1 + 1, :] = 0
                    cleared[p] = y1 + 1
            _lay_out(
                block_start[0] + x0,
                lx,
                origin[0],
                spacing[0],
                positions[c, 0],
                sigma[c * sigma_step, 0],
                used_x,
                exponent_x,
            )
            _lay_out_scale(lx, amplitude[c * amplitude_step], used_x, weight)
            _lay_out(
                block_start[1] + y0,
                ly,
                origin[1],
                spacing[1],
                positions[c, 1],
                sigma[c * sigma_step, 1],
                used_y,
                exponent_y,
            )
            _lay_out(
                block_start[2] + z0,
                lz,
                origin[2],
                spacing[2],
                positions[c, 2],
                sigma[c * sigma_step, 2],
                used_z,
                exponents[2],
            )
            box[batch, 0] = x0
            box[batch, 1] = y0
            box[batch, 2] = z0
            used_x += lx
            used_y += ly
            used_z += lz
            start[batch + 1, 0] = used_x
            start[batch + 1, 1] = used_y
            start[batch + 1, 2] = used_z
            batch += 1
            c += 1
        nan = _evaluate(used_x, weight, exponent_x, factor_x)
        nan |= _evaluate_unscaled(used_y, exponent_y, factor_y)
        _evaluate_unscaled(used_z, exponents[2], factors[2])
        for e in range(used_z):
            factor_z[e] = factors[2, e]
        scanned = cut != cut or nan
        for g in range(batch):
            x0 = box[g, 0]
            y0 = box[g, 1]
            z0 = box[g, 2]
            ox = start[g, 0]
            oy = start[g, 1]
            oz = start[g, 2]
            lx = start[g + 1, 0] - ox
            ly = start[g + 1, 1] - oy
            lz = start[g + 1, 2] - oz
            if scanned:
                updates += _add_scanned_rows(block, x0, y0, z0, exponent_x, factor_x, ox, lx,
                                             exponent_y, factor_y, oy, ly, factor_z, oz, lz,
                                             cut)  # fmt: skip
                continue
            offset = (x0 * ny + y0) * nz + z0
            room = size - (((x0 + lx - 1) * ny + y0 + ly - 1) * nz + z0)
            kept = _add_gaussian_rows(block, offset, ny * nz, nz, room, exponent_x, factor_x, ox,
                                      lx, exponent_y, factor_y, oy, ly, factor_z, oz, lz,
                                      cut)  # fmt: skip
            updates += kept * lz
    # Every row ends cleared, reached or not.
    for p in range(nx):
        block[p, cleared[p] :, :] = 0
    return updates


@numba.njit(nogil=True, cache=True)
def _mean_widest_side(index_low, index_high):
    total = 0.0
    for c in range(index_low.shape[0]):
        widest = 0
        for d in range(3):
            widest = max(widest, index_high[c, d] - index_low[c, d] + 1)
        total += widest
    return total / max(index_low.shape[0], 1)


def prefer_narrow(block_voxels: int, index_low: np.ndarray, index_high: np.ndarray) -> bool:
    """Whether :func:`add_narrow_gaussians_to_block` should beat the strip kernel.

    Both kernels give the same bits for the same sources in the same order, so
    this is a matter of speed only.

    Parameters
    ----------
    block_voxels : int
        The block's size.
    index_low, index_high : ndarray, shape (K, 3), int32 or int64
        The sources' support boxes (sample indices).

    Rule: the narrow kernel where sources are dense (at least one per
    ``DENSE_VOXELS`` voxels of the block) or narrow (the mean over the sources of
    their support box's widest side at most ``NARROW_WIDTH`` samples). The
    measurements behind it are in benchmarks/RESULTS.md.
    """
    count = index_low.shape[0]
    if count == 0:
        return False
    if count * DENSE_VOXELS >= block_voxels:
        return True
    return _mean_widest_side(index_low, index_high) <= NARROW_WIDTH
