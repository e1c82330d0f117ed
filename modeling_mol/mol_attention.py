"""Attention over packed, variable-length sentences: no compute on padding.

Inputs are packed token rows q, k, v of shape (tokens, heads, head_dim) and a `MoLPackedBatch` that says where
each sentence starts. Backends:
  - `eager`: the reference (re-pads, explicit softmax); what the tests compare against;
  - on CPU: one SDPA call per sentence (measured fastest on CPU, faster than padded or nested-tensor SDPA);
  - on CUDA: flash-attn's varlen kernel or xformers' memory-efficient attention when installed, else torch's
    varlen_attn (no dropout) or SDPA over nested jagged tensors.

Flat remote-code helper: copied beside modeling_mol.py into every exported checkpoint.
"""

import functools
import math

import torch
import torch.nn.functional as F
from transformers.utils import logging


logger = logging.get_logger(__name__)
_LOGGED = set()


def _log_once(name):
    if name not in _LOGGED:
        _LOGGED.add(name)
        logger.info(f"MoL attention: using {name}.")


def eager_attention(q, k, v, batch, dropout_p=0.0, training=False):
    """Reference attention: re-pad per sentence, mask the padding keys, softmax, weight the values."""
    num_sentences, width = len(batch.seq_lengths), batch.max_seqlen
    heads, head_dim = q.shape[1], q.shape[2]

    def pad(rows):
        padded = rows.new_zeros(num_sentences * width, heads, head_dim)
        padded[batch.pad_index] = rows
        return padded.view(num_sentences, width, heads, head_dim).transpose(1, 2)

    scores = pad(q) @ pad(k).transpose(-1, -2) / math.sqrt(head_dim)
    key_is_real = torch.zeros(num_sentences * width, dtype=torch.bool, device=q.device)
    key_is_real[batch.pad_index] = True
    scores = scores.masked_fill(~key_is_real.view(num_sentences, 1, 1, width), torch.finfo(scores.dtype).min)
    probs = F.dropout(scores.softmax(dim=-1), p=dropout_p, training=training)
    context = (probs @ pad(v)).transpose(1, 2).reshape(num_sentences * width, heads, head_dim)
    return context[batch.pad_index]


def sdpa_per_sentence(q, k, v, batch, dropout_p=0.0, training=False):
    """One SDPA call per sentence: no padding at all; the fastest CPU path."""
    p = dropout_p if training else 0.0
    outputs = []
    for qs, ks, vs in zip(*(t.split(batch.seq_lengths) for t in (q, k, v))):
        out = F.scaled_dot_product_attention(qs.transpose(0, 1), ks.transpose(0, 1), vs.transpose(0, 1), dropout_p=p)
        outputs.append(out.transpose(0, 1))
    return torch.cat(outputs)


def sdpa_nested(q, k, v, batch, dropout_p=0.0, training=False):
    """SDPA over nested jagged tensors: one fused call for the whole batch."""
    offsets = batch.cu_seqlens.long()

    def nest(t):
        return torch.nested.nested_tensor_from_jagged(t, offsets=offsets, max_seqlen=batch.max_seqlen).transpose(1, 2)

    out = F.scaled_dot_product_attention(nest(q), nest(k), nest(v), dropout_p=dropout_p if training else 0.0)
    return out.transpose(1, 2).values()


def torch_varlen(q, k, v, batch, dropout_p=0.0, training=False):
    from torch.nn.attention.varlen import varlen_attn

    cu = batch.cu_seqlens
    return varlen_attn(q, k, v, cu, cu, batch.max_seqlen, batch.max_seqlen)


def flash_attn_varlen(q, k, v, batch, dropout_p=0.0, training=False):
    try:
        from flash_attn import flash_attn_varlen_func
    except ImportError as error:
        raise ImportError("attn_implementation='flash_attention_2' needs the flash-attn package") from error
    cu = batch.cu_seqlens
    return flash_attn_varlen_func(q, k, v, cu, cu, batch.max_seqlen, batch.max_seqlen, dropout_p if training else 0.0)


def xformers_attention(q, k, v, batch, dropout_p=0.0, training=False):
    try:
        from xformers.ops import fmha
    except ImportError as error:
        raise ImportError("xformers is not installed") from error
    bias = fmha.attn_bias.BlockDiagonalMask.from_seqlens(batch.seq_lengths)
    out = fmha.memory_efficient_attention(
        q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), attn_bias=bias, p=dropout_p if training else 0.0
    )
    return out.squeeze(0)


def _installed(module):
    try:
        __import__(module)
        return True
    except Exception:  # a wheel built for another torch raises more than ImportError
        return False


@functools.lru_cache(maxsize=None)
def choose_attention(attn_implementation, device_type, dtype, needs_dropout):
    """The attention function for this implementation name, device type and dtype (chosen once, then cached)."""
    if attn_implementation == "eager":
        choice = eager_attention
    elif attn_implementation == "flash_attention_2":
        choice = flash_attn_varlen
    elif device_type != "cuda":
        choice = sdpa_per_sentence
    elif dtype in (torch.float16, torch.bfloat16) and _installed("flash_attn"):
        choice = flash_attn_varlen
    elif _installed("xformers.ops"):
        choice = xformers_attention
    elif dtype in (torch.float16, torch.bfloat16) and not needs_dropout and _installed("torch.nn.attention.varlen"):
        choice = torch_varlen
    else:
        choice = sdpa_nested
    _log_once(f"{choice.__name__} on {device_type}")
    return choice
