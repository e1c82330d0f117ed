"""Grouped linear layers for MoL: Y[rows of g] = X[rows of g] @ W[g] + b[g], the rows of each group contiguous.

`offsets` are int32 cumulative row ends, one per group (the last equals the number of rows), kept on the device.
Three implementations give the same numbers; `MoLGroupedGemm` picks one per device and logs the choice once:
  1. the grouped-GEMM Hub kernel (hub_kernels/mol-grouped-gemm), fetched through `kernels` (CUDA tensors, kernels
     installed, repo configured); `grouped_gemm_backend="hub_kernel"` forces it, on CPU tensors too (its torch-cpu
     variant). The repo may also be a local kernel folder, and `LOCAL_KERNELS=org/name=/path` maps a repo id to one:
     both work offline. A kernel from a publisher the Hub does not trust loads only with the user's explicit trust
     (`grouped_gemm_kernel_trust_remote_code`), never silently;
  2. torch's `grouped_mm` (one call for all groups, where its alignment and device rules hold);
  3. a per-group loop of dense GEMMs (always available; needs the group sizes on the host).
Inside torch.compile / torch.export (no host synchronisation allowed) the choice is torch's grouped_mm where it can
run, else `grouped_linear_masked`: every group's GEMM over all rows, each row keeping its own group's result. That
costs `groups` times the FLOPs and is meant for CPU fp32 graphs (grouped_mm's compiled kernel takes bf16 only there).

Flat remote-code helper: copied beside modeling_mol.py into every exported checkpoint.
"""

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers.utils import logging


try:  # in an exported checkpoint the configuration is a sibling file
    from .configuration_mol import GROUPED_GEMM_BACKENDS
except ImportError:  # in this project it is the `configuration_mol` package beside `modeling_mol`
    from configuration_mol.configuration_mol import GROUPED_GEMM_BACKENDS


logger = logging.get_logger(__name__)

BACKENDS = GROUPED_GEMM_BACKENDS  # "auto", then the implementations in the order auto tries them
_LOADED_KERNELS = {}
_LOGGED_PATHS = set()


def group_sizes(offsets):
    """Rows per group from cumulative row ends (stays on the device)."""
    return torch.diff(offsets, prepend=offsets.new_zeros(1))


def bias_rows(bias, offsets, num_rows):
    """The bias of every row's group, (rows, out), without moving group sizes to the host."""
    return torch.repeat_interleave(bias, group_sizes(offsets).long(), dim=0, output_size=num_rows)


def grouped_linear_loop(x, weight, bias, offsets):
    """Reference: one dense GEMM per group."""
    sizes = group_sizes(offsets).tolist()
    outputs = []
    for g, rows in enumerate(x.split(sizes)):
        out = rows @ weight[g]
        outputs.append(out if bias is None else out + bias[g])
    return torch.cat(outputs)


def grouped_linear_masked(x, weight, bias, offsets):
    """Shape-static reference for compiled graphs: no host sync, groups x the FLOPs (see the module docstring)."""
    row_group = torch.bucketize(torch.arange(x.shape[0], device=x.device), offsets.long(), right=True)
    out = x.new_zeros(x.shape[0], weight.shape[2])
    for g in range(weight.shape[0]):
        result = x @ weight[g] if bias is None else torch.addmm(bias[g], x, weight[g])
        out = torch.where((row_group == g)[:, None], result, out)
    return out


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the incoming gradient contiguous: grouped_mm's backward rejects the
    zero-stride gradients that reductions such as `.sum()` produce."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous()


def grouped_linear_grouped_mm(x, weight, bias, offsets):
    """torch.nn.functional.grouped_mm, with the bias added per row (grouped_mm's own bias has no gradient)."""
    out = _ContiguousGrad.apply(F.grouped_mm(x, weight, offs=offsets))
    return out if bias is None else out + bias_rows(bias, offsets, x.shape[0])


def grouped_mm_unsupported_reason(x, weight):
    """Why torch's grouped_mm cannot run these operands, or None when it can."""
    if not hasattr(F, "grouped_mm"):
        return f"torch {torch.__version__} has no torch.nn.functional.grouped_mm"
    item = x.element_size()
    if (weight.shape[1] * item) % 16 or (weight.shape[2] * item) % 16:
        return f"grouped_mm needs rows of a multiple of 16 bytes; got in={weight.shape[1]}, out={weight.shape[2]} in {x.dtype}"
    if x.is_cuda:
        if x.dtype != torch.bfloat16:
            return f"grouped_mm on CUDA takes bfloat16, not {x.dtype}"
        if torch.cuda.get_device_capability(x.device) < (9, 0):
            return "grouped_mm on CUDA needs compute capability 9.0 or newer"
    elif x.device.type != "cpu":
        return f"grouped_mm is not available on {x.device.type}"
    return None


def load_hub_kernel(repo_id, version, backend=None, trust_remote_code=False):
    """The grouped-GEMM kernel module, cached; raises if it cannot be loaded.

    `repo_id` is a Hub kernel repo (or one that LOCAL_KERNELS maps to a folder) or a local kernel folder.
    `backend` is None (the backend torch was built for) or "cpu" (the torch-cpu variant, on any torch build).
    `trust_remote_code` goes to `kernels` unchanged: only the user's own choice ever trusts a publisher."""
    trust_key = tuple(trust_remote_code) if isinstance(trust_remote_code, list) else trust_remote_code
    key = (repo_id, version, backend, trust_key, os.environ.get("LOCAL_KERNELS"))  # the mapping picks the kernel
    if key not in _LOADED_KERNELS:
        try:
            _LOADED_KERNELS[key] = _fetch_kernel(repo_id, version, backend, trust_remote_code)
        except Exception as error:  # remembered: every layer shape asks, and the Hub need not be asked again
            _LOADED_KERNELS[key] = error
    if isinstance(_LOADED_KERNELS[key], Exception):
        raise _LOADED_KERNELS[key]
    return _LOADED_KERNELS[key]


def _fetch_kernel(repo_id, version, backend, trust_remote_code):
    try:
        from kernels import get_kernel, get_local_kernel
    except ImportError as error:
        raise ImportError("the `kernels` package is not installed (pip install kernels)") from error
    if Path(repo_id).is_dir():
        return get_local_kernel(Path(repo_id), backend=backend)
    return get_kernel(repo_id, version=version, backend=backend, trust_remote_code=trust_remote_code)


def _untrusted(error):
    text = str(error)
    return "trusted publisher" in text or "publisher trust" in text


def _log_once(path, reason):
    if path not in _LOGGED_PATHS:
        _LOGGED_PATHS.add(path)
        logger.info(f"MoL grouped GEMM: using {path}{f' ({reason})' if reason else ''}.")


def _activate(out, activation):
    if activation is None:
        return out
    if activation != "gelu":
        raise ValueError(f"activation {activation!r} is not supported by the grouped GEMM: use None or 'gelu'.")
    return F.gelu(out)


def _fused(kernel_op):
    """The Hub kernel's op, marked as applying the activation itself (its GELU epilogue)."""

    def grouped_linear(x, weight, bias, offsets, activation=None):
        return kernel_op(x, weight, bias, offsets, activation=activation)

    grouped_linear.fuses_activation = True
    grouped_linear.__module__ = getattr(kernel_op, "__module__", __name__)
    return grouped_linear


class MoLGroupedGemm:
    """Chooses and calls a grouped-linear implementation. Not a module: it holds no weights, only the choice."""

    def __init__(self, backend="auto", kernel_repo=None, kernel_version=0, trust_remote_code=False):
        if backend not in BACKENDS:
            raise ValueError(f"grouped GEMM backend {backend!r} is unknown: use one of {list(BACKENDS)}.")
        self.backend = backend
        self.kernel_repo = kernel_repo
        self.kernel_version = kernel_version
        self.trust_remote_code = trust_remote_code
        self._choice = {}

    @classmethod
    def from_config(cls, config):
        """The dispatch a MoLConfig asks for (its grouped_gemm_* fields)."""
        return cls(
            config.grouped_gemm_backend,
            config.grouped_gemm_kernel,
            config.grouped_gemm_kernel_version,
            getattr(config, "grouped_gemm_kernel_trust_remote_code", False),
        )

    def __call__(self, x, weight, bias, offsets, activation=None):
        """act(x[rows of g] @ weight[g] + bias[g]); `activation` None or "gelu" (exact GELU). The Hub kernel applies
        it in its epilogue (no separate pass over the FFN's widest tensor); the torch paths apply F.gelu after."""
        if torch.compiler.is_compiling():
            supported = grouped_mm_unsupported_reason(x, weight) is None and self.backend in ("auto", "grouped_mm")
            if supported and (x.is_cuda or x.dtype == torch.bfloat16):
                return _activate(grouped_linear_grouped_mm(x, weight, bias, offsets), activation)
            return _activate(grouped_linear_masked(x, weight, bias, offsets), activation)
        key = (x.device.type, x.dtype, weight.shape[1], weight.shape[2])
        if key not in self._choice:
            self._choice[key] = self._choose(x, weight)
        implementation = self._choice[key]
        if getattr(implementation, "fuses_activation", False):
            return implementation(x, weight, bias, offsets, activation=activation)
        return _activate(implementation(x, weight, bias, offsets), activation)

    def _choose(self, x, weight):
        """The first implementation of BACKENDS (after "auto") that can run here, through the CHOOSERS table, or
        the forced backend; a forced backend that cannot run is an error naming why."""
        names = BACKENDS[1:] if self.backend == "auto" else (self.backend,)
        reason = None
        for name in names:
            implementation, reason = CHOOSERS[name](self, x, weight, reason)
            if implementation is not None:
                return implementation
            if self.backend != "auto":
                raise RuntimeError(f"grouped_gemm_backend={name!r} cannot run here: {reason}.")
        raise AssertionError(f"no grouped-GEMM implementation ran ({reason})")  # the loop always can

    def _choose_hub_kernel(self, x, weight, previous=None):
        kernel, reason = self._hub_kernel(x)
        if kernel is None:
            return None, f"the kernel cannot be used: {reason}"
        variant = f"torch-{getattr(kernel, 'BACKEND', x.device.type)}"
        _log_once(f"the Hub kernel {self.kernel_repo} v{self.kernel_version} ({variant} variant)", None)
        return _fused(kernel.grouped_linear), None

    def _choose_grouped_mm(self, x, weight, previous=None):
        reason = grouped_mm_unsupported_reason(x, weight)
        if reason is not None:
            return None, reason
        _log_once(f"torch grouped_mm on {x.device.type}", None)
        return grouped_linear_grouped_mm, None

    def _choose_loop(self, x, weight, previous=None):
        """Always runs; `previous` is why the implementation tried before it could not."""
        _log_once(f"the per-group loop on {x.device.type}", None if self.backend == "loop" else previous)
        return grouped_linear_loop, None

    def _hub_kernel(self, x):
        if not self.kernel_repo:
            return None, "no grouped_gemm_kernel is configured"
        if x.is_cuda:
            backend = None  # the CUDA variant
        elif self.backend == "hub_kernel":
            backend = "cpu"  # forced: the kernel's PyTorch reference variant, through the same loading path
        else:
            return None, f"the Hub kernel runs on CUDA tensors, these are on {x.device.type}"
        try:
            return load_hub_kernel(self.kernel_repo, self.kernel_version, backend, self.trust_remote_code), None
        except Exception as error:  # a missing package, no network, an untrusted repo: fall back, say why
            reason = str(error)
            if _untrusted(error):
                reason += (
                    f" MoL does not trust it for you: set grouped_gemm_kernel_trust_remote_code=True (or "
                    f"[{self.kernel_repo!r}]) in the config if you trust {self.kernel_repo}."
                )
            if self.backend == "auto":
                logger.warning_once(f"MoL: the grouped-GEMM kernel {self.kernel_repo} did not load ({reason}).")
            return None, reason


# Backend name -> how it is chosen (an implementation, or None and the reason it cannot run here; each is told why the
# one tried before it could not), as transformers
# keeps its attention and experts implementations in a registry. Every name of BACKENDS but "auto" has one.
CHOOSERS = {
    "hub_kernel": MoLGroupedGemm._choose_hub_kernel,
    "grouped_mm": MoLGroupedGemm._choose_grouped_mm,
    "loop": MoLGroupedGemm._choose_loop,
}
