"""mol-grouped-gemm's own tests, kept in the kernel repo as kernels-community repos keep theirs: every built variant
against a float64 per-group reference (forward and backward, empty, single-row and uneven groups, odd feature
sizes, rows past the last offset, fp32 and bf16, with and without the GELU epilogue), memory safety whatever the
offsets, no host synchronisation, `torch.library.opcheck` and a full-graph compile.

    pytest tests/                         # the torch-cpu variant; the torch-cuda (Triton) variant too on a GPU
    TRITON_INTERPRET=1 pytest tests/      # the Triton kernels under Triton's CPU interpreter, no GPU needed

The variants are loaded from this repo's build/ with `kernels.get_local_kernel`. Triton decides at decoration time
whether a @jit function is compiled or interpreted, so TRITON_INTERPRET=1 must be set before Triton is imported.
"""

import os
from pathlib import Path

import pytest
import torch


KERNEL_REPO = Path(__file__).resolve().parents[1]


def can_interpret_triton():
    """True when Triton's own @jit library functions were built for the interpreter in this process."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return False
    import triton.language as tl

    return type(tl.cdiv).__name__ == "InterpretedFunction"


# The Triton variant runs on the GPU when there is one, else under the interpreter on CPU tensors.
TRITON_DEVICE = "cpu" if can_interpret_triton() or not torch.cuda.is_available() else "cuda"


@pytest.fixture(scope="session")
def cpu_kernel():
    from kernels import get_local_kernel

    return get_local_kernel(KERNEL_REPO, backend="cpu")  # on a CUDA build of torch too


@pytest.fixture(scope="session")
def triton_kernel():
    """The torch-cuda variant: its Triton kernels on the GPU, or interpreted on the CPU."""
    if TRITON_DEVICE == "cpu" and not can_interpret_triton():
        pytest.skip("no GPU, and Triton is not interpreted: run with TRITON_INTERPRET=1 set before triton is imported")
    from kernels import get_local_kernel

    kernel = get_local_kernel(KERNEL_REPO / "build" / "torch-cuda")  # a variant folder: no backend selection
    assert kernel.triton_grouped_gemm.interpreted() == (TRITON_DEVICE == "cpu")
    return kernel


def device_of(kernel):
    """Where a variant runs: the torch-cpu variant on the CPU, the Triton variant on TRITON_DEVICE."""
    return "cpu" if kernel.BACKEND == "cpu" else TRITON_DEVICE


# ---- every variant against a float64 reference ------------------------------------------------------------------------------
CASES = {  # group sizes, in, out; odd feature sizes exercise the K and N edges of the tiles
    "uneven, odd sizes": ([5, 1, 19], 40, 24),
    "empty middle group": ([4, 0, 7], 32, 48),
    "empty first and last": ([0, 6, 0], 32, 16),
    "single rows": ([1, 1, 1], 16, 32),
}
TAIL_ROWS = 3  # rows past the last offset: outputs and input gradients must be zeros


def operands(sizes, in_features, out_features, dtype, bias=True, seed=0, tail_rows=TAIL_ROWS, device="cpu"):
    generator = torch.Generator().manual_seed(seed)
    rows = sum(sizes) + tail_rows
    x = torch.randn(rows, in_features, generator=generator).to(device, dtype).requires_grad_()
    weight = torch.randn(len(sizes), in_features, out_features, generator=generator) / 4
    weight = weight.to(device, dtype).requires_grad_()
    b = torch.randn(len(sizes), out_features, generator=generator).to(device, dtype).requires_grad_() if bias else None
    offsets = torch.cumsum(torch.tensor(sizes), 0).to(device, torch.int32)
    grad = torch.randn(rows, out_features, generator=generator).to(device, dtype)
    return x, weight, b, offsets, grad


def fp64_reference(x, weight, bias, sizes, activation, grad):
    """Output and gradients of a per-group loop in float64 (the ground truth)."""
    x64, w64 = x.detach().double().requires_grad_(), weight.detach().double().requires_grad_()
    b64 = None if bias is None else bias.detach().double().requires_grad_()
    outputs, start = [], 0
    for g, size in enumerate(sizes):
        rows = x64[start : start + size] @ w64[g]
        outputs.append(rows if b64 is None else rows + b64[g])
        start += size
    out = torch.cat(outputs + [x64.new_zeros(TAIL_ROWS, weight.shape[2])])
    out = torch.nn.functional.gelu(out) if activation == "gelu" else out
    out.backward(grad.double())
    return out.detach(), x64.grad, w64.grad, None if b64 is None else b64.grad


def relative_error(actual, expected):
    return ((actual.double() - expected).norm() / expected.norm().clamp_min(1e-12)).item()


def check_against_reference(kernel, case, dtype, activation, bias=True):
    sizes, in_features, out_features = CASES[case]
    x, weight, b, offsets, grad = operands(sizes, in_features, out_features, dtype, bias, device=device_of(kernel))
    out = kernel.grouped_linear(x, weight, b, offsets, activation=activation)
    out.backward(grad)
    expected = fp64_reference(x, weight, b, sizes, activation, grad)
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2  # bf16 operands: rounding of inputs and outputs
    actual = (out, x.grad, weight.grad, None if b is None else b.grad)
    for name, got, want in zip(("out", "dx", "dweight", "dbias"), actual, expected):
        if want is None:
            continue
        assert got.dtype == dtype and got.shape == want.shape, name
        assert relative_error(got, want) < tolerance, f"{name}: relative error {relative_error(got, want):.2e}"
    assert torch.count_nonzero(out[-TAIL_ROWS:]) == 0 and torch.count_nonzero(x.grad[-TAIL_ROWS:]) == 0
    for g, size in enumerate(sizes):
        if size == 0:  # exactly zero, not merely small
            assert torch.count_nonzero(weight.grad[g]) == 0
            assert b is None or torch.count_nonzero(b.grad[g]) == 0


@pytest.mark.parametrize("activation", [None, "gelu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", list(CASES))
def test_triton_kernels_match_fp64_reference(triton_kernel, case, dtype, activation):
    check_against_reference(triton_kernel, case, dtype, activation)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_cpu_variant_matches_fp64_reference(cpu_kernel, dtype):
    for case in CASES:
        for activation in (None, "gelu"):
            check_against_reference(cpu_kernel, case, dtype, activation)


def test_triton_kernels_without_bias_or_weight_gradient(triton_kernel):
    x, weight, _, offsets, grad = operands([3, 0, 5], 32, 16, torch.float32, bias=False, device=TRITON_DEVICE)
    weight.requires_grad_(False)
    out = triton_kernel.grouped_linear(x, weight, None, offsets)
    out.backward(grad)
    expected = fp64_reference(x, weight, None, [3, 0, 5], None, grad)
    assert relative_error(out, expected[0]) < 1e-5 and relative_error(x.grad, expected[1]) < 1e-5
    assert weight.grad is None


BAD_OFFSETS = {"past the rows": [3, 9, 40], "decreasing": [6, 2, 8], "negative": [-4, 3, 8]}


@pytest.mark.parametrize("bad", list(BAD_OFFSETS))
def test_triton_kernels_never_touch_memory_past_the_rows_whatever_the_offsets(triton_kernel, bad):
    """Offsets past the rows (or decreasing): the forward/dx kernel writes no row past its output (a guard region
    after it keeps its sentinel) and the dW kernel reads no row past its input (NaN rows after it stay unread)."""
    gemm = triton_kernel.triton_grouped_gemm
    rows, guard, in_features, out_features = 10, 16, 32, 16
    generator = torch.Generator().manual_seed(0)
    inputs = torch.full((rows + guard, in_features), float("nan"))
    inputs[:rows] = torch.randn(rows, in_features, generator=generator)
    inputs = inputs.to(TRITON_DEVICE)
    x = inputs[:rows]
    weight = torch.randn(3, in_features, out_features, generator=generator).to(TRITON_DEVICE)
    offsets = torch.tensor(BAD_OFFSETS[bad], dtype=torch.int32, device=TRITON_DEVICE)
    buffer = torch.full((rows + guard, out_features), 12345.0, device=TRITON_DEVICE)
    out, _ = gemm.grouped_matmul(x, weight, (weight.stride(0), weight.stride(1), weight.stride(2)), out_features,
                                 None, offsets, x.dtype, out=buffer[:rows])
    assert torch.all(buffer[rows:] == 12345.0), "the forward kernel wrote past its output"
    # The clamped offsets are what the PyTorch reference computes too.
    ranges = triton_kernel.reference.group_row_ranges(offsets, rows)
    for g, (start, end) in enumerate(ranges):
        if end > start and bad != "decreasing":  # decreasing offsets overlap groups: only the bounds are asserted
            torch.testing.assert_close(out[start:end], x[start:end] @ weight[g], atol=1e-4, rtol=1e-4)
    dy = torch.randn(rows, out_features, generator=generator).to(TRITON_DEVICE)
    dw, db = gemm.grouped_weight_grad(x, dy, offsets, tuple(weight.shape), weight.dtype, True)
    assert torch.isfinite(dw).all() and torch.isfinite(db).all(), "the dW kernel read past its input"
    for g, (start, end) in enumerate(ranges):
        torch.testing.assert_close(dw[g], x[start:end].T @ dy[start:end], atol=1e-4, rtol=1e-4)
    with pytest.raises(RuntimeError, match="offsets must be non-decreasing cumulative row ends in 0..10"):
        triton_kernel.grouped_linear(x, weight, None, offsets)  # the op itself refuses them


def test_cpu_variant_refuses_bad_offsets(cpu_kernel):
    x, weight = torch.randn(10, 32), torch.randn(3, 32, 16)
    for bad in BAD_OFFSETS.values():
        with pytest.raises(RuntimeError, match="offsets must be non-decreasing cumulative row ends"):
            cpu_kernel.grouped_linear(x, weight, None, torch.tensor(bad, dtype=torch.int32))


def test_triton_kernels_use_no_host_synchronisation(triton_kernel):
    """Group sizes are read by the kernels themselves: no `.tolist()`/`.item()` on the offsets."""
    x, weight, b, offsets, grad = operands([2, 0, 3], 16, 16, torch.float32, device=TRITON_DEVICE)

    class NoHostRead(torch.Tensor):
        def tolist(self):
            raise AssertionError("group sizes were read on the host")

        def item(self):
            raise AssertionError("group sizes were read on the host")

    guarded = offsets.as_subclass(NoHostRead)
    forward = triton_kernel.triton_grouped_gemm.forward(x.detach(), weight.detach(), b.detach(), guarded, "gelu")
    flags = ("gelu", True, True, True)  # activation, has_bias, needs_input_grad, needs_weight_grad
    triton_kernel.triton_grouped_gemm.backward(grad, x.detach(), weight.detach(), guarded, forward[1], *flags)




@pytest.mark.parametrize("variant", ["cpu_kernel", "triton_kernel"])
def test_op_passes_opcheck_and_compiles_without_graph_break(request, variant):
    kernel = request.getfixturevalue(variant)
    x, weight, b, offsets, grad = operands([3, 0, 4], 16, 16, torch.float32, device=device_of(kernel))
    for activation in ("none", "gelu"):
        torch.library.opcheck(kernel.grouped_linear_forward, (x, weight, b, offsets, activation))
    compiled = torch.compile(kernel.grouped_linear, backend="aot_eager", fullgraph=True)
    out = compiled(x, weight, b, offsets, "gelu")
    out.backward(grad)
    expected = fp64_reference(x, weight, b, [3, 0, 4], "gelu", grad)
    assert relative_error(out, expected[0]) < 1e-5 and relative_error(weight.grad, expected[2]) < 1e-5


def test_bad_operands_are_named(cpu_kernel):
    x, weight, b, offsets, _ = operands([2, 2], 16, 16, torch.float32)
    with pytest.raises(ValueError, match="activation 'relu' is not supported"):
        cpu_kernel.grouped_linear(x, weight, b, offsets, activation="relu")
    with pytest.raises(ValueError, match="int32 cumulative row ends of the 2 groups"):
        cpu_kernel.grouped_linear(x, weight, b, offsets[:1])
    with pytest.raises(ValueError, match="share one dtype"):
        cpu_kernel.grouped_linear(x, weight.double(), b, offsets)


# ---- the Hopper path (persistent TMA/wgmma kernels) --------------------------------------------------------------
@pytest.fixture
def hopper_kernel(triton_kernel):
    """The torch-cuda variant with its Hopper kernels chosen wherever they can run (the interpreter included)."""
    gemm = triton_kernel.triton_grouped_gemm
    saved, gemm.PATH = gemm.PATH, "hopper"
    try:
        yield triton_kernel
    finally:
        gemm.PATH = saved


@pytest.mark.parametrize("activation", [None, "gelu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", list(CASES))
def test_triton_hopper_kernels_match_fp64_reference(hopper_kernel, case, dtype, activation):
    sizes, in_features, out_features = CASES[case]
    x, weight, *_ = operands(sizes, in_features, out_features, dtype, device=device_of(hopper_kernel))
    assert hopper_kernel.triton_grouped_gemm._hopper(x, weight) is hopper_kernel.hopper_grouped_gemm
    check_against_reference(hopper_kernel, case, dtype, activation)


def test_triton_hopper_row_tile_table_is_built_once_and_covers_every_row(hopper_kernel):
    hopper = hopper_kernel.hopper_grouped_gemm
    offsets = torch.tensor([5, 5, 40, 41], dtype=torch.int32, device=TRITON_DEVICE)
    table = hopper.row_tile_table(offsets, 50, 16)
    assert table.shape == (hopper.table_size(50, 4, 16), 3)
    assert hopper.row_tile_table(offsets, 50, 16) is table  # cached on the offsets: built once per step
    entries = [tuple(row) for row in table.tolist()]
    assert entries[:5] == [(0, 0, 5), (2, 5, 40), (2, 21, 40), (2, 37, 40), (3, 40, 41)]
    assert entries[5:7] == [(-1, 41, 50), (-2, 50, 50)]  # the tail (zeros), then unused entries
    covered = sorted(r for g, start, end in entries if g >= -1 for r in range(start, min(start + 16, end)))
    assert covered == list(range(50))
    offsets[0] = 4  # written in place: the cached table is stale and rebuilt
    assert hopper.row_tile_table(offsets, 50, 16)[0].tolist() == [0, 0, 4]
    bad = torch.tensor([30, 10, 90], dtype=torch.int32, device=TRITON_DEVICE)  # decreasing, past the rows
    rows = hopper.row_tile_table(bad, 50, 16)
    assert int(rows[:, 1].max()) <= 50 and int(rows[:, 2].max()) <= 50  # clamped: no tile reaches past the rows


def test_triton_hopper_weight_grad_splits_large_groups_deterministically(hopper_kernel):
    hopper = hopper_kernel.hopper_grouped_gemm
    sizes, in_features, out_features = [200, 3], 16, 16
    x, _, _, offsets, grad = operands(sizes, in_features, out_features, torch.float32, device=TRITON_DEVICE)
    meta, _, _ = hopper.tile_config(x.device, "weight_grad", out_features, in_features, 2)
    splits = hopper.weight_grad_splits(x.device, x.shape[0], 2, in_features, out_features, meta)
    assert splits > 1  # few tiles: the rows of each group are split
    first = hopper.grouped_weight_grad(x.detach(), grad, offsets, (2, in_features, out_features), torch.float32, True)
    again = hopper.grouped_weight_grad(x.detach(), grad, offsets, (2, in_features, out_features), torch.float32, True)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])  # a fixed-order reduction
    x64, g64 = x.detach().double(), grad.double()
    for g, (start, end) in enumerate([(0, 200), (200, 203)]):
        want = x64[start:end].T @ g64[start:end]
        assert relative_error(first[0][g], want) < 1e-5
        assert relative_error(first[1][g], g64[start:end].sum(0)) < 1e-5


def test_triton_shipped_tile_configs_name_the_gpus_and_say_they_are_unmeasured(triton_kernel):
    import json

    hopper = triton_kernel.hopper_grouped_gemm
    table = json.loads(hopper.TUNED_CONFIGS.read_text())
    assert {"H100", "H200"} <= set(table) and all(table[gpu]["measured"] is False for gpu in ("H100", "H200"))
    for name in ("NVIDIA H100 80GB HBM3", "NVIDIA H200", "NVIDIA A100-SXM4-80GB"):  # the last: DEFAULT_CONFIGS[0]
        meta, warps, stages = hopper.shipped_config(name, "forward", 4096, 1024, 10)
        assert set(meta) == {"BLOCK_M", "BLOCK_N", "BLOCK_K", "EPILOGUE_SPLIT"} and stages in (3, 4) and warps == 8
        meta, _, _ = hopper.shipped_config(name, "weight_grad", 4096, 1024, 10)
        assert set(meta) == {"BLOCK_K", "BLOCK_N", "BLOCK_R"}


# ---- on a GPU ------------------------------------------------------------------------------------------------------
needs_cuda = pytest.mark.skipif(TRITON_DEVICE != "cuda", reason="needs a CUDA device (and Triton compiling, not interpreting)")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"])
def test_cuda_variant_matches_reference_on_gpu(dtype):
    from kernels import get_local_kernel

    kernel = get_local_kernel(KERNEL_REPO)  # the variant kernels selects on this machine
    assert kernel.BACKEND == "cuda" and not kernel.triton_grouped_gemm.interpreted()
    sizes = [700, 0, 1, 333, 2000, 15]
    x, weight, b, offsets, grad = operands(sizes, 256, 384, dtype)
    x, weight, b = (t.detach().cuda().requires_grad_() for t in (x, weight, b))
    for activation in (None, "gelu"):
        x.grad = weight.grad = b.grad = None
        out = kernel.grouped_linear(x, weight, b, offsets.cuda(), activation=activation)
        out.backward(grad.cuda())
        expected = fp64_reference(x.cpu(), weight.cpu(), b.cpu(), sizes, activation, grad)
        for got, want in zip((out, x.grad, weight.grad, b.grad), expected):
            assert relative_error(got.cpu(), want) < (2e-2 if dtype != torch.float32 else 1e-5)
        assert torch.count_nonzero(weight.grad[1]) == 0 and torch.count_nonzero(out[-TAIL_ROWS:]) == 0


@pytest.mark.gpu
@needs_cuda
def test_cuda_variant_compiles_with_inductor(triton_kernel):
    kernel = triton_kernel
    x, weight, b, offsets, grad = operands([64, 0, 17], 128, 256, torch.bfloat16)
    x, weight, b = (t.detach().cuda().requires_grad_() for t in (x, weight, b))
    compiled = torch.compile(kernel.grouped_linear, fullgraph=True)
    out = compiled(x, weight, b, offsets.cuda(), "gelu")
    out.backward(grad.cuda())
    expected = fp64_reference(x.cpu(), weight.cpu(), b.cpu(), [64, 0, 17], "gelu", grad)
    assert relative_error(out.cpu(), expected[0]) < 2e-2 and relative_error(weight.grad.cpu(), expected[2]) < 2e-2
