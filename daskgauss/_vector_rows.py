"""A numba intrinsic that adds one Gaussian to a run of equally spaced rows of a block.

The kernel's innermost operation, written in LLVM IR because numba's own loops
cannot express it well: rows of a Gaussian's support are short (54 samples at
sigma / spacing = 5, 13 at 1.3) and there are many of them, so a loop per row
spends more time entering and leaving vectorised loops (and mispredicting their
ends) than adding. Here each row's weight is computed once, and the row is walked
in 64-byte vectors whose last, partial one uses a masked load and store (native on
AVX-512, emulated by LLVM elsewhere), so no scalar tail remains.

Each element is computed as ``row + weight * factor`` with a separate multiply
and add (no fused multiply-add), exactly as the plain loop
``row[k] += weight * factor_z[k]`` does: results are the same bits on every CPU.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["add_outer_rows"]

# Bytes per vector: one AVX-512 register; LLVM splits it on narrower hardware.
VECTOR_BYTES = 64


def _splat(builder: ir.IRBuilder, value: ir.Value, vector: ir.VectorType) -> ir.Value:
    """A vector with ``value`` in every lane."""
    lanes = vector.count
    index_type = ir.IntType(32)
    single = builder.insert_element(ir.Constant(vector, ir.Undefined), value, index_type(0))
    zeros = ir.Constant(ir.VectorType(index_type, lanes), [0] * lanes)
    return builder.shuffle_vector(single, ir.Constant(vector, ir.Undefined), zeros)


def _is_c_array(value, ndim: int) -> bool:
    return isinstance(value, types.Array) and value.layout == "C" and value.ndim == ndim


@intrinsic
def add_outer_rows(
    typingctx, block, offset, stride, scale, factor_y, y_start, rows, factor_z, z_start, length
):
    """``block.flat[offset + r * stride + k] += w[r] * factor_z[z_start + k]``.

    for ``0 <= r < rows`` and ``0 <= k < length``, where the row weight
    ``w[r] = block.dtype(scale * factor_y[y_start + r])`` is computed in float64
    and then rounded to the block's type.

    Parameters (numba types)
    ------------------------
    block : 3D C-contiguous float32 or float64 array
    offset, stride, y_start, rows, z_start, length : integers, in elements
    scale : float64
    factor_y : 1D C-contiguous float64 array
    factor_z : 1D C-contiguous array of the block's dtype

    The caller guarantees that every touched element lies inside its array.
    """
    if not (_is_c_array(block, 3) and _is_c_array(factor_y, 1) and _is_c_array(factor_z, 1)):
        return None
    if block.dtype not in (types.float32, types.float64) or factor_z.dtype != block.dtype:
        return None
    if factor_y.dtype != types.float64 or not isinstance(scale, types.Float):
        return None
    integers = (offset, stride, y_start, rows, z_start, length)
    if not all(isinstance(value, types.Integer) for value in integers):
        return None
    signature = types.void(
        block,
        types.intp,
        types.intp,
        types.float64,
        factor_y,
        types.intp,
        types.intp,
        factor_z,
        types.intp,
        types.intp,
    )

    def codegen(context, builder, signature, arguments):
        (
            block_value,
            offset_value,
            stride_value,
            scale_value,
            factor_y_value,
            y_start_value,
            rows_value,
            factor_z_value,
            z_start_value,
            length_value,
        ) = arguments
        block_array = context.make_array(signature.args[0])(context, builder, block_value)
        y_array = context.make_array(signature.args[4])(context, builder, factor_y_value)
        z_array = context.make_array(signature.args[7])(context, builder, factor_z_value)
        element = context.get_value_type(signature.args[0].dtype)
        element_bytes = context.get_abi_sizeof(element)
        lanes = VECTOR_BYTES // element_bytes
        vector = ir.VectorType(element, lanes)
        vector_pointer = vector.as_pointer()
        intp = context.get_value_type(types.intp)
        int32 = ir.IntType(32)
        mask_type = ir.VectorType(ir.IntType(1), lanes)
        suffix = f"v{lanes}{'f32' if element_bytes == 4 else 'f64'}"
        masked_load = cgutils.get_or_insert_function(
            builder.module,
            ir.FunctionType(vector, [vector_pointer, int32, mask_type, vector]),
            f"llvm.masked.load.{suffix}.p0",
        )
        masked_store = cgutils.get_or_insert_function(
            builder.module,
            ir.FunctionType(ir.VoidType(), [vector, vector_pointer, int32, mask_type]),
            f"llvm.masked.store.{suffix}.p0",
        )
        alignment = int32(element_bytes)

        def as_vector(pointer: ir.Value) -> ir.Value:
            return builder.bitcast(pointer, vector_pointer)

        block_base = builder.gep(block_array.data, [offset_value])
        y_base = builder.gep(y_array.data, [y_start_value])
        z_base = builder.gep(z_array.data, [z_start_value])
        full = builder.mul(builder.sdiv(length_value, intp(lanes)), intp(lanes))
        remainder = builder.sub(length_value, full)
        lane_numbers = ir.Constant(ir.VectorType(intp, lanes), list(range(lanes)))
        tail = builder.icmp_signed(
            "<", lane_numbers, _splat(builder, remainder, ir.VectorType(intp, lanes))
        )
        zero = ir.Constant(vector, None)
        # Zero lanes past the end: loaded once, used by every row's tail.
        tail_factor = builder.call(
            masked_load, [as_vector(builder.gep(z_base, [full])), alignment, tail, zero]
        )
        with cgutils.for_range(builder, rows_value, intp=intp) as row_loop:
            row = row_loop.index
            weight = builder.fmul(scale_value, builder.load(builder.gep(y_base, [row])))
            if element_bytes == 4:
                weight = builder.fptrunc(weight, element)
            weights = _splat(builder, weight, vector)
            row_base = builder.gep(block_base, [builder.mul(row, stride_value)])
            with cgutils.for_range_slice(builder, intp(0), full, intp(lanes), intp) as (column, _):
                factor = builder.load(as_vector(builder.gep(z_base, [column])), align=element_bytes)
                pointer = as_vector(builder.gep(row_base, [column]))
                current = builder.load(pointer, align=element_bytes)
                updated = builder.fadd(current, builder.fmul(weights, factor))
                builder.store(updated, pointer, align=element_bytes)
            with builder.if_then(builder.icmp_signed(">", remainder, intp(0))):
                pointer = as_vector(builder.gep(row_base, [full]))
                current = builder.call(masked_load, [pointer, alignment, tail, zero])
                updated = builder.fadd(current, builder.fmul(weights, tail_factor))
                builder.call(masked_store, [updated, pointer, alignment, tail])
        return context.get_dummy_value()

    return signature, codegen
