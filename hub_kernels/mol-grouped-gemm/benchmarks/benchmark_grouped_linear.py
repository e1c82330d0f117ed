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

    # The FFN: in (1024 -> 4096) with the GELU in the epilogue, and out (4096 -> 1024).
    def setup_ffn_in_gelu(self):
        self.operands(1024, 4096, activation="gelu")

    def benchmark_ffn_in_gelu(self):
        self.run()

    def verify_ffn_in_gelu(self):
        return self.reference()

    def setup_ffn_out(self):
        self.operands(4096, 1024)

    def benchmark_ffn_out(self):
        self.run()

    def verify_ffn_out(self):
        return self.reference()

    # Attention: Q, K and V as one GEMM (1024 -> 3072), the output projection (1024 -> 1024), XLM-R base's (768).
    def setup_qkv(self):
        self.operands(1024, 3072)

    def benchmark_qkv(self):
        self.run()

    def verify_qkv(self):
        return self.reference()

    def setup_projection_1024(self):
        self.operands(1024, 1024)

    def benchmark_projection_1024(self):
        self.run()

    def verify_projection_1024(self):
        return self.reference()

    def setup_projection_768(self):
        self.operands(768, 768)

    def benchmark_projection_768(self):
        self.run()

    def verify_projection_768(self):
        return self.reference()

    # Edges: no bias, a token count that is not a multiple of 16, a group without rows.
    def setup_bias_free(self):
        self.operands(1024, 4096, bias=False)

    def benchmark_bias_free(self):
        self.run()

    def verify_bias_free(self):
        return self.reference()

    def setup_ragged_tokens(self):
        self.operands(1024, 4096, tokens=49152 - 8 * 13)  # 49048 tokens (6131 on the CPU): no multiple of 16

    def benchmark_ragged_tokens(self):
        self.run()

    def verify_ragged_tokens(self):
        return self.reference()

    def setup_one_empty_group(self):
        self.operands(1024, 4096, empty=3)

    def benchmark_one_empty_group(self):
        self.run()

    def verify_one_empty_group(self):
        return self.reference()
