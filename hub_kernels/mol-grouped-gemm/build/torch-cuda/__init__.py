"""mol-grouped-gemm: the grouped linear op of Mixture-of-Languages encoders, as a Hub kernel.

    from kernels import get_kernel
    kernel = get_kernel("mol-encoders/mol-grouped-gemm", version=0)
    y = kernel.grouped_linear(x, weight, bias, offsets, activation="gelu")

Y[rows of g] = act(X[rows of g] @ W[g] + b[g]) with x (tokens, in), weight (groups, in, out), bias (groups, out)
or None, offsets int32 cumulative row ends, one per group (the last equals the number of tokens; rows past it are
zeros). Differentiable in x, weight and bias; a torch custom op, so torch.compile keeps it in one graph.
"""

import torch

from ._ops import BACKEND, ops
from .custom_ops import grouped_linear_backward, grouped_linear_forward
from .reference import ACTIVATIONS, grouped_linear_reference


__all__ = ["BACKEND", "grouped_linear", "grouped_linear_reference", "grouped_linear_forward", "grouped_linear_backward"]


def grouped_linear(x, weight, bias, offsets, activation=None):
    """act(x[rows of g] @ weight[g] + bias[g]) for every group g, in one call. See the module docstring."""
    activation = "none" if activation is None else activation
    x, weight, bias = _autocast(x, weight, bias)
    _check_operands(x, weight, bias, offsets, activation)
    out, _ = ops.grouped_linear_forward(x, weight, bias, offsets, activation)
    return out


def _autocast(x, weight, bias):
    """Under torch.autocast, run in the autocast dtype as F.linear would: custom ops are not cast automatically."""
    device = x.device.type
    if not torch.is_autocast_enabled(device):
        return x, weight, bias
    dtype = torch.get_autocast_dtype(device)
    return x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype)


def _check_operands(x, weight, bias, offsets, activation):
    """Shape, dtype and device checks that need no value from the device (no host synchronisation)."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation {activation!r} is not supported: use None or 'gelu'.")
    if x.dim() != 2 or weight.dim() != 3 or x.shape[1] != weight.shape[1]:
        raise ValueError(
            f"x must be (tokens, in) and weight (groups, in, out); got {tuple(x.shape)} and {tuple(weight.shape)}."
        )
    if offsets.dim() != 1 or offsets.shape[0] != weight.shape[0] or offsets.dtype not in (torch.int32, torch.int64):
        raise ValueError(
            f"offsets must be the int32 cumulative row ends of the {weight.shape[0]} groups; got {offsets.dtype} "
            f"of shape {tuple(offsets.shape)}."
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[0], weight.shape[2]):
        raise ValueError(f"bias must be (groups, out) = {(weight.shape[0], weight.shape[2])}; got {tuple(bias.shape)}.")
    if weight.dtype != x.dtype or (bias is not None and bias.dtype != x.dtype):
        bias_dtype = None if bias is None else bias.dtype
        raise ValueError(f"x, weight and bias must share one dtype; got {x.dtype}, {weight.dtype}, {bias_dtype}.")
    devices = {t.device for t in (x, weight, bias, offsets) if t is not None}
    if len(devices) > 1:
        raise ValueError(f"x, weight, bias and offsets must be on one device; got {sorted(map(str, devices))}.")
