"""The mol-grouped-gemm Hub kernel (hub_kernels/): built variants load through the real `kernels` paths and carry
the metadata current kernels reads (digest, provenance), the model gives the same numbers on the kernel and on the
torch path, a kernel from an untrusted publisher is never loaded without the user's trust, and publishing makes a
Hub kernel repo with a v0 branch (on the loopback Hub). The op itself against its float64 reference is tested by
the kernel repo's own tests (hub_kernels/mol-grouped-gemm/tests/), which pytest collects too.

The Triton tests (every test named `*triton*`, here and in the kernel repo's tests) need Triton's CPU interpreter,
which works only when TRITON_INTERPRET=1 is set before `triton` is first imported: Triton decides at decoration
time whether a @jit function is compiled or interpreted, its own library functions (tl.sum, tl.cdiv, ...) included,
and torch or transformers may import it early. So when this process cannot interpret, one test reruns them in a
fresh pytest process started with TRITON_INTERPRET=1 (`TRITON_INTERPRET=1 pytest tests/test_hub_kernel.py
hub_kernels/mol-grouped-gemm/tests -k triton` does the same by hand).
"""

import importlib.util
import json
import os
import re
import shutil
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
KERNEL_TESTS = KERNEL_DIR / "tests"
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
def built_repo():
    """The committed kernel repo (hub_kernels/mol-grouped-gemm), checked to equal a fresh build. The kernel repo's own
    tests load its variants from there too, and one process cannot import the same build from two folders."""
    assert build.check() == [], "run python hub_kernels/build.py"
    return KERNEL_DIR


@pytest.fixture(scope="session")
def staged_repo(tmp_path_factory):
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


@pytest.mark.slow
def test_triton_tests_in_an_interpreter_process():
    if can_interpret_triton():
        pytest.skip("this process interprets Triton: the *triton* tests ran here")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, str(KERNEL_TESTS), "-k", "triton"]
    env = dict(os.environ, TRITON_INTERPRET="1")
    done = subprocess.run(command, cwd=PROJECT, env=env, capture_output=True, text=True, timeout=600)
    report = done.stdout[-6000:] + done.stderr[-2000:]
    assert done.returncode == 0, report
    passed = re.search(r"(\d+) passed", report)
    assert passed and int(passed.group(1)) >= 23, report  # all of them ran, none was skipped away
    skipped = re.search(r"(\d+) skipped", report)
    assert skipped is None or int(skipped.group(1)) == 1, report  # only this test, which has nothing to rerun there


# ---- the repo and its build ----------------------------------------------------------------------------------------
def test_build_toml_parses_as_kernel_builder_config():
    from kernels._rust import Backend, Build

    assert Build.open(KERNEL_DIR).general.backends == [Backend.CPU, Backend.CUDA]


def test_committed_build_and_card_are_current():
    assert build.check() == [], "run python hub_kernels/build.py"


@pytest.mark.parametrize("backend", ["cpu", "cuda"])
def test_variant_metadata_is_what_kernels_reads(built_repo, backend):
    from kernels._rust import Digest, DigestAlgorithm, Metadata

    variant = built_repo / "build" / f"torch-{backend}"
    metadata = json.loads((variant / "metadata.json").read_text())
    assert metadata["name"] == "mol-grouped-gemm" and metadata["version"] == 0 and metadata["license"]
    assert metadata["backend"] == {"type": backend} and metadata["python-depends"] == []
    assert metadata["id"].startswith(f"_mol_grouped_gemm_{backend}_")
    parsed = Metadata.read_from_file(variant / "metadata.json")
    assert str(parsed.name) == "mol-grouped-gemm" and parsed.version == 0 and str(parsed.kernels_minver) == "0.17.0"
    assert (variant / "__init__.py").exists() and (variant / "_ops.py").exists()
    assert (variant / "triton_grouped_gemm.py").exists() == (backend == "cuda")
    # The digest is the one kernels computes over the variant's files (kernels.verify checks exactly this).
    assert parsed.digest.algorithm == DigestAlgorithm.SHA256
    assert set(parsed.digest.files) == {p.name for p in variant.iterdir() if p.is_file() and p.name != "metadata.json"}
    parsed.digest.validate(Digest.hash_variant(DigestAlgorithm.SHA256, variant))
    # The committed-build form of the provenance: the builder, no git state.
    assert parsed.provenance.kernel_builder.version and parsed.provenance.kernel is None and not parsed.provenance.dirty


def test_digest_catches_a_changed_file(tmp_path):
    from kernels._rust import Digest, DigestAlgorithm, DigestValidationError, Metadata

    variant = build.build_variants(build_dir=tmp_path / "build")["cpu"]
    with open(variant / "reference.py", "a") as handle:
        handle.write("# tampered\n")
    parsed = Metadata.read_from_file(variant / "metadata.json")
    with pytest.raises(DigestValidationError) as caught:
        parsed.digest.validate(Digest.hash_variant(DigestAlgorithm.SHA256, variant))
    assert "reference.py" in str(caught.value.violations[0])


def test_published_build_records_the_git_state_of_its_sources(tmp_path):
    from kernels._rust import Metadata

    staged = build.stage_repo(tmp_path / "repo", record_git=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT, capture_output=True, text=True, check=True)
    provenance = Metadata.read_from_file(staged / "build" / "torch-cuda" / "metadata.json").provenance
    assert provenance.kernel.commit == head.stdout.strip() == provenance.kernel_builder.git.commit
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "hub_kernels/mol-grouped-gemm"],
                           cwd=PROJECT, capture_output=True, text=True, check=True).stdout.strip()
    assert provenance.kernel.dirty == bool(dirty)


def test_version_is_0_until_gpu_figures_exist(tmp_path):
    """v0 while unmeasured; build.toml may say 1 only with GPU results; the model asks for the version built."""
    from configuration_mol.configuration_mol import GROUPED_GEMM_KERNEL_VERSION

    assert build.read_build_config()["version"] == 0 == GROUPED_GEMM_KERNEL_VERSION == MoLConfig().grouped_gemm_kernel_version
    assert MoLGroupedGemm().kernel_version == 0
    kernel_dir = tmp_path / "mol-grouped-gemm"
    shutil.copytree(KERNEL_DIR, kernel_dir, ignore=shutil.ignore_patterns("__pycache__", "build", "results.json"))
    toml = kernel_dir / "build.toml"
    toml.write_text(re.sub(r"(?m)^version = 0.*$", "version = 1", toml.read_text()))
    with pytest.raises(ValueError, match="version 1 needs measured GPU figures in benchmarks/results.json"):
        build.read_build_config(kernel_dir)
    results = kernel_dir / "benchmarks" / "results.json"
    results.write_text(json.dumps({"environment": {"device": "cpu"}, "rows": []}))
    with pytest.raises(ValueError, match="needs measured GPU figures"):  # CPU figures are not the measurement
        build.read_build_config(kernel_dir)
    results.write_text(json.dumps({"environment": {"device": "NVIDIA H200"}, "rows": []}))
    assert build.read_build_config(kernel_dir)["version"] == 1
    toml.write_text(re.sub(r"(?m)^version = 1$", "version = -1", toml.read_text()))
    with pytest.raises(ValueError, match="version must be an integer >= 0, got -1"):
        build.read_build_config(kernel_dir)
    with pytest.raises(ValueError, match="grouped_gemm_kernel_version must be an integer >= 0"):
        MoLConfig(grouped_gemm_kernel_version="1")


def test_card_is_a_kernels_card_and_the_repo_keeps_its_tests(staged_repo):
    from huggingface_hub import ModelCard

    card = ModelCard.load(staged_repo / "README.md")
    assert card.data.library_name == "kernels" and card.data.license == "apache-2.0" and "kernels" in card.data.tags
    assert "Not measured yet" in card.text  # no GPU figures in this version: the card says so, with the command
    staged_tests = sorted(p.name for p in (staged_repo / "tests").glob("*.py"))
    assert staged_tests == sorted(p.name for p in KERNEL_TESTS.glob("test*.py")) and staged_tests
    assert "gpu:" in (staged_repo / "pytest.ini").read_text()


def test_kernel_repo_tests_run_from_the_staged_repo(staged_repo):
    """The kernel repo's tests run where it is published, against its own build/, without this project."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--strict-markers", "-k",
               "cpu_variant or bad_operands"]
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "TRITON_INTERPRET")}
    done = subprocess.run(command, cwd=staged_repo, env=env, capture_output=True, text=True, timeout=300)
    report = done.stdout[-4000:] + done.stderr[-2000:]
    assert done.returncode == 0, report
    passed = re.search(r"(\d+) passed", report)
    assert passed and int(passed.group(1)) >= 4, report


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
        kernel = get_kernel(LOCAL_REPO_ID, version=0, backend="cpu")
    assert kernel.__file__ == str(built_repo / "build" / "torch-cpu" / "__init__.py")
    assert kernel is cpu_kernel  # kernels caches a variant per folder


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
        integer = name in ("offsets_ptr", "order_ptr", "table_ptr")
        signature[name] = ("*i32" if integer else f"*{dtype}") if name.endswith("_ptr") else "i32"
        if name not in odd:
            attrs[(index,)] = [["tt.divisibility", 16]]
    target = GPUTarget("cuda", 90, 32)
    options = triton.compiler.make_backend(target).parse_options({"num_warps": num_warps, "num_stages": num_stages})
    source = triton.compiler.ASTSource(fn=kernel, constexprs=constants, signature=signature, attrs=attrs)
    return triton.compile(source, target=target, options=options.__dict__).asm["ptx"]


@pytest.mark.filterwarnings("ignore:TRITON_DEFAULT_FP_FUSION")
@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU tests compile and run the kernels there")
@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
@pytest.mark.slow
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


@pytest.mark.filterwarnings("ignore:TRITON_DEFAULT_FP_FUSION")
@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU tests compile and run the kernels there")
def test_hopper_kernels_compile_for_sm90_with_tma_and_wgmma(built_repo):
    """The persistent Hopper kernels build for an H100 ahead of time on this CPU machine: their loads are TMA tensor
    copies (cp.async.bulk.tensor) and their products wgmma, in bf16 at the shipped default tile configuration."""
    if can_interpret_triton():
        pytest.skip("this process interprets Triton")
    from kernels import get_local_kernel

    module = get_local_kernel(built_repo / "build" / "torch-cuda").hopper_grouped_gemm
    m, n, k, warps, stages, split = module.DEFAULT_CONFIGS[0]
    precision = {"PRECISION": "tf32", "UPCAST": False}
    launches = {
        "forward with GELU": (module._persistent_matmul_kernel, dict(
            BLOCK_M=m, BLOCK_N=n, BLOCK_K=k, EPILOGUE_SPLIT=split, NUM_PROGRAMS=132, B_TRANSPOSED=False,
            HAS_BIAS=True, GELU=True, **precision)),
        "dx (W^T descriptor)": (module._persistent_matmul_kernel, dict(
            BLOCK_M=m, BLOCK_N=n, BLOCK_K=k, EPILOGUE_SPLIT=split, NUM_PROGRAMS=132, B_TRANSPOSED=True,
            HAS_BIAS=False, GELU=False, **precision)),
        "dW and db, split rows": (module._weight_grad_kernel, dict(BLOCK_K=128, BLOCK_N=128, BLOCK_R=64,
                                                                   HAS_DBIAS=True, **precision)),
    }
    for name, (kernel, constants) in launches.items():
        ptx = compile_for_hopper(kernel, "bf16", constants, warps, stages, (), odd=("num_rows", "num_groups",
                                                                                     "table_rows", "splits"))
        assert "cp.async.bulk.tensor" in ptx, name  # TMA loads
        assert "wgmma" in ptx, name


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
    "variant, folder, path",
    [("torch-cpu", "", None), ("torch-cuda", "build/torch-cuda", "portable"), ("torch-cuda", "build/torch-cuda", "hopper")],
    ids=["reference-variant", "triton-variant", "triton-hopper-variant"],
)
def test_model_on_the_kernel_matches_the_torch_path(request, caplog, built_repo, variant, folder, path):
    launches_before = None
    if variant == "torch-cuda":
        kernel = request.getfixturevalue("triton_kernel")  # interpreted, imported before the model loads it
        gemm, launches = kernel.triton_grouped_gemm, kernel.hopper_grouped_gemm.LAUNCHES
        saved, gemm.PATH = gemm.PATH, path
        request.addfinalizer(lambda: setattr(gemm, "PATH", saved))
        launches_before = dict(launches)
    repo_id = f"{LOCAL_REPO_ID}-{variant}"
    loss, logits, grads, _ = model_outputs_and_grads(grouped_gemm_backend="loop")
    mol_grouped_gemm._LOGGED_PATHS.clear()
    with environment(LOCAL_KERNELS=f"{repo_id}={built_repo / folder}"), caplog.at_level("INFO"):
        kernel_loss, kernel_logits, kernel_grads, model = model_outputs_and_grads(
            grouped_gemm_backend="hub_kernel", grouped_gemm_kernel=repo_id
        )
    assert any(f"the Hub kernel {repo_id} v0 ({variant} variant)" in r.getMessage() for r in caplog.records)
    torch.testing.assert_close(kernel_logits, logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(kernel_loss, loss, atol=1e-6, rtol=1e-6)
    assert kernel_grads.keys() == grads.keys() and len(grads) > 10
    for name in grads:
        torch.testing.assert_close(kernel_grads[name], grads[name], atol=1e-6, rtol=1e-4, msg=name)
    if launches_before is not None:  # the path asked for is the one that ran
        ran = {kind: launches[kind] - launches_before.get(kind, 0) for kind in ("forward", "dx", "weight_grad")}
        assert all(count > 0 for count in ran.values()) == (path == "hopper"), ran


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


@pytest.mark.slow
def test_kernels_benchmark_finds_and_verifies_the_repos_workloads(staged_repo):
    """`kernels benchmark` (kernels' own entry point) on the staged repo: every workload of
    benchmarks/benchmark_grouped_linear.py runs on this machine's variant and matches its reference."""
    assert (staged_repo / "benchmarks" / "benchmark_grouped_linear.py").is_file()
    cli = shutil.which("kernels", path=os.path.dirname(sys.executable)) or shutil.which("kernels")
    run = subprocess.run([cli, "benchmark", str(staged_repo), "--iterations", "2", "--warmup", "1"], cwd=staged_repo,
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


@pytest.mark.slow
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
    x, weight, b, offsets = torch.randn(5, 16), torch.randn(2, 16, 16), torch.randn(2, 16), torch.tensor([2, 5], dtype=torch.int32)
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


def test_publish_makes_a_kernel_repo_with_a_v0_branch(hub, published):
    from huggingface_hub import HfApi

    api = HfApi()
    assert ("kernel", published) in hub.state.repos
    branches = {ref.name: ref.target_commit for ref in api.list_repo_refs(published, repo_type="kernel").branches}
    assert "v0" in branches and "main" in branches
    files = set(api.list_repo_files(published, repo_type="kernel", revision="v0"))
    for backend in ("cpu", "cuda"):
        assert {f"build/torch-{backend}/{name}" for name in ("__init__.py", "_ops.py", "metadata.json")} <= files
    assert "build/torch-cuda/triton_grouped_gemm.py" in files and "build.toml" in files
    assert "torch-ext/mol_grouped_gemm/triton_grouped_gemm.py" in files
    assert not any("__pycache__" in f or f.endswith(".pyc") for f in files)
    card = api.hf_hub_download(published, "README.md", repo_type="kernel", revision="v0")
    assert f'get_kernel("{published}", version=0' in open(card).read()
    # Publishing again updates v0 in place.
    load_script("publish").publish(published)
    again = {ref.name: ref.target_commit for ref in api.list_repo_refs(published, repo_type="kernel").branches}
    assert again["v0"] != branches["v0"]


def test_untrusted_publisher_needs_explicit_trust(published, kernels_reach_the_hub):
    from kernels import get_kernel

    with pytest.raises(ValueError, match="not from a trusted publisher"):
        get_kernel(published, version=0, backend="cpu")
    gemm = MoLGroupedGemm("hub_kernel", kernel_repo=published, kernel_version=0)
    x, weight, b, offsets = torch.randn(5, 16), torch.randn(2, 16, 16), torch.randn(2, 16), torch.tensor([2, 5], dtype=torch.int32)
    with pytest.raises(RuntimeError, match="not from a trusted publisher.*grouped_gemm_kernel_trust_remote_code=True"):
        gemm(x, weight, b, offsets)
    for trust in (True, [published]):
        trusting = MoLGroupedGemm("hub_kernel", kernel_repo=published, kernel_version=0, trust_remote_code=trust)
        expected = mol_grouped_gemm.grouped_linear_loop(x, weight, b, offsets)
        torch.testing.assert_close(trusting(x, weight, b, offsets), expected)
    kernel = get_kernel(published, version=0, backend="cpu", trust_remote_code=True)
    assert kernel.__file__.endswith("build/torch-cpu/__init__.py")
    assert "kernels--mol-org--mol-grouped-gemm" in kernel.__file__  # the HF cache of the loopback Hub's repo


def test_trusted_publisher_loads_without_trust(hub, published, kernels_reach_the_hub):
    from kernels import get_kernel

    hub.state.trusted_kernel_publishers.add("mol-org")
    try:
        kernel = get_kernel(published, version=0, backend="cpu")
    finally:
        hub.state.trusted_kernel_publishers.discard("mol-org")
    assert kernel.BACKEND == "cpu"
