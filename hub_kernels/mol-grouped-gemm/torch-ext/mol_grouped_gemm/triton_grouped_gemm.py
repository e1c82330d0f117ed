"""The grouped linear op in Triton: Y[rows of g] = act(X[rows of g] @ W[g] + b[g]) and its backward.

Two kernels, both fed the int32 cumulative row ends (`offsets`) as a device tensor, so group sizes never reach
the host and nothing waits for the GPU:

- `_grouped_matmul_kernel` (forward, and dx = dY @ W[g]^T by passing W transposed through its strides): one
  program per (row tile, column tile). The grid is sized by an upper bound that needs only shapes,
  cdiv(rows, BLOCK_M) + groups row tiles (each group adds at most one partial tile); every program finds its own
  group from the offsets with a prefix sum of per-group tile counts. Tiles past the groups' own cover the rows
  past the last offset and write zeros there, so no output row is ever left uninitialised. Bias and GELU are
  applied to the fp32 accumulator before the one store (the epilogue).
- `_grouped_weight_grad_kernel` (dW[g] = X[g]^T @ dY[g], "k-split by group"): one program per (group, in tile,
  out tile) reducing over the group's rows; an empty group's loop runs zero times and stores exact zeros. One
  extra tile row per group sums dY's columns into dbias in the same launch. Groups are visited largest first
  (an on-device argsort), so the longest programs start first and the tail of the launch stays short.

Products accumulate in fp32 for bf16/fp16 inputs; fp32 inputs use IEEE fp32 unless torch's float32 matmul
precision allows TF32.
"""

import os

import torch
import triton
import triton.language as tl

from . import hopper_grouped_gemm, reference
from ._common import _dot, _dot_flags, _gelu, interpreted, runs_here


# Which kernels run: "auto" (the Hopper kernels of hopper_grouped_gemm.py on sm_90+ where TMA can address the
# operands, else the portable ones below), "hopper" (the Hopper kernels wherever they can run, the interpreter
# included: for tests) or "portable" (always the kernels below).
PATHS = ("auto", "hopper", "portable")
PATH = os.environ.get("MOL_GROUPED_GEMM_PATH", "auto")


# ---- tile configurations ------------------------------------------------------------------------------------------
# Hopper-sized tiles first (128x128 or 128x256 outputs, K steps of 64, 8 warps, 3-4 pipeline stages fit in the
# H100's 228 KB of shared memory); smaller tiles for narrow layers and older GPUs. The autotuner keys on the
# layer shape and group count, never on the token count, which changes with every batch.
def _matmul_configs():
    shapes = [
        (128, 128, 64, 8, 3), (128, 128, 64, 8, 4), (128, 256, 64, 8, 3), (256, 128, 64, 8, 3),
        (128, 128, 64, 4, 4), (64, 128, 64, 4, 4), (128, 64, 64, 4, 4), (64, 64, 64, 4, 4),
    ]
    return [
        triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "SWIZZLE_M": 8}, num_warps=w, num_stages=s)
        for m, n, k, w, s in shapes
    ]


def _weight_grad_configs():
    shapes = [
        (128, 128, 64, 8, 3), (128, 128, 64, 8, 4), (128, 256, 64, 8, 3), (128, 128, 32, 4, 4),
        (64, 128, 64, 4, 4), (64, 64, 64, 4, 4),
    ]
    return [
        triton.Config({"BLOCK_K": k, "BLOCK_N": n, "BLOCK_R": r}, num_warps=w, num_stages=s)
        for k, n, r, w, s in shapes
    ]


# The interpreter (TRITON_INTERPRET=1, CPU tensors) runs one small fixed tile: tl.dot needs 16 at least.
INTERPRETER_MATMUL_META = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "SWIZZLE_M": 2}
INTERPRETER_WEIGHT_GRAD_META = {"BLOCK_K": 16, "BLOCK_N": 16, "BLOCK_R": 16}


# ---- device helpers -----------------------------------------------------------------------------------------------
@triton.jit
def _swizzle(pid, tiles_m, tiles_n, SWIZZLE_M: tl.constexpr):
    """Program id -> (row tile, column tile), SWIZZLE_M row tiles at a time, so neighbouring programs share the
    same weight columns and activation rows while they sit in L2."""
    band_width = SWIZZLE_M * tiles_n
    band_first = (pid // band_width) * SWIZZLE_M
    band_height = tl.minimum(tiles_m - band_first, SWIZZLE_M)
    tile_m = band_first + (pid % band_width) % band_height
    tile_n = (pid % band_width) // band_height
    return tile_m, tile_n


@triton.jit
def _row_tile(offsets_ptr, num_groups, num_rows, tile, BLOCK_M: tl.constexpr, GROUPS_POW2: tl.constexpr):
    """The `tile`-th row tile: (group, in_group, first row, end row).

    Groups own tiles in order, cdiv(size, BLOCK_M) each; tiles after them cover the rows past the last offset
    (in_group false). The group index is clamped into range so that pointer arithmetic stays in bounds, and the
    offsets into [0, num_rows] (a decreasing pair gives an empty group): offsets past the rows, which the op
    refuses, can never make a program write past the output."""
    idx = tl.arange(0, GROUPS_POW2)
    valid = idx < num_groups
    ends = tl.load(offsets_ptr + idx, mask=valid, other=0)
    starts = tl.load(offsets_ptr + idx - 1, mask=valid & (idx > 0), other=0)
    ends = tl.minimum(tl.maximum(ends, 0), num_rows)
    starts = tl.minimum(tl.maximum(starts, 0), ends)
    tiles = tl.where(valid, (ends - starts + BLOCK_M - 1) // BLOCK_M, 0)
    tile_ends = tl.cumsum(tiles, 0)
    group = tl.sum((tile_ends <= tile).to(tl.int32), 0)
    in_group = group < num_groups
    mine = idx == group
    group_first_tile = tl.sum(tl.where(mine, tile_ends - tiles, 0), 0)
    row_start = tl.where(
        in_group,
        tl.sum(tl.where(mine, starts, 0), 0) + (tile - group_first_tile) * BLOCK_M,
        tl.max(ends, 0) + (tile - tl.sum(tiles, 0)) * BLOCK_M,
    )
    row_end = tl.where(in_group, tl.sum(tl.where(mine, ends, 0), 0), num_rows)
    return tl.minimum(group, num_groups - 1), in_group, row_start, row_end


# ---- forward and input gradient -----------------------------------------------------------------------------------
@triton.jit
def _grouped_matmul_kernel(
    a_ptr, b_ptr, bias_ptr, out_ptr, preact_ptr, offsets_ptr,
    num_rows, N, K, num_groups,
    stride_am, stride_ak, stride_bg, stride_bk, stride_bn, stride_bias_g, stride_om, stride_on,
    HAS_BIAS: tl.constexpr, GELU: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr, EVEN_K: tl.constexpr,
    GROUPS_POW2: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    SWIZZLE_M: tl.constexpr,
):
    """out[rows of g] = act(a[rows of g] @ b[g] + bias[g]); zeros past the last offset."""
    tiles_m = tl.cdiv(num_rows, BLOCK_M) + num_groups
    tile_m, tile_n = _swizzle(tl.program_id(0), tiles_m, tl.cdiv(N, BLOCK_N), SWIZZLE_M)
    group, in_group, row_start, row_end = _row_tile(offsets_ptr, num_groups, num_rows, tile_m, BLOCK_M, GROUPS_POW2)

    rows = row_start + tl.arange(0, BLOCK_M)
    cols = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ks = tl.arange(0, BLOCK_K)
    # Rows beyond the group (the next group's, clamped into the tensor) and columns beyond N (wrapped) are loaded
    # and multiplied but never stored: the inner loop needs no row or column masks.
    a_rows = tl.minimum(rows, num_rows - 1).to(tl.int64)
    b_cols = cols % N
    a_ptrs = a_ptr + a_rows[:, None] * stride_am + ks[None, :] * stride_ak
    b_ptrs = b_ptr + group.to(tl.int64) * stride_bg + ks[:, None] * stride_bk + b_cols[None, :] * stride_bn

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    k_end = tl.where(in_group, K, 0)  # the rows past the last offset multiply nothing
    for k in range(0, k_end, BLOCK_K):
        if EVEN_K:
            a = tl.load(a_ptrs)
            b = tl.load(b_ptrs)
        else:
            k_left = K - k
            a = tl.load(a_ptrs, mask=ks[None, :] < k_left, other=0.0)
            b = tl.load(b_ptrs, mask=ks[:, None] < k_left, other=0.0)
        acc = _dot(a, b, acc, PRECISION, UPCAST)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk

    if HAS_BIAS:
        # Tail tiles add no bias. (A vector compare, not `& in_group`: the interpreter mis-types scalar masks.)
        bias_cols = tl.where(in_group, N, 0)
        bias = tl.load(bias_ptr + group * stride_bias_g + b_cols, mask=b_cols < bias_cols, other=0.0)
        acc += bias.to(tl.float32)[None, :]
    out_offsets = rows.to(tl.int64)[:, None] * stride_om + cols[None, :] * stride_on
    mask = (rows < row_end)[:, None] & (cols < N)[None, :]
    if GELU:
        tl.store(preact_ptr + out_offsets, acc.to(preact_ptr.dtype.element_ty), mask=mask)
        acc = _gelu(acc)
    tl.store(out_ptr + out_offsets, acc.to(out_ptr.dtype.element_ty), mask=mask)


_MATMUL_TUNING_KEY = ["N", "K", "num_groups", "stride_bk", "stride_bn"]  # B's strides tell forward (W) from dx (W^T)
_grouped_matmul_tuned = triton.autotune(configs=_matmul_configs(), key=_MATMUL_TUNING_KEY)(
    triton.heuristics({"EVEN_K": lambda args: args["K"] % args["BLOCK_K"] == 0})(_grouped_matmul_kernel)
)


# ---- weight and bias gradients ------------------------------------------------------------------------------------
@triton.jit
def _grouped_weight_grad_kernel(
    x_ptr, dy_ptr, dw_ptr, db_ptr, offsets_ptr, order_ptr,
    num_rows, K, N, num_groups,
    stride_xm, stride_xk, stride_dym, stride_dyn, stride_dwg, stride_dwk, stride_dwn, stride_db_g,
    HAS_DBIAS: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """dw[g] = x[rows of g]^T @ dy[rows of g]; with HAS_DBIAS, db[g] = column sums of dy[rows of g]."""
    tiles_w = tl.cdiv(K, BLOCK_K)
    tiles_n = tl.cdiv(N, BLOCK_N)
    tiles_per_group = (tiles_w + HAS_DBIAS) * tiles_n
    pid = tl.program_id(0)
    group = tl.load(order_ptr + pid // tiles_per_group)  # largest groups first
    tile_k = (pid % tiles_per_group) // tiles_n
    tile_n = pid % tiles_n
    # Clamped into [0, num_rows] like the forward's: offsets past the rows can never make it read past the input.
    row_end = tl.minimum(tl.maximum(tl.load(offsets_ptr + group), 0), num_rows)
    row_start = tl.minimum(tl.maximum(tl.load(offsets_ptr + group - 1, mask=group > 0, other=0), 0), row_end)

    rs = tl.arange(0, BLOCK_R)
    ks = tile_k * BLOCK_K + tl.arange(0, BLOCK_K)
    cols = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)
    x_ks = ks % K  # wrapped like the forward's columns: loaded, never stored
    dy_cols = cols % N
    if tile_k < tiles_w:
        acc = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)
        for r in range(row_start, row_end, BLOCK_R):
            rows = r + rs
            inside = rows < row_end  # a reduction: rows of the next group must be zeros, not just dropped
            rows = rows.to(tl.int64)
            xt_ptrs = x_ptr + rows[None, :] * stride_xm + x_ks[:, None] * stride_xk
            dy_ptrs = dy_ptr + rows[:, None] * stride_dym + dy_cols[None, :] * stride_dyn
            xt = tl.load(xt_ptrs, mask=inside[None, :], other=0.0)
            dy = tl.load(dy_ptrs, mask=inside[:, None], other=0.0)
            acc = _dot(xt, dy, acc, PRECISION, UPCAST)
        dw_ptrs = dw_ptr + group.to(tl.int64) * stride_dwg + ks[:, None] * stride_dwk + cols[None, :] * stride_dwn
        tl.store(dw_ptrs, acc.to(dw_ptr.dtype.element_ty), mask=(ks < K)[:, None] & (cols < N)[None, :])
    else:
        sums = tl.zeros((BLOCK_N,), dtype=tl.float32)
        for r in range(row_start, row_end, BLOCK_R):
            rows = r + rs
            inside = rows < row_end
            dy = tl.load(dy_ptr + rows.to(tl.int64)[:, None] * stride_dym + dy_cols[None, :] * stride_dyn,
                         mask=inside[:, None], other=0.0)
            sums += tl.sum(dy.to(tl.float32), 0)
        tl.store(db_ptr + group * stride_db_g + cols, sums.to(db_ptr.dtype.element_ty), mask=cols < N)


_grouped_weight_grad_tuned = triton.autotune(configs=_weight_grad_configs(), key=["K", "N", "num_groups"])(
    _grouped_weight_grad_kernel
)


# ---- launchers ----------------------------------------------------------------------------------------------------
def _pow2(n):
    return max(2, triton.next_power_of_2(n))


def grouped_matmul(a, b, b_strides, N, bias, offsets, out_dtype, gelu=False, out=None):
    """out[rows of g] = act(a[rows of g] @ B[g] (+ bias[g])), B[g] (K, N) read from `b` through b_strides =
    (group, k, n) strides; returns (out, preact), preact empty unless gelu. `out` may be given (a, N)."""
    num_rows, K = a.shape
    num_groups = offsets.shape[0]
    out = torch.empty(num_rows, N, device=a.device, dtype=out_dtype) if out is None else out
    preact = torch.empty_like(out) if gelu else out.new_empty(0)
    if num_rows == 0:
        return out, preact
    args = (
        a, b, bias if bias is not None else out, out, preact if gelu else out, offsets,
        num_rows, N, K, num_groups,
        a.stride(0), a.stride(1), *b_strides, bias.stride(0) if bias is not None else 0, out.stride(0), out.stride(1),
    )
    flags = dict(HAS_BIAS=bias is not None, GELU=gelu, GROUPS_POW2=_pow2(num_groups), **_dot_flags(a.dtype))
    if interpreted():
        meta = dict(INTERPRETER_MATMUL_META, EVEN_K=K % INTERPRETER_MATMUL_META["BLOCK_K"] == 0)
        grid = ((triton.cdiv(num_rows, meta["BLOCK_M"]) + num_groups) * triton.cdiv(N, meta["BLOCK_N"]),)
        _grouped_matmul_kernel[grid](*args, **flags, **meta)
    else:
        def grid(meta):
            return ((triton.cdiv(num_rows, meta["BLOCK_M"]) + num_groups) * triton.cdiv(N, meta["BLOCK_N"]),)
        _grouped_matmul_tuned[grid](*args, **flags)
    return out, preact


def grouped_weight_grad(x, dy, offsets, weight_shape, weight_dtype, with_bias):
    """(dw, db): dw[g] = x[rows of g]^T @ dy[rows of g], db[g] = dy[rows of g].sum(0) (empty without bias)."""
    num_groups, K, N = weight_shape
    dw = torch.empty(weight_shape, device=x.device, dtype=weight_dtype)
    db = torch.empty(num_groups, N, device=x.device, dtype=weight_dtype) if with_bias else dw.new_empty(0)
    sizes = torch.diff(offsets, prepend=offsets.new_zeros(1))
    order = torch.argsort(sizes, descending=True, stable=True).to(torch.int32)
    args = (
        x, dy, dw, db if with_bias else dw, offsets, order,
        x.shape[0], K, N, num_groups,
        x.stride(0), x.stride(1), dy.stride(0), dy.stride(1), dw.stride(0), dw.stride(1), dw.stride(2),
        db.stride(0) if with_bias else 0,
    )
    flags = dict(HAS_DBIAS=int(with_bias), **_dot_flags(x.dtype))

    def grid(meta):
        return (num_groups * (triton.cdiv(K, meta["BLOCK_K"]) + int(with_bias)) * triton.cdiv(N, meta["BLOCK_N"]),)

    if interpreted():
        _grouped_weight_grad_kernel[grid(INTERPRETER_WEIGHT_GRAD_META)](*args, **flags, **INTERPRETER_WEIGHT_GRAD_META)
    else:
        _grouped_weight_grad_tuned[grid](*args, **flags)
    return dw, db


# ---- the op's implementation (same signatures as reference.forward / reference.backward) ---------------------------
def _hopper(*tensors):
    """The Hopper module when this call should run it (see PATH), else None."""
    if PATH not in PATHS:
        raise ValueError(f"MOL_GROUPED_GEMM_PATH={PATH!r} is unknown: use one of {list(PATHS)}.")
    if PATH == "portable" or (PATH == "auto" and interpreted()):
        return None
    return hopper_grouped_gemm if hopper_grouped_gemm.eligible(*tensors) else None


def forward(x, weight, bias, offsets, activation):
    if not runs_here(x):
        return reference.forward(x, weight, bias, offsets, activation)
    reference.check_offsets(offsets, x.shape[0])
    hopper = _hopper(x, weight)
    if hopper is not None:
        return hopper.grouped_matmul(x, weight, False, bias, offsets, x.dtype, gelu=activation == "gelu")
    strides = (weight.stride(0), weight.stride(1), weight.stride(2))
    return grouped_matmul(x, weight, strides, weight.shape[2], bias, offsets, x.dtype, gelu=activation == "gelu")


def backward(grad_out, x, weight, offsets, preact, activation, has_bias, needs_input_grad, needs_weight_grad):
    if not runs_here(x):
        return reference.backward(
            grad_out, x, weight, offsets, preact, activation, has_bias, needs_input_grad, needs_weight_grad
        )
    reference.check_offsets(offsets, x.shape[0])
    if activation == "gelu":
        grad_out = torch.ops.aten.gelu_backward(grad_out, preact)
    hopper = _hopper(x, weight, grad_out)
    if hopper is not None:
        dx = hopper.grouped_matmul(grad_out, weight, True, None, offsets, x.dtype)[0] if needs_input_grad else x.new_empty(0)
        dw, db = weight.new_empty(0), weight.new_empty(0)
        if needs_weight_grad or has_bias:
            dw, db = hopper.grouped_weight_grad(x, grad_out, offsets, tuple(weight.shape), weight.dtype, has_bias)
            if not needs_weight_grad:
                dw = weight.new_empty(0)
        return dx, dw, db
    dx = x.new_empty(0)
    if needs_input_grad:
        # dx[rows of g] = dy[rows of g] @ W[g]^T: the forward kernel with W read transposed, (g, out, in).
        transposed = (weight.stride(0), weight.stride(2), weight.stride(1))
        dx, _ = grouped_matmul(grad_out, weight, transposed, weight.shape[1], None, offsets, x.dtype)
    dw, db = weight.new_empty(0), weight.new_empty(0)
    if needs_weight_grad or has_bias:
        dw, db = grouped_weight_grad(x, grad_out, offsets, tuple(weight.shape), weight.dtype, has_bias)
        if not needs_weight_grad:
            dw = weight.new_empty(0)
    return dx, dw, db


# Last: the Hopper kernels reuse this module's device helpers (_dot, _gelu) and flags.
