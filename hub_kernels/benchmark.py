"""Benchmark the grouped linear op at MoL shapes: the Hub kernel against torch grouped_mm, the per-group loop, and
one dense GEMM of the same FLOPs (the ceiling), forward and forward+backward.

    python hub_kernels/benchmark.py                      # CUDA, bf16, the default grid; prints a table, writes JSON
    python hub_kernels/benchmark.py --grid goal          # only the issue's goal shape (1024 -> 4096, 10 groups, 48k)
    python hub_kernels/benchmark.py --grid full          # hidden 768/1024 x FFN 3072/4096 x 5/10/30 groups x 16k-64k
    python hub_kernels/benchmark.py --quick              # tiny fp32 shapes on the CPU: shows the script runs
    python hub_kernels/benchmark.py --out hub_kernels/mol-grouped-gemm/benchmarks/results.json   # for the card

TFLOP/s counts 2*tokens*in*out per GEMM: forward one, forward+backward three (y, dx, dW). "of dense" is the
contender's TFLOP/s over the dense GEMM's at the same shape and mode. The contenders get what they do best: torch's
grouped_mm adds its bias the cheap way (in place, group by group, and a segment sum for its gradient: no tokens x out
bias tensor, no atomic index_add_ in backward), the dense ceiling is cuBLAS's fused addmm, and a GELU row applies
F.gelu after grouped_mm and addmm where the kernel fuses it. GPU timings are CUDA events after warm-up with the L2
cache flushed before every repetition; the kernel's forward+backward is also split per kernel (torch.profiler).

Rows: the FFN (1024 <-> 4096, 768 <-> 3072) with and without bias and with the GELU epilogue, the hidden x hidden
projections (768, 1024) and the fused QKV (1024 -> 3072), 5/10/30 groups, uniform / skewed / one-empty group sizes,
and token counts that are not multiples of 16. The kernel is loaded from the built repo with
`kernels.get_local_kernel` (or `--kernel-repo ORG/NAME` through `get_kernel`); without `kernels` installed the
built variant folder is imported directly, and the JSON says which.
"""

import argparse
import datetime
import importlib.util
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch


HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the MoL checkout: its torch paths are the contenders
from modeling_mol.mol_grouped_gemm import grouped_linear_loop, grouped_mm_unsupported_reason  # noqa: E402


KERNEL_DIR = HERE / "mol-grouped-gemm"
CONTENDERS = ("hub_kernel", "grouped_mm", "loop", "dense")
GOAL = {"in": 1024, "out": 4096, "groups": 10, "tokens": 49152, "sizes": "skewed"}


# ---- shapes -------------------------------------------------------------------------------------------------------
def group_sizes(tokens, groups, kind, seed=0):
    """Rows per group summing to `tokens`: uniform; skewed (Zipf 1/rank, shuffled: a few big languages, a long
    tail, like MoL's training mixes); one-empty (uniform with one group of zero rows)."""
    generator = torch.Generator().manual_seed(seed)
    if kind == "uniform":
        weights = torch.ones(groups)
    elif kind == "skewed":
        weights = 1.0 / torch.arange(1, groups + 1, dtype=torch.float64)
        weights = weights[torch.randperm(groups, generator=generator)]
    elif kind == "one-empty":
        weights = torch.ones(groups)
        weights[groups // 2] = 0
    else:
        raise ValueError(f"group size kind {kind!r} is unknown: use uniform, skewed or one-empty.")
    sizes = (weights / weights.sum() * tokens).floor().long()
    sizes[int(torch.argmax(weights))] += tokens - int(sizes.sum())  # the rounding remainder goes to the largest
    return sizes.tolist()


def grid(name):
    """[(in, out, groups, tokens, sizes kind, bias, activation)] for a named grid."""
    layers = [(1024, 4096), (4096, 1024), (768, 3072), (3072, 768)]
    projections = [(1024, 1024), (768, 768), (1024, 3072)]  # attention output, XLM-R base's, the fused QKV
    if name == "goal":
        return [(GOAL["in"], GOAL["out"], GOAL["groups"], GOAL["tokens"], GOAL["sizes"], True, None),
                (GOAL["in"], GOAL["out"], GOAL["groups"], GOAL["tokens"], GOAL["sizes"], True, "gelu"),
                (GOAL["out"], GOAL["in"], GOAL["groups"], GOAL["tokens"], GOAL["sizes"], True, None)]
    if name == "full":
        return [(i, o, g, t, k, True, None) for i, o in layers + projections for g in (5, 10, 30)
                for t in (16384, 32768, 49152, 65536, 49151) for k in ("uniform", "skewed", "one-empty")]
    rows = [(i, o, 10, 49152, k, True, None) for i, o in layers[:2] for k in ("uniform", "skewed", "one-empty")]
    rows += [(1024, 4096, 10, 49152, "skewed", False, None), (4096, 1024, 10, 49152, "skewed", False, None)]
    rows += [(1024, 4096, 10, 49152, "skewed", True, "gelu"), (768, 3072, 10, 49152, "skewed", True, "gelu")]
    rows += [(i, o, 10, 49152, "skewed", True, None) for i, o in projections]
    rows += [(1024, 4096, g, 49152, "skewed", True, None) for g in (5, 30)]
    rows += [(1024, 4096, 10, t, "skewed", True, None) for t in (16384, 32768, 65536, 49151, 16383)]
    rows += [(i, o, 10, 49152, "skewed", True, None) for i, o in layers[2:]]
    return rows


def quick_grid():
    return [(64, 128, 3, 512, "skewed", True, None), (64, 128, 5, 1024, "one-empty", True, None),
            (128, 64, 4, 1023, "uniform", True, None), (64, 128, 3, 512, "skewed", False, None),
            (64, 128, 3, 512, "skewed", True, "gelu"), (64, 64, 3, 500, "skewed", True, None)]


# ---- the kernel ---------------------------------------------------------------------------------------------------
def load_kernel(kernel_dir, kernel_repo, device, kernel_version=0):
    """(module, how it was loaded)."""
    backend = "cpu" if device == "cpu" else None
    try:
        import kernels
    except ImportError:
        return _import_variant(kernel_dir / "build" / f"torch-{'cpu' if device == 'cpu' else 'cuda'}")
    if kernel_repo:
        module = kernels.get_kernel(kernel_repo, version=kernel_version, backend=backend, trust_remote_code=[kernel_repo])
        return module, f"kernels {kernels.__version__} get_kernel({kernel_repo!r}, version={kernel_version})"
    module = kernels.get_local_kernel(kernel_dir, backend=backend)
    return module, f"kernels {kernels.__version__} get_local_kernel({str(kernel_dir)!r})"


def _import_variant(variant):
    """Import a built variant folder as a package, the way kernels does, for machines without kernels."""
    metadata = json.loads((variant / "metadata.json").read_text())
    spec = importlib.util.spec_from_file_location(metadata["id"], variant / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[metadata["id"]] = module
    spec.loader.exec_module(module)
    return module, f"imported {variant} directly (kernels is not installed)"


# ---- timing -------------------------------------------------------------------------------------------------------
_L2_FLUSH = {}


def time_ms(fn, device, warmup=3, repeats=10):
    """Median milliseconds of fn(): on a GPU CUDA events after 10 warm-up calls, the L2 cache flushed (a 256 MB
    buffer zeroed) before each of 50 repetitions; on the CPU a host clock."""
    if device == "cuda":
        if "buffer" not in _L2_FLUSH:
            _L2_FLUSH["buffer"] = torch.empty(64 * 1024 * 1024, dtype=torch.int32, device="cuda")
        for _ in range(10):
            fn()
        samples = []
        for _ in range(50):
            _L2_FLUSH["buffer"].zero_()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            samples.append(start.elapsed_time(end))
        return statistics.median(samples)
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


class _GroupBias(torch.autograd.Function):
    """out[rows of g] += bias[g] in place, group by group (host sizes), and the bias gradient as a segment sum: the
    cheap way to give grouped_mm a bias (no tokens x out tensor, no atomic index_add_ in backward)."""

    @staticmethod
    def forward(ctx, out, bias, sizes):
        for g, rows in enumerate(out.split(sizes)):
            rows.add_(bias[g])
        ctx.mark_dirty(out)
        ctx.sizes = sizes
        return out

    @staticmethod
    def backward(ctx, grad):
        tail = grad.shape[0] - sum(ctx.sizes)
        parts = grad.split(list(ctx.sizes) + ([tail] if tail else []))[: len(ctx.sizes)]
        return grad, torch.stack([rows.sum(0) for rows in parts]), None


def grouped_mm_cheap_bias(x, weight, bias, offsets, sizes):
    import torch.nn.functional as F

    out = F.grouped_mm(x, weight, offs=offsets)
    return out if bias is None else _GroupBias.apply(out, bias, sizes)


def _gelu(out, activation):
    return torch.nn.functional.gelu(out) if activation == "gelu" else out


def contender_functions(kernel, x, weight, bias, offsets, sizes, activation=None):
    """name -> (callable(x, w, b) or None, why not)."""
    dense_weight = weight[0].detach().clone().requires_grad_()
    dense_bias = None if bias is None else bias[0].detach().clone().requires_grad_()
    reason = grouped_mm_unsupported_reason(x, weight)
    return {
        "hub_kernel": (lambda a, w, b: kernel.grouped_linear(a, w, b, offsets, activation=activation), None),
        "grouped_mm": (None, reason) if reason else (
            lambda a, w, b: _gelu(grouped_mm_cheap_bias(a, w, b, offsets, sizes), activation), None),
        "loop": (lambda a, w, b: _gelu(grouped_linear_loop(a, w, b, offsets), activation), None),
        # The ceiling: one GEMM over all tokens with one weight, the same FLOPs, bias fused by cuBLAS.
        "dense": (lambda a, w, b: _gelu(a @ dense_weight if dense_bias is None else torch.addmm(dense_bias, a, dense_weight),
                                        activation), None),
    }


def kernel_breakdown(fn, x, weight, bias, grad, device):
    """Milliseconds of each kernel of one forward+backward of the Hub kernel (torch.profiler). On a GPU the grouped
    matmul kernel's launches in order (forward, then dx) and the weight-gradient kernel (dW with db folded in);
    on the CPU the reference variant's ops (forward; backward = dx, dW and db)."""
    from torch.profiler import ProfilerActivity, profile

    def once():
        x.grad = weight.grad = None
        if bias is not None:
            bias.grad = None
        fn(x, weight, bias).backward(grad)
        if device == "cuda":
            torch.cuda.synchronize()

    once()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as trace:
        once()
    breakdown, launches = {}, 0
    events = sorted(trace.events(), key=lambda e: e.time_range.start)
    for event in events:
        if device == "cuda":
            if event.device_type.name != "CUDA":
                continue
            if "_grouped_matmul_kernel" in event.name:
                label = "forward" if launches == 0 else "dx"
                launches += 1
            elif "_grouped_weight_grad_kernel" in event.name:
                label = "dW+db"
            else:
                label = "other"
            milliseconds = getattr(event, "device_time", None) or getattr(event, "cuda_time", 0.0)
        else:
            nested = event.cpu_parent is not None and "::grouped_linear_" in event.cpu_parent.name
            if not event.name.endswith(("grouped_linear_forward", "grouped_linear_backward")) or nested:
                continue
            label = "forward" if "forward" in event.name else "backward (dx, dW, db)"
            milliseconds = event.cpu_time_total
        breakdown[label] = breakdown.get(label, 0.0) + milliseconds / 1e3
    return breakdown


def measure(fn, x, weight, bias, grad, device, backward):
    def forward_only():
        with torch.no_grad():
            fn(x, weight, bias)

    def forward_backward():
        x.grad = weight.grad = None
        if bias is not None:
            bias.grad = None
        fn(x, weight, bias).backward(grad)

    return time_ms(forward_backward if backward else forward_only, device)


def run_shape(kernel, in_features, out_features, groups, tokens, kind, has_bias, activation, dtype, device):
    sizes = group_sizes(tokens, groups, kind)
    generator = torch.Generator(device=device).manual_seed(0)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=generator, device=device) * scale).to(dtype).requires_grad_()

    x = randn(tokens, in_features)
    weight = randn(groups, in_features, out_features, scale=in_features ** -0.5)
    bias = randn(groups, out_features, scale=0.1) if has_bias else None
    grad = torch.randn(tokens, out_features, generator=generator, device=device).to(dtype)
    offsets = torch.tensor(sizes, device=device).cumsum(0).to(torch.int32)
    functions = contender_functions(kernel, x, weight, bias, offsets, sizes, activation)

    with torch.no_grad():  # a wrong fast kernel (or contender) is no result: check them against the loop first
        expected = _gelu(grouped_linear_loop(x, weight, bias, offsets), activation).float()
        got = kernel.grouped_linear(x, weight, bias, offsets, activation=activation).float()
        error = ((got - expected).norm() / expected.norm()).item()
        if functions["grouped_mm"][0] is not None:
            fair = functions["grouped_mm"][0](x.detach().clone(), weight, bias).float()
            assert ((fair - expected).norm() / expected.norm()).item() < 2e-2, "grouped_mm with its cheap bias is wrong"
    breakdown = kernel_breakdown(functions["hub_kernel"][0], x, weight, bias, grad, device)

    gemm_flops = 2.0 * tokens * in_features * out_features
    rows = []
    for mode, backward, flops in (("fwd", False, gemm_flops), ("fwd+bwd", True, 3 * gemm_flops)):
        timings = {}
        for name in CONTENDERS:
            fn, reason = functions[name]
            timings[name] = None if fn is None else measure(fn, x, weight, bias, grad, device, backward)
            if fn is None:
                timings[f"{name}_skipped"] = reason
        dense_tflops = flops / (timings["dense"] * 1e-3) / 1e12
        for name in CONTENDERS:
            ms = timings[name]
            tflops = None if ms is None else flops / (ms * 1e-3) / 1e12
            rows.append({
                "in": in_features, "out": out_features, "groups": groups, "tokens": tokens, "sizes": kind,
                "bias": has_bias, "activation": activation or "none",
                "group_sizes": sizes, "mode": mode, "contender": name, "ms": ms, "tflops": tflops,
                "of_dense": None if tflops is None else tflops / dense_tflops,
                "skipped": timings.get(f"{name}_skipped"), "kernel_relative_error": error,
                "kernel_breakdown_ms": breakdown if name == "hub_kernel" and backward else None,
            })
    return rows


# ---- reports ------------------------------------------------------------------------------------------------------
def environment(device, dtype, loaded_via):
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or platform.machine(),
        "dtype": str(dtype).replace("torch.", ""),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "kernel_loaded_via": loaded_via,
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if device == "cuda":
        try:
            query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
            info["driver"] = subprocess.run(query, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            info["driver"] = None
    return info


def _cell(value, fmt):
    return "-" if value is None else format(value, fmt)


def _tflops(value):
    """GPU numbers as whole TFLOP/s, the CPU's tiny ones with three decimals."""
    return "-" if value is None else format(value, ".0f" if value >= 100 else ".1f" if value >= 1 else ".3f")


def table(rows):
    """One line per (shape, mode): every contender's TFLOP/s, and the kernel's fraction of dense."""
    header = ["in->out", "groups", "tokens", "sizes", "bias", "act", "mode", *[f"{c} TFLOP/s" for c in CONTENDERS],
              "kernel/dense", "kernel/grouped_mm", "kernel ms: per kernel"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    def key_of(row):
        return (row["in"], row["out"], row["groups"], row["tokens"], row["sizes"], row.get("bias", True),
                row.get("activation", "none"), row["mode"])

    for key in dict.fromkeys(map(key_of, rows)):
        by_name = {r["contender"]: r for r in rows if key_of(r) == key}
        kernel, grouped = by_name["hub_kernel"], by_name["grouped_mm"]
        versus_grouped = None if grouped["tflops"] is None else kernel["tflops"] / grouped["tflops"]
        parts = kernel.get("kernel_breakdown_ms") or {}
        split = ", ".join(f"{label} {ms:.3g}" for label, ms in parts.items()) or "-"
        cells = [f"{key[0]}->{key[1]}", str(key[2]), str(key[3]), key[4], "yes" if key[5] else "no", key[6], key[7],
                 *[_tflops(by_name[c]["tflops"]) for c in CONTENDERS],
                 _cell(kernel["of_dense"], ".0%"), _cell(versus_grouped, ".2f"), split]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def goal_verdict(rows):
    goal = [r for r in rows if r["mode"] == "fwd+bwd" and (r["in"], r["out"], r["groups"], r["tokens"], r["sizes"])
            == (GOAL["in"], GOAL["out"], GOAL["groups"], GOAL["tokens"], GOAL["sizes"])
            and r.get("bias", True) and r.get("activation", "none") == "none"]
    if not goal:
        return "The goal shape (1024 -> 4096, 10 groups, 48k tokens, skewed) was not in this run."
    by_name = {r["contender"]: r for r in goal}
    kernel, grouped = by_name["hub_kernel"], by_name["grouped_mm"]
    fast_enough = kernel["of_dense"] >= 0.9 and (grouped["tflops"] is None or kernel["tflops"] >= grouped["tflops"])
    return (
        f"Goal (bf16 fwd+bwd, 1024 -> 4096, 10 groups, 48k tokens, skewed): the kernel reaches "
        f"{kernel['tflops']:.0f} TFLOP/s, {kernel['of_dense']:.0%} of dense; torch grouped_mm "
        f"{_cell(grouped['tflops'], '.0f')} TFLOP/s. {'Met.' if fast_enough else 'Not met.'}"
    )


def markdown_report(results):
    """The kernel card's benchmark section, from a results JSON this script wrote."""
    env = results["environment"]
    lines = [
        f"Measured {env['date']} on {env['device']} ({env['dtype']}; torch {env['torch']}, CUDA {env.get('cuda')}, "
        f"driver {env.get('driver')}, Triton {env.get('triton')}; {env['kernel_loaded_via']}).",
        "",
        goal_verdict(results["rows"]),
        "",
        table(results["rows"]),
    ]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny fp32 shapes on the CPU (or the GPU if present)")
    parser.add_argument("--grid", choices=["goal", "default", "full"], default="default")
    parser.add_argument("--device", choices=["cuda", "cpu"], help="default: cuda when available")
    parser.add_argument(
        "--dtype", choices=["bfloat16", "float16", "float32"], help="default: bf16 on CUDA, fp32 on CPU"
    )
    parser.add_argument("--kernel", type=Path, default=KERNEL_DIR, help="a built kernel repo folder")
    parser.add_argument("--kernel-repo", help="load ORG/NAME from the Hub instead of --kernel")
    parser.add_argument("--kernel-version", type=int, default=0, help="the version --kernel-repo loads (default 0)")
    parser.add_argument("--out", type=Path, default=Path("grouped_gemm_benchmark.json"), help="results JSON")
    args = parser.parse_args(argv)

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype or ("bfloat16" if device == "cuda" else "float32"))
    shapes = quick_grid() if args.quick else grid(args.grid)
    if device == "cpu" and not args.quick:
        print("no CUDA device: full-size shapes on the CPU would take hours; use --quick", file=sys.stderr)
        return 2
    kernel, loaded_via = load_kernel(args.kernel, args.kernel_repo, device, args.kernel_version)
    rows = []
    for i, shape in enumerate(shapes, 1):
        print(f"[{i}/{len(shapes)}] in={shape[0]} out={shape[1]} groups={shape[2]} tokens={shape[3]} {shape[4]} "
              f"bias={shape[5]} activation={shape[6]}", file=sys.stderr, flush=True)
        rows.extend(run_shape(kernel, *shape, dtype, device))
    results = {"environment": environment(device, dtype, loaded_via), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(markdown_report(results))
    worst = max(r["kernel_relative_error"] for r in rows)
    print(f"\nkernel vs per-group loop, worst relative error: {worst:.2e}; results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
