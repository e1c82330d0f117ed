"""The Hopper (sm_90) path of the grouped linear op: persistent kernels with TMA tensor-descriptor loads and wgmma.

- The group/row-tile table is built once per call with a few torch ops on the device (`row_tile_table`, no host
  synchronisation) and reused by every tile, instead of a prefix sum over the groups in every program; the model's
  layers share one offsets tensor per step, so the table is cached on it (`_TABLES`, dropped when the offsets are
  freed or written to). Each entry is (group, first row, end row): group -1 is a tail tile of the rows past the last
  offset (zeros), -2 an unused entry of the fixed-size table (the table is sized from shapes alone).
- `_persistent_matmul_kernel` (forward, and dx = dY @ W[g]^T by reading W through a transposed descriptor): one
  program per SM loops over (row tile, column tile) pairs, so one tile's epilogue and stores overlap the next
  tile's TMA loads (`tl.range(..., flatten=True)` lets the compiler software-pipeline across tiles). A and B tiles
  come through TMA descriptors (hardware address generation and out-of-bounds zero fill: a ragged last tile needs
  no masks on its loads); rows of the next group that a tile loads are computed but never stored. The epilogue
  (bias, GELU, store) runs on column halves of the accumulator (`EPILOGUE_SPLIT`), so GELU's temporaries do not
  spill the 128x256 fp32 accumulator's registers.
- `_weight_grad_kernel` (dW[g] = X[g]^T dY[g], db folded in): programs over (group, row split, k tile, n tile).
  Large groups' row reductions are split into `splits` fixed row ranges whose fp32 partial sums are added in a
  fixed order (`torch.sum` over the split axis), so the result is deterministic run to run; db is summed from the
  same dY tiles by the k-tile-0 programs. Rows of the neighbouring groups that TMA brings in are zeroed in
  registers before the product (a reduction must not count them).

Tile configurations come from `tuned_configs.json` for the GPU it runs on (H100, H200), so every rank of a job
uses the same configuration and nothing is tuned at start-up; other GPUs get the first default. The portable
kernels in triton_grouped_gemm.py stay the path for pre-Hopper GPUs and for operands TMA cannot address
(non-contiguous, or rows not 16-byte aligned).
"""

import json
import math
import weakref
from collections import Counter
from functools import lru_cache
from pathlib import Path

import torch
import triton
import triton.language as tl

from ._common import _dot, _dot_flags, _gelu, interpreted


DEFAULT_CONFIGS = [  # BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages, EPILOGUE_SPLIT
    (128, 256, 64, 8, 3, 2), (128, 128, 64, 8, 4, 1), (128, 128, 128, 8, 3, 1), (128, 256, 128, 8, 4, 2),
    (64, 128, 64, 4, 4, 1),
]
INTERPRETER_META = {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 16, "EPILOGUE_SPLIT": 2}
INTERPRETER_WEIGHT_GRAD_META = {"BLOCK_K": 16, "BLOCK_N": 16, "BLOCK_R": 16}
TUNED_CONFIGS = Path(__file__).with_name("tuned_configs.json")
MAX_SPLITS = 4
LAUNCHES = Counter()  # kernel launches of this path by kind, for tests and profiling
_TABLES = {}  # id(offsets) -> (weak reference to them, (rows, BLOCK_M, version), table)


# ---- when this path runs ------------------------------------------------------------------------------------------
def _tma_addressable(*tensors):
    """TMA needs a 16-byte aligned base, unit last stride, and 16-byte aligned other strides."""
    for t in tensors:
        if t is None:
            continue
        if t.stride(-1) != 1 or t.data_ptr() % 16 or any(s * t.element_size() % 16 for s in t.stride()[:-1]):
            return False
    return True


def eligible(x, weight, grad=None):
    """Whether the Hopper path can run these operands here: sm_90 or newer (or the interpreter, for tests), and
    operands TMA can address."""
    if interpreted():
        on_hopper = x.device.type == "cpu"
    else:
        on_hopper = x.is_cuda and torch.cuda.get_device_capability(x.device)[0] >= 9
    return on_hopper and _tma_addressable(x, weight, grad)


def _set_allocator():
    """Device-side tensor descriptors need a global scratch buffer per launch, from torch's caching allocator."""
    triton.set_allocator(lambda size, alignment, stream: torch.empty(size, dtype=torch.int8,
                                                                     device="cpu" if interpreted() else "cuda"))


# ---- the group/row-tile table -------------------------------------------------------------------------------------
def table_size(num_rows, num_groups, block_m):
    """Entries of the table for any offsets: each group adds at most one partial tile, the tail at most one more."""
    return triton.cdiv(num_rows, block_m) + num_groups + 1


def row_tile_table(offsets, num_rows, block_m):
    """(table_size, 3) int32 on the offsets' device: (group or -1 tail or -2 unused, first row, end row)."""
    cached = _TABLES.get(id(offsets))
    key = (num_rows, block_m, offsets._version)
    if cached is not None and cached[0]() is offsets and cached[1] == key:
        return cached[2]
    ends = offsets.to(torch.int64).clamp(0, num_rows)
    starts = torch.cat([ends.new_zeros(1), ends[:-1]])
    starts = torch.minimum(starts.clamp(min=0), ends)  # a decreasing pair is an empty group, as in the kernels
    tiles = (ends - starts + block_m - 1) // block_m
    cumulative = torch.cumsum(tiles, 0)
    group_tiles = cumulative[-1]
    t = torch.arange(table_size(num_rows, offsets.shape[0], block_m), device=offsets.device)
    group = torch.searchsorted(cumulative, t, right=True).clamp(max=offsets.shape[0] - 1)
    in_group = t < group_tiles
    last_end = ends.max()
    row_start = torch.where(in_group, starts[group] + (t - (cumulative[group] - tiles[group])) * block_m,
                            last_end + (t - group_tiles) * block_m)
    row_end = torch.where(in_group, ends[group], torch.full_like(t, num_rows))
    used = in_group | (row_start < num_rows)
    label = torch.where(in_group, group, torch.where(used, -1, -2))
    table = torch.stack([label, row_start.clamp(max=num_rows), row_end], 1).to(torch.int32).contiguous()
    identity = id(offsets)
    _TABLES[identity] = (weakref.ref(offsets, lambda _: _TABLES.pop(identity, None)), key, table)
    return table


# ---- tile configurations ------------------------------------------------------------------------------------------
@lru_cache(maxsize=None)
def _tuned_table():
    """The shipped configurations, read once per process (not at every launch)."""
    return json.loads(TUNED_CONFIGS.read_text()) if TUNED_CONFIGS.exists() else {}


def tile_config(device, kind, N, K, num_groups, gpu_name=None):
    """(meta, num_warps, num_stages) of a launch (kind: forward, dx or weight_grad): the shipped entry of this GPU
    for the layer shape, else its default, else the first of DEFAULT_CONFIGS. The same on every rank, and never
    tuned at start-up."""
    if interpreted():
        return dict(INTERPRETER_META if kind != "weight_grad" else INTERPRETER_WEIGHT_GRAD_META), 4, 2
    return shipped_config(gpu_name or torch.cuda.get_device_name(device), kind, N, K, num_groups)


def shipped_config(name, kind, N, K, num_groups):
    """tile_config's lookup in tuned_configs.json for the GPU called `name`."""
    shipped = {family: kinds for family, kinds in _tuned_table().items() if not family.startswith("_")}
    kinds = next((kinds for family, kinds in shipped.items() if family in name), {})
    entry = kinds.get(kind, {}).get(f"{N}x{K}x{num_groups}") or kinds.get(kind, {}).get("default")
    if entry is None:
        m, n, k, warps, stages, split = DEFAULT_CONFIGS[0]
        entry = ({"BLOCK_K": 128, "BLOCK_N": 128, "BLOCK_R": 64} if kind == "weight_grad" else
                 {"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "EPILOGUE_SPLIT": split})
        entry.update(num_warps=warps, num_stages=stages)
    entry = dict(entry)
    return entry, entry.pop("num_warps"), entry.pop("num_stages")


def _num_programs(device, tiles):
    if interpreted():
        return max(1, min(tiles, 4))
    return max(1, min(tiles, torch.cuda.get_device_properties(device).multi_processor_count))


# ---- forward and input gradient -----------------------------------------------------------------------------------
@triton.jit
def _epilogue(acc, bias_ptr, out_ptr, preact_ptr, group, in_group, rows, row_end, cols, N, stride_bias_g,
              HAS_BIAS: tl.constexpr, GELU: tl.constexpr):
    if HAS_BIAS:
        # Tail tiles add no bias. (A vector compare, not `& in_group`: the interpreter mis-types scalar masks.)
        bias_cols = tl.where(in_group, N, 0)
        bias = tl.load(bias_ptr + group * stride_bias_g + cols, mask=cols < bias_cols, other=0.0)
        acc += bias.to(tl.float32)[None, :]
    offsets = rows.to(tl.int64)[:, None] * N + cols[None, :]
    mask = (rows < row_end)[:, None] & (cols < N)[None, :]
    if GELU:
        tl.store(preact_ptr + offsets, acc.to(preact_ptr.dtype.element_ty), mask=mask)
        acc = _gelu(acc)
    tl.store(out_ptr + offsets, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _persistent_matmul_kernel(
    a_ptr, b_ptr, bias_ptr, out_ptr, preact_ptr, table_ptr,
    num_rows, N, K, num_groups, table_rows, stride_bias_g,
    B_TRANSPOSED: tl.constexpr, HAS_BIAS: tl.constexpr, GELU: tl.constexpr, PRECISION: tl.constexpr,
    UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    EPILOGUE_SPLIT: tl.constexpr, NUM_PROGRAMS: tl.constexpr,
):
    """out[rows of g] = act(a[rows of g] @ B[g] + bias[g]), B[g] = W[g] (K, N) or, B_TRANSPOSED, W[g]^T with W of
    shape (groups, N, K); zeros on the rows past the last offset."""
    a_desc = tl.make_tensor_descriptor(a_ptr, shape=[num_rows, K], strides=[K, 1], block_shape=[BLOCK_M, BLOCK_K])
    if B_TRANSPOSED:
        b_desc = tl.make_tensor_descriptor(b_ptr, shape=[num_groups, N, K], strides=[N * K, K, 1],
                                           block_shape=[1, BLOCK_N, BLOCK_K])
    else:
        b_desc = tl.make_tensor_descriptor(b_ptr, shape=[num_groups, K, N], strides=[K * N, N, 1],
                                           block_shape=[1, BLOCK_K, BLOCK_N])
    tiles_n = tl.cdiv(N, BLOCK_N)
    k_tiles = tl.cdiv(K, BLOCK_K)
    for tile in tl.range(tl.program_id(0), table_rows * tiles_n, NUM_PROGRAMS, flatten=True):
        entry = tile // tiles_n
        tile_n = tile % tiles_n
        group = tl.load(table_ptr + entry * 3)
        row_start = tl.load(table_ptr + entry * 3 + 1)
        row_end = tl.load(table_ptr + entry * 3 + 2)
        rows = row_start + tl.arange(0, BLOCK_M)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        if group >= 0:
            g = group.to(tl.int32)
            for ki in range(k_tiles):
                a = a_desc.load([row_start, ki * BLOCK_K])
                if B_TRANSPOSED:
                    b = tl.trans(tl.reshape(b_desc.load([g, tile_n * BLOCK_N, ki * BLOCK_K]), (BLOCK_N, BLOCK_K)))
                else:
                    b = tl.reshape(b_desc.load([g, ki * BLOCK_K, tile_n * BLOCK_N]), (BLOCK_K, BLOCK_N))
                acc = _dot(a, b, acc, PRECISION, UPCAST)
        if group >= -1:  # -1: a tail tile, stored as zeros; -2: nothing
            safe_group = tl.maximum(group, 0)
            if EPILOGUE_SPLIT == 2:
                halves = tl.permute(tl.reshape(acc, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1))
                left, right = tl.split(halves)
                cols = tile_n * BLOCK_N + tl.arange(0, BLOCK_N // 2)
                _epilogue(left, bias_ptr, out_ptr, preact_ptr, safe_group, group >= 0, rows, row_end, cols, N,
                          stride_bias_g, HAS_BIAS, GELU)
                _epilogue(right, bias_ptr, out_ptr, preact_ptr, safe_group, group >= 0, rows, row_end,
                          cols + BLOCK_N // 2, N, stride_bias_g, HAS_BIAS, GELU)
            else:
                cols = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)
                _epilogue(acc, bias_ptr, out_ptr, preact_ptr, safe_group, group >= 0, rows, row_end, cols, N,
                          stride_bias_g, HAS_BIAS, GELU)


def grouped_matmul(a, weight, transposed, bias, offsets, out_dtype, gelu=False):
    """out[rows of g] = act(a[rows of g] @ B[g] (+ bias[g])), B[g] = weight[g] or weight[g]^T; (out, preact)."""
    num_rows, K = a.shape
    num_groups = weight.shape[0]
    N = weight.shape[1] if transposed else weight.shape[2]
    out = torch.empty(num_rows, N, device=a.device, dtype=out_dtype)
    preact = torch.empty_like(out) if gelu else out.new_empty(0)
    if num_rows == 0:
        return out, preact
    meta, warps, stages = tile_config(a.device, "dx" if transposed else "forward", N, K, num_groups)
    table = row_tile_table(offsets, num_rows, meta["BLOCK_M"])
    programs = _num_programs(a.device, table.shape[0] * triton.cdiv(N, meta["BLOCK_N"]))
    LAUNCHES["dx" if transposed else "forward"] += 1
    _set_allocator()
    _persistent_matmul_kernel[(programs,)](
        a, weight, bias if bias is not None else out, out, preact if gelu else out, table,
        num_rows, N, K, num_groups, table.shape[0], bias.stride(0) if bias is not None else 0,
        B_TRANSPOSED=transposed, HAS_BIAS=bias is not None, GELU=gelu, NUM_PROGRAMS=programs,
        **_dot_flags(a.dtype), **meta, **({} if interpreted() else {"num_warps": warps, "num_stages": stages}),
    )
    return out, preact


# ---- weight and bias gradients ------------------------------------------------------------------------------------
@triton.jit
def _weight_grad_kernel(
    x_ptr, dy_ptr, dw_ptr, db_ptr, offsets_ptr,
    num_rows, K, N, num_groups, splits,
    HAS_DBIAS: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """dw[g, s] = x[rows of split s of g]^T @ dy[same rows] (fp32 partials); db[g, s] their dy column sums."""
    x_desc = tl.make_tensor_descriptor(x_ptr, shape=[num_rows, K], strides=[K, 1], block_shape=[BLOCK_R, BLOCK_K])
    dy_desc = tl.make_tensor_descriptor(dy_ptr, shape=[num_rows, N], strides=[N, 1], block_shape=[BLOCK_R, BLOCK_N])
    tiles_k = tl.cdiv(K, BLOCK_K)
    tiles_n = tl.cdiv(N, BLOCK_N)
    pid = tl.program_id(0)
    group = pid // (splits * tiles_k * tiles_n)
    split = (pid // (tiles_k * tiles_n)) % splits
    tile_k = (pid // tiles_n) % tiles_k
    tile_n = pid % tiles_n
    group_end = tl.minimum(tl.maximum(tl.load(offsets_ptr + group), 0), num_rows)
    group_start = tl.minimum(tl.maximum(tl.load(offsets_ptr + group - 1, mask=group > 0, other=0), 0), group_end)
    # Fixed row ranges per split, whole BLOCK_R tiles each: the same partition, so the same sums, every run.
    per_split = tl.cdiv(tl.cdiv(group_end - group_start, splits), BLOCK_R) * BLOCK_R
    row_start = group_start + split * per_split
    row_end = tl.minimum(row_start + per_split, group_end)
    rs = tl.arange(0, BLOCK_R)
    acc = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)
    sums = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for r in range(row_start, row_end, BLOCK_R):
        inside = (r + rs) < row_end
        x = x_desc.load([r, tile_k * BLOCK_K])
        dy = dy_desc.load([r, tile_n * BLOCK_N])
        x = tl.where(inside[:, None], x, tl.zeros_like(x))  # the next group's rows must count for nothing
        dy = tl.where(inside[:, None], dy, tl.zeros_like(dy))
        acc = _dot(tl.trans(x), dy, acc, PRECISION, UPCAST)
        if HAS_DBIAS:
            sums += tl.sum(dy.to(tl.float32), 0)
    ks = tile_k * BLOCK_K + tl.arange(0, BLOCK_K)
    cols = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)
    partial = (group * splits + split).to(tl.int64)
    tl.store(dw_ptr + partial * K * N + ks[:, None] * N + cols[None, :], acc,
             mask=(ks < K)[:, None] & (cols < N)[None, :])
    if HAS_DBIAS:
        db_cols = tl.where(tile_k == 0, N, 0)  # one k tile per column stores db (a vector compare: see _epilogue)
        tl.store(db_ptr + partial * N + cols, sums, mask=cols < db_cols)


def weight_grad_splits(device, num_rows, num_groups, K, N, meta):
    """Row splits per group: enough programs to fill the GPU when the groups alone would not (few groups or a
    skewed one), at most MAX_SPLITS; from shapes only, so the partition (and the sums) never change."""
    tiles = num_groups * triton.cdiv(K, meta["BLOCK_K"]) * triton.cdiv(N, meta["BLOCK_N"])
    sms = 4 if interpreted() else torch.cuda.get_device_properties(device).multi_processor_count
    wanted = math.ceil(2 * sms / max(1, tiles))
    rows_per_group = num_rows / max(1, num_groups)
    return max(1, min(MAX_SPLITS, wanted, math.ceil(rows_per_group / meta["BLOCK_R"])))


def grouped_weight_grad(x, dy, offsets, weight_shape, weight_dtype, with_bias):
    num_groups, K, N = weight_shape
    meta, warps, stages = tile_config(x.device, "weight_grad", N, K, num_groups)
    splits = weight_grad_splits(x.device, x.shape[0], num_groups, K, N, meta)
    partial_dw = torch.empty(num_groups, splits, K, N, device=x.device, dtype=torch.float32)
    partial_db = torch.empty(num_groups, splits, N, device=x.device, dtype=torch.float32) if with_bias else partial_dw
    grid = (num_groups * splits * triton.cdiv(K, meta["BLOCK_K"]) * triton.cdiv(N, meta["BLOCK_N"]),)
    LAUNCHES["weight_grad"] += 1
    _set_allocator()
    _weight_grad_kernel[grid](
        x, dy, partial_dw, partial_db, offsets, x.shape[0], K, N, num_groups, splits,
        HAS_DBIAS=with_bias, **_dot_flags(x.dtype), **meta,
        **({} if interpreted() else {"num_warps": warps, "num_stages": stages}),
    )
    # A fixed-order sum over the splits (no atomics): deterministic.
    dw = partial_dw.sum(1).to(weight_dtype) if splits > 1 else partial_dw[:, 0].to(weight_dtype)
    db = partial_db.sum(1).to(weight_dtype) if with_bias else dw.new_empty(0)
    return dw, db
