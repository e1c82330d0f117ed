"""The grouped linear op as torch custom ops, so that torch.compile traces through it without a graph break.

Two ops, in the namespace `_ops.py` gives this build (unique per build and backend, as kernel-builder does, so
two versions of the kernel can live in one process):

- `grouped_linear_forward(x, weight, bias, offsets, activation) -> (out, preact)`; preact is the pre-activation
  output that the GELU backward needs (an empty tensor without activation);
- `grouped_linear_backward(grad_out, x, weight, offsets, preact, activation, has_bias, needs_input_grad,
  needs_weight_grad) -> (dx, dweight, dbias)`; a gradient that is not needed comes back as an empty tensor.

Each has a fake (meta) implementation, which needs only shapes, and the forward has an autograd formula that
calls the backward op. The implementation behind both is this variant's: the Triton kernels in the torch-cuda
build, the PyTorch reference in the torch-cpu build.
"""

import torch

from ._ops import BACKEND, add_op_namespace_prefix, ops


if BACKEND == "cuda":
    from . import triton_grouped_gemm as implementation
else:
    from . import reference as implementation


@torch.library.custom_op(add_op_namespace_prefix("grouped_linear_forward"), mutates_args=())
def grouped_linear_forward(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, offsets: torch.Tensor, activation: str
) -> tuple[torch.Tensor, torch.Tensor]:
    return implementation.forward(x, weight, bias, offsets, activation)


@grouped_linear_forward.register_fake
def _(x, weight, bias, offsets, activation):
    out = x.new_empty(x.shape[0], weight.shape[2])
    return out, (x.new_empty(0) if activation == "none" else torch.empty_like(out))


@torch.library.custom_op(add_op_namespace_prefix("grouped_linear_backward"), mutates_args=())
def grouped_linear_backward(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    offsets: torch.Tensor,
    preact: torch.Tensor,
    activation: str,
    has_bias: bool,
    needs_input_grad: bool,
    needs_weight_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return implementation.backward(
        grad_out, x, weight, offsets, preact, activation, has_bias, needs_input_grad, needs_weight_grad
    )


@grouped_linear_backward.register_fake
def _(grad_out, x, weight, offsets, preact, activation, has_bias, needs_input_grad, needs_weight_grad):
    return (
        torch.empty_like(x) if needs_input_grad else x.new_empty(0),
        torch.empty_like(weight) if needs_weight_grad else weight.new_empty(0),
        weight.new_empty(weight.shape[0], weight.shape[2]) if has_bias else weight.new_empty(0),
    )


def _setup_context(ctx, inputs, output):
    x, weight, bias, offsets, activation = inputs
    ctx.save_for_backward(x, weight, offsets, output[1])
    ctx.activation = activation
    ctx.has_bias = bias is not None


def _backward(ctx, grad_out, _grad_preact):
    x, weight, offsets, preact = ctx.saved_tensors
    needs_x, needs_weight, needs_bias = ctx.needs_input_grad[:3]
    dx, dweight, dbias = ops.grouped_linear_backward(
        grad_out, x, weight, offsets, preact, ctx.activation, ctx.has_bias and needs_bias, needs_x, needs_weight
    )
    return (
        dx if needs_x else None,
        dweight if needs_weight else None,
        dbias if ctx.has_bias and needs_bias else None,
        None,
        None,
    )


grouped_linear_forward.register_autograd(_backward, setup_context=_setup_context)
