"""Attention over packed, variable-length sentences: no compute on padding.

Inputs are packed token rows q, k, v of shape (tokens, heads, head_dim) and a `MoLPackedBatch` that says where
each sentence starts. Backends:
  - `eager`: the reference (re-pads, explicit softmax); what the tests compare against, and the one backend that
    forms the attention probabilities (`output_attentions=True`);
  - on CPU: one SDPA call per sentence (measured fastest on CPU, faster than padded or nested-tensor SDPA);
  - on CUDA: flash-attn's varlen kernel or xformers' memory-efficient attention when installed, else torch's
    varlen_attn (no dropout) or SDPA over nested jagged tensors;
  - under torch.compile / torch.export: only tensor operations whose shapes do not depend on a host list of
    sentence lengths (padded SDPA, or torch's varlen kernel on CUDA), so a compiled block never re-specialises on
    the lengths of a batch.

Flat remote-code helper: copied beside modeling_mol.py into every exported checkpoint.
"""

import functools
import math

import torch
import torch.nn.functional as F
from transformers.utils import logging


try:  # torch's own variable-length kernel (CUDA only), present in recent torch builds
    from torch.nn.attention.varlen import varlen_attn
except ImportError:
    varlen_attn = None

logger = logging.get_logger(__name__)
_LOGGED = set()


def _log_once(name):
    if name not in _LOGGED:
        _LOGGED.add(name)
        logger.info(f"MoL attention: using {name}.")


def pad_rows(rows, batch):
    """(tokens, heads, head_dim) packed rows -> (sentences, heads, max_seqlen, head_dim), zeros at padding."""
    num_sentences, width = batch.num_sentences, batch.max_seqlen
    padded = rows.new_zeros(num_sentences * width, *rows.shape[1:])
    padded = padded.index_copy(0, batch.pad_index, rows)
    return padded.view(num_sentences, width, *rows.shape[1:]).transpose(1, 2)


def key_padding_bias(batch, dtype):
    """(sentences, 1, 1, max_seqlen) additive mask: 0 at real keys, the dtype's minimum at padding (never -inf, so a
    sentence whose keys are all padding gives finite values that the model then zeroes)."""
    real = batch.key_mask()
    bias = torch.zeros(real.shape, dtype=dtype, device=real.device).masked_fill(~real, torch.finfo(dtype).min)
    return bias[:, None, None, :]


def eager_attention(q, k, v, batch, dropout_p=0.0, training=False, output_attentions=False):
    """Reference attention: re-pad per sentence, mask the padding keys, softmax, weight the values.

    With `output_attentions` it returns `(context, probabilities)`, the probabilities (sentences, heads, max_seqlen,
    max_seqlen) in packed sentence order."""
    head_dim = q.shape[2]
    scores = pad_rows(q, batch) @ pad_rows(k, batch).transpose(-1, -2) / math.sqrt(head_dim)
    probs = (scores + key_padding_bias(batch, scores.dtype)).softmax(dim=-1)
    probs = probs * batch.key_mask()[:, None, None, :]  # exact zeros at padding keys
    dropped = F.dropout(probs, p=dropout_p, training=training)
    context = (dropped @ pad_rows(v, batch)).transpose(1, 2).flatten(0, 1)[batch.pad_index]
    return (context, probs) if output_attentions else context


def sdpa_padded(q, k, v, batch, dropout_p=0.0, training=False):
    """One SDPA call over the re-padded sentences with a key-padding mask: shapes depend only on tensor sizes and
    `max_seqlen`, never on a host list of lengths, which is what torch.compile and torch.export need."""
    mask = key_padding_bias(batch, q.dtype)
    out = F.scaled_dot_product_attention(
        pad_rows(q, batch), pad_rows(k, batch), pad_rows(v, batch), attn_mask=mask,
        dropout_p=dropout_p if training else 0.0,
    )
    return out.transpose(1, 2).flatten(0, 1)[batch.pad_index]


def sdpa_per_sentence(q, k, v, batch, dropout_p=0.0, training=False):
    """One SDPA call per sentence: no padding at all; the fastest CPU path."""
    p = dropout_p if training else 0.0
    if not batch.seq_lengths:
        return q.new_zeros(q.shape)
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
    elif dtype in (torch.float16, torch.bfloat16) and not needs_dropout and varlen_attn is not None:
        choice = torch_varlen
    else:
        choice = sdpa_nested
    _log_once(f"{choice.__name__} on {device_type}")
    return choice


def compilable_attention(attn_implementation, device_type, dtype, needs_dropout):
    """The attention function inside torch.compile / torch.export: no host list of lengths, no import checks."""
    if attn_implementation == "eager":
        return eager_attention
    if attn_implementation == "flash_attention_2":
        return flash_attn_varlen
    half = dtype in (torch.float16, torch.bfloat16)
    if device_type == "cuda" and half and not needs_dropout and varlen_attn is not None:
        return torch_varlen
    return sdpa_padded
