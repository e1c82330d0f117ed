"""The PyTorch reference of the grouped linear op, beside the fast kernel.

Y[rows of g] = act(X[rows of g] @ W[g] + b[g]), the rows of each group contiguous and given by `offsets` (int32
cumulative row ends, one per group). Rows past the last offset belong to no group: their outputs and input
gradients are zeros.

It is the `torch-cpu` variant's implementation and the CUDA variant's fallback for tensors that are not on a
GPU. It loops over groups on the host, which reads the group sizes there: fine on the CPU, where there is no
device to wait for, and the reason the CUDA variant does not use it on GPU tensors. Products accumulate in fp32
whatever the input dtype, like the Triton kernel, so the two agree to rounding.
"""

import math

import torch
import torch.nn.functional as F


ACTIVATIONS = ("none", "gelu")


def check_offsets(offsets, num_rows):
    """Offsets must start at 0 or more, never decrease and end at most at the row count. Checked on the device
    without a host synchronisation (`torch._assert_async`: an error at once on the CPU, a device-side assert on
    CUDA); the kernels and this reference also clamp them, so bad offsets can never touch memory past the rows."""
    if offsets.numel() == 0:
        return
    steps = torch.diff(offsets, prepend=offsets.new_zeros(1))
    valid = (steps >= 0).all() & (offsets[-1] <= num_rows)
    torch._assert_async(valid, f"grouped_linear: offsets must be non-decreasing cumulative row ends in 0..{num_rows}")


def group_row_ranges(offsets, num_rows=None):
    """[(start, end)] per group, read on the host; clamped into [0, num_rows] as the kernels clamp them."""
    ends = offsets.tolist()
    ranges = list(zip([0] + ends[:-1], ends))
    if num_rows is None:
        return ranges
    clamped = []
    for start, end in ranges:
        end = min(max(end, 0), num_rows)
        clamped.append((min(max(start, 0), end), end))
    return clamped


def gelu(preact):
    """Exact (erf) GELU, the `gelu` of BERT/XLM-R configs and the kernel's epilogue."""
    return F.gelu(preact)


def gelu_grad(grad, preact):
    """d gelu(z) / dz * grad, in fp32."""
    z = preact.float()
    cdf = 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0)))
    pdf = torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    return grad.float() * (cdf + z * pdf)


def forward(x, weight, bias, offsets, activation):
    """(out, preact): preact is the pre-activation output kept for the backward (empty without activation)."""
    check_offsets(offsets, x.shape[0])
    out = x.new_zeros(x.shape[0], weight.shape[2], dtype=torch.float32)
    for g, (start, end) in enumerate(group_row_ranges(offsets, x.shape[0])):
        rows = x[start:end].float() @ weight[g].float()
        out[start:end] = rows if bias is None else rows + bias[g].float()
    if activation == "none":
        return out.to(x.dtype), x.new_empty(0)
    preact = out.to(x.dtype)
    return gelu(out).to(x.dtype), preact


def backward(grad_out, x, weight, offsets, preact, activation, has_bias, needs_input_grad, needs_weight_grad):
    """(dx, dweight, dbias); a gradient that is not needed comes back empty."""
    grad = grad_out.float() if activation == "none" else gelu_grad(grad_out, preact)
    dx = torch.zeros(x.shape, dtype=torch.float32, device=x.device) if needs_input_grad else None
    dweight = torch.zeros(weight.shape, dtype=torch.float32, device=x.device) if needs_weight_grad else None
    dbias = torch.zeros(weight.shape[0], weight.shape[2], dtype=torch.float32, device=x.device) if has_bias else None
    check_offsets(offsets, x.shape[0])
    for g, (start, end) in enumerate(group_row_ranges(offsets, x.shape[0])):
        rows_grad = grad[start:end]
        if dx is not None:
            dx[start:end] = rows_grad @ weight[g].float().T
        if dweight is not None:
            dweight[g] = x[start:end].float().T @ rows_grad
        if dbias is not None:
            dbias[g] = rows_grad.sum(0)
    return (
        x.new_empty(0) if dx is None else dx.to(x.dtype),
        x.new_empty(0) if dweight is None else dweight.to(weight.dtype),
        x.new_empty(0) if dbias is None else dbias.to(weight.dtype),
    )


def grouped_linear_reference(x, weight, bias, offsets, activation=None):
    """The op written with plain differentiable torch ops, one group at a time: what the tests compare against."""
    outputs = []
    ranges = group_row_ranges(offsets)
    for g, (start, end) in enumerate(ranges):
        rows = x[start:end].float() @ weight[g].float()
        outputs.append(rows if bias is None else rows + bias[g].float())
    tail = x.shape[0] - (ranges[-1][1] if ranges else 0)
    outputs.append(x.new_zeros(tail, weight.shape[2], dtype=torch.float32))
    out = torch.cat(outputs)
    return (out if activation in (None, "none") else gelu(out)).to(x.dtype)
