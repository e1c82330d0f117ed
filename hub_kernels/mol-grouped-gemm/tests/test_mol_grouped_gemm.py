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
