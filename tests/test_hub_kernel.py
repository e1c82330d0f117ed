"""The mol-grouped-gemm Hub kernel (hub_kernels/): built variants load through the real `kernels` paths, the Triton
kernels match an fp32 reference under Triton's CPU interpreter, the model gives the same numbers on the kernel and
on the torch path, a kernel from an untrusted publisher is never loaded without the user's trust, and publishing
makes a Hub kernel repo with a v1 branch (on the loopback Hub).

The Triton tests (every test named `*triton*`) need Triton's CPU interpreter, which works only when
TRITON_INTERPRET=1 is set before `triton` is first imported: Triton decides at decoration time whether a @jit
function is compiled or interpreted, its own library functions (tl.sum, tl.cdiv, ...) included, and torch or
transformers may import it early. So when this process cannot interpret, one test reruns them in a fresh pytest
process started with TRITON_INTERPRET=1 (`TRITON_INTERPRET=1 pytest tests/test_hub_kernel.py -k triton` does the
same by hand).
"""

import importlib.util
import json
import os
import re
import subprocess
import sys
from contextlib import contextmanager

import pytest
import torch
from conftest import PROJECT, tiny_config_kwargs

from configuration_mol import MoLConfig
from modeling_mol import MoLForMaskedLM, mol_grouped_gemm
from modeling_mol.mol_grouped_gemm import MoLGroupedGemm


HUB_KERNELS = PROJECT / "hub_kernels"
KERNEL_DIR = HUB_KERNELS / "mol-grouped-gemm"
LOCAL_REPO_ID = "mol-local/mol-grouped-gemm"


def load_script(name):
    """hub_kernels/<name>.py by path (hub_kernels/ is not a package, and `build` is also a PyPA package's name)."""
    spec = importlib.util.spec_from_file_location(f"test_hub_kernels_{name}", HUB_KERNELS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = load_script("build")


@contextmanager
def environment(**values):
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def built_repo(tmp_path_factory):
    """A fresh build of the kernel repo, as hub_kernels/build.py stages it for publishing."""
    return build.stage_repo(tmp_path_factory.mktemp("kernel-repo") / "mol-grouped-gemm")


@pytest.fixture(scope="session")
def cpu_kernel(built_repo):
    from kernels import get_local_kernel

    return get_local_kernel(built_repo, backend="cpu")  # on a CUDA build of torch too


def can_interpret_triton():
    """True when Triton's own @jit library functions were built for the interpreter in this process."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return False
    import triton.language as tl

    return type(tl.cdiv).__name__ == "InterpretedFunction"


@pytest.fixture(scope="session")
def triton_kernel(built_repo):
    """The torch-cuda variant, its Triton kernels interpreted on the CPU."""
    if not can_interpret_triton():
        pytest.skip("needs TRITON_INTERPRET=1 before triton is imported (test_triton_tests_in_an_interpreter_process)")
    from kernels import get_local_kernel

    kernel = get_local_kernel(built_repo / "build" / "torch-cuda")  # a variant folder: no backend selection
    assert kernel.triton_grouped_gemm.interpreted()
    return kernel


def test_triton_tests_in_an_interpreter_process():
    if can_interpret_triton():
        pytest.skip("this process interprets Triton: the *triton* tests ran here")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k", "triton"]
    env = dict(os.environ, TRITON_INTERPRET="1")
    done = subprocess.run(command, cwd=PROJECT, env=env, capture_output=True, text=True, timeout=600)
    report = done.stdout[-6000:] + done.stderr[-2000:]
    assert done.returncode == 0, report
    passed = re.search(r"(\d+) passed", report)
    assert passed and int(passed.group(1)) >= 20, report  # all of them ran, none was skipped away


# ---- the repo and its build ----------------------------------------------------------------------------------------
def test_build_toml_parses_as_kernel_builder_config():
    from kernels._rust import Backend, Build

    assert Build.open(KERNEL_DIR).general.backends == [Backend.CPU, Backend.CUDA]


def test_committed_build_and_card_are_current():
    assert build.check() == [], "run python hub_kernels/build.py"


@pytest.mark.parametrize("backend", ["cpu", "cuda"])
def test_variant_metadata_is_what_kernels_reads(built_repo, backend):
    from kernels._rust import Metadata

    variant = built_repo / "build" / f"torch-{backend}"
    metadata = json.loads((variant / "metadata.json").read_text())
    assert metadata["name"] == "mol-grouped-gemm" and metadata["version"] == 1 and metadata["license"]
    assert metadata["backend"] == {"type": backend} and metadata["python-depends"] == []
    assert metadata["id"].startswith(f"_mol_grouped_gemm_{backend}_")
    parsed = Metadata.read_from_file(variant / "metadata.json")
    assert str(parsed.name) == "mol-grouped-gemm" and parsed.version == 1
    assert (variant / "__init__.py").exists() and (variant / "_ops.py").exists()
    assert (variant / "triton_grouped_gemm.py").exists() == (backend == "cuda")


def test_cpu_variant_loads_on_machines_without_gpu_packages(built_repo):
    script = f"""
import sys
sys.modules["triton"] = None  # `import triton` now raises ImportError
import torch
from kernels import get_local_kernel
kernel = get_local_kernel(__import__("pathlib").Path({str(built_repo)!r}), backend="cpu")
out = kernel.grouped_linear(torch.ones(3, 16), torch.ones(2, 16, 16), None, torch.tensor([1, 3], dtype=torch.int32))
assert out.shape == (3, 16) and bool((out == 16).all()), out
print(kernel.__file__)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("build/torch-cpu/__init__.py")


def test_get_local_kernel_loads_the_built_cpu_variant(cpu_kernel, built_repo):
    assert cpu_kernel.__file__ == str(built_repo / "build" / "torch-cpu" / "__init__.py")
    assert cpu_kernel.BACKEND == "cpu"


def test_local_kernels_maps_a_repo_id_for_get_kernel(cpu_kernel, built_repo):
    from kernels import get_kernel

    with environment(LOCAL_KERNELS=f"{LOCAL_REPO_ID}={built_repo}"):
        kernel = get_kernel(LOCAL_REPO_ID, version=1, backend="cpu")
    assert kernel.__file__ == str(built_repo / "build" / "torch-cpu" / "__init__.py")
    assert kernel is cpu_kernel  # kernels caches a variant per folder


# ---- the op against an fp32 reference ------------------------------------------------------------------------------
CASES = {  # group sizes, in, out; odd feature sizes exercise the K and N edges of the tiles
    "uneven, odd sizes": ([5, 1, 19], 40, 24),
    "empty middle group": ([4, 0, 7], 32, 48),
    "empty first and last": ([0, 6, 0], 32, 16),
    "single rows": ([1, 1, 1], 16, 32),
}
TAIL_ROWS = 3  # rows past the last offset: outputs and input gradients must be zeros


def operands(sizes, in_features, out_features, dtype, bias=True, seed=0, tail_rows=TAIL_ROWS):
    generator = torch.Generator().manual_seed(seed)
    rows = sum(sizes) + tail_rows
    x = torch.randn(rows, in_features, generator=generator).to(dtype).requires_grad_()
    weight = (torch.randn(len(sizes), in_features, out_features, generator=generator) / 4).to(dtype).requires_grad_()
    b = torch.randn(len(sizes), out_features, generator=generator).to(dtype).requires_grad_() if bias else None
    offsets = torch.cumsum(torch.tensor(sizes), 0).to(torch.int32)
    grad = torch.randn(rows, out_features, generator=generator).to(dtype)
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
    x, weight, b, offsets, grad = operands(sizes, in_features, out_features, dtype, bias)
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
    x, weight, _, offsets, grad = operands([3, 0, 5], 32, 16, torch.float32, bias=False)
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
    x = inputs[:rows]
    weight = torch.randn(3, in_features, out_features, generator=generator)
    offsets = torch.tensor(BAD_OFFSETS[bad], dtype=torch.int32)
    buffer = torch.full((rows + guard, out_features), 12345.0)
    out, _ = gemm.grouped_matmul(x, weight, (weight.stride(0), weight.stride(1), weight.stride(2)), out_features,
                                 None, offsets, x.dtype, out=buffer[:rows])
    assert torch.all(buffer[rows:] == 12345.0), "the forward kernel wrote past its output"
    # The clamped offsets are what the PyTorch reference computes too.
    ranges = triton_kernel.reference.group_row_ranges(offsets, rows)
    for g, (start, end) in enumerate(ranges):
        if end > start and bad != "decreasing":  # decreasing offsets overlap groups: only the bounds are asserted
            torch.testing.assert_close(out[start:end], x[start:end] @ weight[g], atol=1e-4, rtol=1e-4)
    dy = torch.randn(rows, out_features, generator=generator)
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
    x, weight, b, offsets, grad = operands([2, 0, 3], 16, 16, torch.float32)

    class NoHostRead(torch.Tensor):
        def tolist(self):
            raise AssertionError("group sizes were read on the host")

        def item(self):
            raise AssertionError("group sizes were read on the host")

    guarded = offsets.as_subclass(NoHostRead)
    forward = triton_kernel.triton_grouped_gemm.forward(x.detach(), weight.detach(), b.detach(), guarded, "gelu")
    flags = ("gelu", True, True, True)  # activation, has_bias, needs_input_grad, needs_weight_grad
    triton_kernel.triton_grouped_gemm.backward(grad, x.detach(), weight.detach(), guarded, forward[1], *flags)


def compile_for_hopper(kernel, dtype, constants, num_warps, num_stages, unit_strides, odd=("num_rows", "num_groups")):
    """Compile a @triton.jit kernel for sm_90 ahead of time, no GPU needed; returns its PTX. Arguments are
    specialised the way a launch on MoL shapes would: pointers and sizes 16-divisible, unit strides constant."""
    import triton
    from triton.backends.compiler import GPUTarget

    constants = dict(constants, **{name: 1 for name in unit_strides})
    signature, attrs = {}, {}
    for index, name in enumerate(kernel.arg_names):
        if name in constants or kernel.params[index].is_constexpr:
            signature[name] = "constexpr"
            continue
        signature[name] = ("*i32" if name in ("offsets_ptr", "order_ptr") else f"*{dtype}") if name.endswith("_ptr") else "i32"
        if name not in odd:
            attrs[(index,)] = [["tt.divisibility", 16]]
    target = GPUTarget("cuda", 90, 32)
    options = triton.compiler.make_backend(target).parse_options({"num_warps": num_warps, "num_stages": num_stages})
    source = triton.compiler.ASTSource(fn=kernel, constexprs=constants, signature=signature, attrs=attrs)
    return triton.compile(source, target=target, options=options.__dict__).asm["ptx"]


@pytest.mark.filterwarnings("ignore:TRITON_DEFAULT_FP_FUSION")
@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU tests compile and run the kernels there")
@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_cuda_kernels_compile_for_hopper_with_tensor_cores_and_pipelining(built_repo, dtype):
    """The compiled (not interpreted) kernels build for an H100 on this CPU machine, with asynchronous, multi-stage
    loads (cp.async) and, for bf16, Hopper's tensor-core instructions (wgmma): the fast path, not a fallback."""
    if can_interpret_triton():
        pytest.skip("this process interprets Triton")
    from kernels import get_local_kernel

    module = get_local_kernel(built_repo / "build" / "torch-cuda").triton_grouped_gemm
    assert not module.interpreted()
    matmul_config, weight_grad_config = module._matmul_configs()[0], module._weight_grad_configs()[0]
    precision = {"PRECISION": "tf32" if dtype == "bf16" else "ieee", "UPCAST": False}
    matmul = dict(matmul_config.kwargs, HAS_BIAS=True, GELU=True, EVEN_K=True, GROUPS_POW2=16, **precision)
    launches = {
        "forward": (module._grouped_matmul_kernel, matmul, ("stride_ak", "stride_bn", "stride_on")),
        "dx (W transposed)": (module._grouped_matmul_kernel, dict(matmul, HAS_BIAS=False, GELU=False),
                              ("stride_ak", "stride_bk", "stride_on")),
        "dW and db": (module._grouped_weight_grad_kernel, dict(weight_grad_config.kwargs, HAS_DBIAS=1, **precision),
                      ("stride_xk", "stride_dyn", "stride_dwn")),
    }
    for name, (kernel, constants, unit_strides) in launches.items():
        config = matmul_config if kernel is module._grouped_matmul_kernel else weight_grad_config
        ptx = compile_for_hopper(kernel, dtype, constants, config.num_warps, config.num_stages, unit_strides)
        assert "cp.async" in ptx, name
        # IEEE fp32 has no tensor-core instruction: fp32 multiplies on FMA units unless TF32 is allowed.
        assert ("wgmma" in ptx) == (dtype == "bf16"), name


@pytest.mark.parametrize("variant", ["cpu_kernel", "triton_kernel"])
def test_op_passes_opcheck_and_compiles_without_graph_break(request, variant):
    kernel = request.getfixturevalue(variant)
    x, weight, b, offsets, grad = operands([3, 0, 4], 16, 16, torch.float32)
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


# ---- the model on the kernel path ----------------------------------------------------------------------------------
def model_outputs_and_grads(**config_overrides):
    torch.manual_seed(0)
    model = MoLForMaskedLM(MoLConfig(**tiny_config_kwargs(**config_overrides)))
    ids = torch.randint(3, 99, (4, 9), generator=torch.Generator().manual_seed(0))
    # Three sentences of one group and one of another: the third group is empty.
    out = model(input_ids=ids, languages=["eng_Latn", "fra_Latn", "deu_Latn", "eng_Latn"], labels=ids)
    out.loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters() if "encoder.layer.1" in name and p.grad is not None}
    return out.loss, out.logits, grads, model


@pytest.mark.parametrize(
    "variant, folder",
    [("torch-cpu", ""), ("torch-cuda", "build/torch-cuda")],
    ids=["reference-variant", "triton-variant"],
)
def test_model_on_the_kernel_matches_the_torch_path(request, caplog, built_repo, variant, folder):
    if variant == "torch-cuda":
        request.getfixturevalue("triton_kernel")  # import the Triton variant interpreted, before the model does
    repo_id = f"{LOCAL_REPO_ID}-{variant}"
    loss, logits, grads, _ = model_outputs_and_grads(grouped_gemm_backend="loop")
    mol_grouped_gemm._LOGGED_PATHS.clear()
    with environment(LOCAL_KERNELS=f"{repo_id}={built_repo / folder}"), caplog.at_level("INFO"):
        kernel_loss, kernel_logits, kernel_grads, model = model_outputs_and_grads(
            grouped_gemm_backend="hub_kernel", grouped_gemm_kernel=repo_id
        )
    assert any(f"the Hub kernel {repo_id} v1 ({variant} variant)" in r.getMessage() for r in caplog.records)
    torch.testing.assert_close(kernel_logits, logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(kernel_loss, loss, atol=1e-6, rtol=1e-6)
    assert kernel_grads.keys() == grads.keys() and len(grads) > 10
    for name in grads:
        torch.testing.assert_close(kernel_grads[name], grads[name], atol=1e-6, rtol=1e-4, msg=name)


def test_the_ffn_gelu_runs_in_the_kernels_epilogue(built_repo):
    """On the Hub kernel, MoLLayer hands the FFN's GELU to the kernel (activation="gelu"): every aten::gelu of an
    encoder forward runs inside the kernel's op, none as a separate pass; the outputs equal the torch path's."""
    from modeling_mol import MoLModel
    from torch.profiler import ProfilerActivity, profile

    repo_id = f"{LOCAL_REPO_ID}-epilogue"
    torch.manual_seed(0)
    reference = MoLModel(MoLConfig(**tiny_config_kwargs(grouped_gemm_backend="loop"))).eval()
    ids = torch.randint(3, 99, (4, 9))
    languages = ["eng_Latn", "fra_Latn", "rus_Cyrl", "deu_Latn"]
    with environment(LOCAL_KERNELS=f"{repo_id}={built_repo}"):
        model = MoLModel(MoLConfig(**tiny_config_kwargs(grouped_gemm_backend="hub_kernel",
                                                        grouped_gemm_kernel=repo_id))).eval()
        model.load_state_dict(reference.state_dict())
        with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as trace:
            out = model(input_ids=ids, languages=languages).last_hidden_state
    with torch.no_grad():
        torch.testing.assert_close(out, reference(input_ids=ids, languages=languages).last_hidden_state,
                                   atol=1e-5, rtol=1e-5)

    def inside_kernel(event):
        while event is not None:
            if "grouped_linear_forward" in event.name:
                return True
            event = event.cpu_parent
        return False

    gelus = [event for event in trace.events() if event.name == "aten::gelu"]
    assert len(gelus) == model.config.num_hidden_layers  # one per FFN (every block is group-specific here)
    assert all(inside_kernel(event) for event in gelus)


def test_kernels_benchmark_finds_and_verifies_the_repos_workloads(built_repo):
    """`kernels benchmark` (kernels' own entry point) on the staged repo: every workload of
    benchmarks/benchmark_grouped_linear.py runs on this machine's variant and matches its reference."""
    import shutil

    assert (built_repo / "benchmarks" / "benchmark_grouped_linear.py").is_file()
    cli = shutil.which("kernels", path=os.path.dirname(sys.executable)) or shutil.which("kernels")
    run = subprocess.run([cli, "benchmark", str(built_repo), "--iterations", "2", "--warmup", "1"], cwd=built_repo,
                         capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    output = run.stdout + run.stderr
    workloads = ["ffn_in_gelu", "ffn_out", "qkv", "projection_1024", "projection_768", "bias_free", "ragged_tokens",
                 "one_empty_group"]
    rows = [line for line in output.splitlines() if "GroupedLinearBenchmark" in line and "│" in line]
    assert sorted(row.split("│")[2].strip() for row in rows) == sorted(workloads), output[-3000:]
    assert all("✓" in row for row in rows), rows


def test_benchmark_gives_grouped_mm_a_cheap_bias_with_the_right_gradient():
    benchmark = load_script("benchmark")
    x = torch.randn(37, 32, requires_grad=True)
    weight = torch.randn(3, 32, 16, requires_grad=True)
    bias = torch.randn(3, 16, requires_grad=True)
    sizes = [20, 0, 17]
    offsets = torch.tensor(sizes).cumsum(0).to(torch.int32)
    grad = torch.randn(37, 16)
    benchmark.grouped_mm_cheap_bias(x, weight, bias, offsets, sizes).backward(grad)
    got = [t.grad.clone() for t in (x, weight, bias)]
    for t in (x, weight, bias):
        t.grad = None
    mol_grouped_gemm.grouped_linear_loop(x, weight, bias, offsets).backward(grad)
    for mine, expected in zip(got, (x.grad, weight.grad, bias.grad)):
        torch.testing.assert_close(mine, expected, atol=1e-5, rtol=1e-5)


def test_benchmark_quick_run_has_the_fair_rows_and_the_per_kernel_split(tmp_path):
    out = tmp_path / "results.json"
    run = subprocess.run([sys.executable, str(HUB_KERNELS / "benchmark.py"), "--quick", "--out", str(out)],
                         capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert run.returncode == 0, run.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert {r["contender"] for r in rows} == {"hub_kernel", "grouped_mm", "loop", "dense"}
    assert any(not r["bias"] for r in rows) and any(r["activation"] == "gelu" for r in rows)
    assert any(r["tokens"] % 16 for r in rows) and {r["sizes"] for r in rows} >= {"skewed", "one-empty", "uniform"}
    assert all(r["tflops"] is not None for r in rows if r["contender"] == "grouped_mm")  # fp32 runs on the CPU
    split = [r["kernel_breakdown_ms"] for r in rows if r["contender"] == "hub_kernel" and r["mode"] == "fwd+bwd"]
    assert split and all({"forward", "backward (dx, dW, db)"} <= set(s) for s in split)
    assert "kernel ms: per kernel" in run.stdout


def test_model_loads_a_local_kernel_folder(built_repo):
    gemm = MoLGroupedGemm("hub_kernel", kernel_repo=str(built_repo))
    x, weight, b, offsets, _ = operands([2, 3], 16, 16, torch.float32, tail_rows=0)
    torch.testing.assert_close(gemm(x, weight, b, offsets), mol_grouped_gemm.grouped_linear_loop(x, weight, b, offsets))
    assert gemm._choice[("cpu", torch.float32, 16, 16)].__module__.startswith("_mol_grouped_gemm_cpu_")


def test_config_validates_kernel_trust():
    assert MoLConfig(**tiny_config_kwargs()).grouped_gemm_kernel_trust_remote_code is False
    assert MoLGroupedGemm.from_config(
        MoLConfig(**tiny_config_kwargs(grouped_gemm_kernel_trust_remote_code=["org/kernel"]))
    ).trust_remote_code == ["org/kernel"]
    with pytest.raises(ValueError, match="grouped_gemm_kernel_trust_remote_code must be True, False or a list"):
        MoLConfig(**tiny_config_kwargs(grouped_gemm_kernel_trust_remote_code="yes"))


def test_kernel_trust_is_the_loading_users_and_never_saved(tmp_path):
    from modeling_mol import MoLModel

    trusting = MoLConfig(**tiny_config_kwargs(grouped_gemm_kernel_trust_remote_code=True))
    assert MoLModel(trusting).encoder.grouped_gemm.trust_remote_code is True
    trusting.save_pretrained(tmp_path)
    assert "grouped_gemm_kernel_trust_remote_code" not in (tmp_path / "config.json").read_text()
    assert MoLConfig.from_pretrained(tmp_path).grouped_gemm_kernel_trust_remote_code is False
    given = MoLConfig.from_pretrained(tmp_path, grouped_gemm_kernel_trust_remote_code=["org/kernel"])
    assert given.grouped_gemm_kernel_trust_remote_code == ["org/kernel"]


# ---- publishing and trust, on the loopback Hub ---------------------------------------------------------------------
@pytest.fixture
def kernels_reach_the_hub():
    """kernels 0.17.2 sends an empty user agent when HF_HUB_DISABLE_TELEMETRY is set (as conftest does), which
    huggingface_hub turns into a header ending in "; " that httpx refuses: every Hub request of `kernels` fails.
    Telemetry is switched back on for these tests only; the requests go to the loopback Hub."""
    from huggingface_hub import constants

    saved, constants.HF_HUB_DISABLE_TELEMETRY = constants.HF_HUB_DISABLE_TELEMETRY, False
    yield
    constants.HF_HUB_DISABLE_TELEMETRY = saved


@pytest.fixture(scope="session")
def published(hub):
    """mol-org/mol-grouped-gemm published with hub_kernels/publish.py's command line."""
    publish = load_script("publish")
    repo_id = "mol-org/mol-grouped-gemm"
    assert publish.main(["--repo", repo_id]) == 0
    return repo_id


def test_kernels_cannot_reach_the_hub_with_telemetry_disabled(hub):
    """The reason for `kernels_reach_the_hub`; when this starts failing, `kernels` is fixed and the fixture can go."""
    from huggingface_hub import constants
    from kernels.hf_hub import _get_hf_api

    assert constants.HF_HUB_DISABLE_TELEMETRY
    with pytest.raises(Exception, match="Illegal header value"):
        _get_hf_api().whoami()


def test_publish_makes_a_kernel_repo_with_a_v1_branch(hub, published):
    from huggingface_hub import HfApi

    api = HfApi()
    assert ("kernel", published) in hub.state.repos
    branches = {ref.name: ref.target_commit for ref in api.list_repo_refs(published, repo_type="kernel").branches}
    assert "v1" in branches and "main" in branches
    files = set(api.list_repo_files(published, repo_type="kernel", revision="v1"))
    for backend in ("cpu", "cuda"):
        assert {f"build/torch-{backend}/{name}" for name in ("__init__.py", "_ops.py", "metadata.json")} <= files
    assert "build/torch-cuda/triton_grouped_gemm.py" in files and "build.toml" in files
    assert "torch-ext/mol_grouped_gemm/triton_grouped_gemm.py" in files
    assert not any("__pycache__" in f or f.endswith(".pyc") for f in files)
    card = api.hf_hub_download(published, "README.md", repo_type="kernel", revision="v1")
    assert f'get_kernel("{published}", version=1' in open(card).read()
    # Publishing again updates v1 in place.
    load_script("publish").publish(published)
    again = {ref.name: ref.target_commit for ref in api.list_repo_refs(published, repo_type="kernel").branches}
    assert again["v1"] != branches["v1"]


def test_untrusted_publisher_needs_explicit_trust(published, kernels_reach_the_hub):
    from kernels import get_kernel

    with pytest.raises(ValueError, match="not from a trusted publisher"):
        get_kernel(published, version=1, backend="cpu")
    gemm = MoLGroupedGemm("hub_kernel", kernel_repo=published, kernel_version=1)
    x, weight, b, offsets, _ = operands([2, 3], 16, 16, torch.float32, tail_rows=0)
    with pytest.raises(RuntimeError, match="not from a trusted publisher.*grouped_gemm_kernel_trust_remote_code=True"):
        gemm(x, weight, b, offsets)
    for trust in (True, [published]):
        trusting = MoLGroupedGemm("hub_kernel", kernel_repo=published, kernel_version=1, trust_remote_code=trust)
        expected = mol_grouped_gemm.grouped_linear_loop(x, weight, b, offsets)
        torch.testing.assert_close(trusting(x, weight, b, offsets), expected)
    kernel = get_kernel(published, version=1, backend="cpu", trust_remote_code=True)
    assert kernel.__file__.endswith("build/torch-cpu/__init__.py")
    assert "kernels--mol-org--mol-grouped-gemm" in kernel.__file__  # the HF cache of the loopback Hub's repo


def test_trusted_publisher_loads_without_trust(hub, published, kernels_reach_the_hub):
    from kernels import get_kernel

    hub.state.trusted_kernel_publishers.add("mol-org")
    try:
        kernel = get_kernel(published, version=1, backend="cpu")
    finally:
        hub.state.trusted_kernel_publishers.discard("mol-org")
    assert kernel.BACKEND == "cpu"


# ---- on a GPU ------------------------------------------------------------------------------------------------------
needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1",
    reason="needs a CUDA device (and Triton compiling, not interpreting)",
)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"])
def test_cuda_variant_matches_reference_on_gpu(built_repo, dtype):
    from kernels import get_local_kernel

    kernel = get_local_kernel(built_repo)
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
def test_cuda_variant_compiles_with_inductor(built_repo):
    from kernels import get_local_kernel

    kernel = get_local_kernel(built_repo)
    x, weight, b, offsets, grad = operands([64, 0, 17], 128, 256, torch.bfloat16)
    x, weight, b = (t.detach().cuda().requires_grad_() for t in (x, weight, b))
    compiled = torch.compile(kernel.grouped_linear, fullgraph=True)
    out = compiled(x, weight, b, offsets.cuda(), "gelu")
    out.backward(grad.cuda())
    expected = fp64_reference(x.cpu(), weight.cpu(), b.cpu(), [64, 0, 17], "gelu", grad)
    assert relative_error(out.cpu(), expected[0]) < 2e-2 and relative_error(weight.grad.cpu(), expected[2]) < 2e-2
