"""The Triton helpers both paths share (the portable kernels of triton_grouped_gemm.py and the sm_90 kernels of
hopper_grouped_gemm.py): the fp32-accumulating dot, GELU, and whether the kernels run under Triton's CPU
interpreter. One home, so neither kernel module imports the other's internals."""

import torch
import triton
import triton.language as tl


@triton.jit
def _dot(a, b, acc, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """acc + a @ b in fp32. UPCAST is for Triton's CPU interpreter only, whose dot multiplies bf16 operands as
    raw integer bits (triton 3.9): it gets fp32 operands there, and the GPU path is untouched."""
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=PRECISION)


@triton.jit
def _gelu(z):
    return 0.5 * z * (1.0 + tl.math.erf(z * 0.7071067811865476))


def interpreted():
    """Whether the kernels were built for Triton's CPU interpreter (TRITON_INTERPRET=1 when this was imported)."""
    return type(_gelu).__name__ == "InterpretedFunction"


def runs_here(tensor):
    """The Triton kernels run on CUDA tensors, and on CPU tensors under the interpreter."""
    return tensor.is_cuda or (interpreted() and tensor.device.type == "cpu")


def _dot_flags(dtype):
    """PRECISION: IEEE fp32 for fp32 inputs unless torch allows TF32 (ignored for 16-bit inputs). UPCAST: see _dot."""
    exact = dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest"
    return dict(PRECISION="ieee" if exact else "tf32", UPCAST=interpreted() and dtype == torch.bfloat16)
