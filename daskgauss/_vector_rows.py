"""A numba intrinsic that adds ``weights[r] * factors`` to ``rows`` equally spaced rows.

The kernel's innermost operation, written in LLVM IR because numba's own loops
cannot express it well: rows of a Gaussian's support are short (27 samples at
sigma / spacing = 2.5) and there are many of them, so a loop per row spends more
time entering and leaving vectorised loops than adding. Here the outer loop walks
64-byte chunks of ``factors``, one vector register held across all rows, and the
inner loop walks the rows: a load, a multiply, an add and a store per row and
chunk. The last partial chunk uses masked loads and stores (native on AVX-512,
emulated by LLVM elsewhere), so no scalar tail remains.

Each element is computed as ``row + weight * factor`` with a separate multiply
and add (no fused multiply-add), exactly as the plain loop
``row[k] += weight * factors[k]`` does: results are the same bits on every CPU.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["add_rows"]

# Bytes per vector: one AVX-512 register; LLVM splits it on narrower hardware.
VECTOR_BYTES = 64


def _splat(builder: ir.IRBuilder, value: ir.Value, vector: ir.VectorType) -> ir.Value:
    """A vector with ``value`` in every lane."""
    lanes = vector.count
    index_type = ir.IntType(32)
    single = builder.insert_element(ir.Constant(vector, ir.Undefined), value, index_type(0))
    zeros = ir.Constant(ir.VectorType(index_type, lanes), [0] * lanes)
    return builder.shuffle_vector(single, ir.Constant(vector, ir.Undefined), zeros)


@intrinsic
def add_rows(typingctx, block, offset, stride, weights, factors):
    """``block.flat[offset + r * stride + k] += weights[r] * factors[k]`` for every r, k.

    Parameters (numba types)
    ------------------------
    block : 3D C-contiguous float32 or float64 array
    offset, stride : integers, in elements of ``block``
    weights : 1D C-contiguous array of the block's dtype, one per row
    factors : 1D C-contiguous array of the block's dtype, one per column

    The caller guarantees that every touched element lies inside ``block``.
    """
    arrays = (block, weights, factors)
    if not all(isinstance(a, types.Array) and a.layout == "C" for a in arrays):
        return None
    if block.ndim != 3 or weights.ndim != 1 or factors.ndim != 1:
        return None
    if not (block.dtype == weights.dtype == factors.dtype) or block.dtype not in (
        types.float32,
        types.float64,
    ):
        return None
    if not (isinstance(offset, types.Integer) and isinstance(stride, types.Integer)):
        return None
    signature = types.void(block, types.intp, types.intp, weights, factors)

    def codegen(context, builder, signature, arguments):
        block_value, offset_value, stride_value, weights_value, factors_value = arguments
        block_array = context.make_array(signature.args[0])(context, builder, block_value)
        weight_array = context.make_array(signature.args[3])(context, builder, weights_value)
        factor_array = context.make_array(signature.args[4])(context, builder, factors_value)
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

        rows = builder.extract_value(weight_array.shape, 0)
        length = builder.extract_value(factor_array.shape, 0)
        base = builder.gep(block_array.data, [offset_value])
        full = builder.mul(builder.sdiv(length, intp(lanes)), intp(lanes))

        def row_pointer(row: ir.Value, column: ir.Value) -> ir.Value:
            position = builder.add(builder.mul(row, stride_value), column)
            return builder.bitcast(builder.gep(base, [position]), vector_pointer)

        def weight(row: ir.Value) -> ir.Value:
            return _splat(builder, builder.load(builder.gep(weight_array.data, [row])), vector)

        with cgutils.for_range_slice(builder, intp(0), full, intp(lanes), intp) as (column, _):
            factor = builder.load(
                builder.bitcast(builder.gep(factor_array.data, [column]), vector_pointer),
                align=element_bytes,
            )
            with cgutils.for_range(builder, rows, intp=intp) as loop:
                pointer = row_pointer(loop.index, column)
                current = builder.load(pointer, align=element_bytes)
                product = builder.fmul(weight(loop.index), factor)
                builder.store(builder.fadd(current, product), pointer, align=element_bytes)

        remainder = builder.sub(length, full)
        with builder.if_then(builder.icmp_signed(">", remainder, intp(0))):
            lane_numbers = ir.Constant(ir.VectorType(intp, lanes), list(range(lanes)))
            mask = builder.icmp_signed(
                "<", lane_numbers, _splat(builder, remainder, ir.VectorType(intp, lanes))
            )
            zero = ir.Constant(vector, None)
            factor_pointer = builder.bitcast(builder.gep(factor_array.data, [full]), vector_pointer)
            factor = builder.call(masked_load, [factor_pointer, alignment, mask, zero])
            with cgutils.for_range(builder, rows, intp=intp) as loop:
                pointer = row_pointer(loop.index, full)
                current = builder.call(masked_load, [pointer, alignment, mask, zero])
                product = builder.fmul(weight(loop.index), factor)
                builder.call(
                    masked_store, [builder.fadd(current, product), pointer, alignment, mask]
                )
        return context.get_dummy_value()

    return signature, codegen
