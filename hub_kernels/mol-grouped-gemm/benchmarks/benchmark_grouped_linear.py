"""`kernels benchmark` workloads of mol-grouped-gemm (run from the repo: `kernels benchmark ORG/mol-grouped-gemm@v1`,
or a local folder `kernels benchmark ./mol-grouped-gemm`): the layers of a MoL block at MoL's goal shape (hidden 1024,
FFN 4096, 10 language groups of skewed sizes, 48k tokens), each verified against the per-group PyTorch product.

On a GPU the operands are bf16 at full size; on the CPU (the reference variant) fp32 and 8x smaller in every
dimension, so the workloads run in seconds. The side-by-side comparison with torch's grouped_mm and the dense GEMM
ceiling, forward and backward, is the project's `hub_kernels/benchmark.py`.
"""

import torch
from kernels.benchmark import Benchmark


def skewed_sizes(tokens, groups, empty=None):
    """Zipf-like (1/rank) rows per group summing to `tokens`, like MoL's language mixes; `empty` gets none."""
    weights = torch.tensor([0.0 if g == empty else 1.0 / (g + 1) for g in range(groups)], dtype=torch.float64)
    sizes = (weights / weights.sum() * tokens).floor().long()
    sizes[0] += tokens - int(sizes.sum())
    return sizes.tolist()


class GroupedLinearBenchmark(Benchmark):
    seed = 0

    def operands(self, in_features, out_features, tokens=49152, groups=10, bias=True, activation=None, empty=None):
        on_gpu = self.device == "cuda"
        scale = 1 if on_gpu else 8
        in_features, out_features, tokens = in_features // scale, out_features // scale, tokens // scale
        dtype = torch.bfloat16 if on_gpu else torch.float32
        self.sizes = skewed_sizes(tokens, groups, empty)
        self.x = torch.randn(tokens, in_features, device=self.device).to(dtype)
        # Small weights keep outputs near 0.1: the runner's absolute tolerance (1e-2) then measures the kernel.
        self.weight = (torch.randn(groups, in_features, out_features, device=self.device) * 0.1 * in_features ** -0.5).to(dtype)
        self.bias = (torch.randn(groups, out_features, device=self.device) * 0.01).to(dtype) if bias else None
        self.offsets = torch.tensor(self.sizes, device=self.device).cumsum(0).to(torch.int32)
        self.activation = activation

    def run(self):
        self.out = self.kernel.grouped_linear(self.x, self.weight, self.bias, self.offsets, activation=self.activation)

    def reference(self):
        outputs, start = [], 0
        for g, size in enumerate(self.sizes):
            rows = self.x[start:start + size].float() @ self.weight[g].float()
            rows = rows if self.bias is None else rows + self.bias[g].float()
            outputs.append(rows)
            start += size
        out = torch.cat(outputs)
        out = torch.nn.functional.gelu(out) if self.activation == "gelu" else out
        return out.to(self.x.dtype)


# Workload -> operands: the FFN in (1024 -> 4096, GELU in the epilogue) and out (4096 -> 1024); attention's Q, K and V
# as one GEMM (1024 -> 3072), its output projection (1024 -> 1024) and XLM-R base's (768); and the edges: no bias, a
# token count that is not a multiple of 16 (49048, 6131 on the CPU), a group without rows.
WORKLOADS = {
    "ffn_in_gelu": dict(in_features=1024, out_features=4096, activation="gelu"),
    "ffn_out": dict(in_features=4096, out_features=1024),
    "qkv": dict(in_features=1024, out_features=3072),
    "projection_1024": dict(in_features=1024, out_features=1024),
    "projection_768": dict(in_features=768, out_features=768),
    "bias_free": dict(in_features=1024, out_features=4096, bias=False),
    "ragged_tokens": dict(in_features=1024, out_features=4096, tokens=49152 - 8 * 13),
    "one_empty_group": dict(in_features=1024, out_features=4096, empty=3),
}


def _add_workload(name, operands):
    # `kernels benchmark` finds workloads by method name: setup_<name>, benchmark_<name>, verify_<name>.
    setattr(GroupedLinearBenchmark, f"setup_{name}", lambda self: self.operands(**operands))
    setattr(GroupedLinearBenchmark, f"benchmark_{name}", GroupedLinearBenchmark.run)
    setattr(GroupedLinearBenchmark, f"verify_{name}", GroupedLinearBenchmark.reference)


for _name, _operands in WORKLOADS.items():
    _add_workload(_name, _operands)
