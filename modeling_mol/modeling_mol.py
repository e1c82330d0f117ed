"""PyTorch MoL (Mixture of Languages): an XLM-R encoder whose group-specific blocks hold one weight copy per
language group; every token of a sentence goes through the copy of the sentence's language group.

Data path (one pass, no compute on padding): embed, unpad once into packed token rows ordered by group (a
collator that already sorts sentences by group makes that free), run every group Linear as one grouped GEMM over
contiguous row ranges and attention over variable-length sentences, restore the batch's order and padding at the
end. A shared block is the one-group case of the same block class.

This file holds the network and its heads, in transformers' order. Its siblings hold the rest: `mol_packing.py`
(packed rows and group offsets), `mol_routing.py` (the MoE gate and the language identifier), `mol_hub.py` (the
bundle's card, remote-code files, sentence-transformers files and the XLM-R conversion), `mol_attention.py`,
`mol_grouped_gemm.py` and `configuration_mol.py`. All are copied flat into every exported checkpoint as remote
code: they import each other only as `from .name import X`.
"""

import inspect
import os
import shutil
from collections.abc import Mapping, Set
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers import initialization as init
from transformers.activations import ACT2FN, gelu
from transformers.loss.loss_utils import fixed_cross_entropy
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutputWithPooling,
    MaskedLMOutput,
    MultipleChoiceModelOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)
from transformers.utils import logging

from .mol_attention import choose_attention, compilable_attention, eager_attention, key_padding_bias, pad_rows
from .mol_grouped_gemm import MoLGroupedGemm
from .mol_hub import (
    _MODEL_CARD,
    _PIPELINE_TAGS,
    convert_xlm_roberta_state_dict,
    position_limit,
    remote_code_files,
    write_sentence_transformers_config,
)
from .mol_packing import MoLPackedBatch
from .mol_routing import MoLLanguageIdentification, MoLLanguageIdentifier, MoLRouter


try:  # in an exported checkpoint the configuration is a sibling file
    from .configuration_mol import AUTO_LANGUAGE, MOL_AUTO_MAP, MoLConfig
except ImportError:  # in this project it is the `configuration_mol` package beside `modeling_mol`
    from configuration_mol.configuration_mol import AUTO_LANGUAGE, MOL_AUTO_MAP, MoLConfig


logger = logging.get_logger(__name__)


class MoLEmbeddings(nn.Module):
    """XLM-R's embeddings, applied to packed tokens only."""

    def __init__(self, config):
        super().__init__()
        self.padding_idx = config.pad_token_id
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(
            config.max_position_embeddings, config.hidden_size, padding_idx=config.pad_token_id
        )
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def position_ids(self, input_ids=None, inputs_embeds=None):
        """XLM-R's scheme: real tokens count from padding_idx + 1, padding tokens keep padding_idx."""
        if input_ids is not None:
            real = input_ids.ne(self.padding_idx).int()
            return (torch.cumsum(real, dim=1) * real).long() + self.padding_idx
        batch_size, seq_len = inputs_embeds.shape[:2]
        positions = torch.arange(self.padding_idx + 1, seq_len + self.padding_idx + 1, device=inputs_embeds.device)
        return positions.expand(batch_size, seq_len)

    def forward(self, packed_ids, packed_positions, packed_token_types, packed_embeds=None):
        embeddings = packed_embeds if packed_embeds is not None else self.word_embeddings(packed_ids)
        embeddings = embeddings + self.token_type_embeddings(packed_token_types)
        embeddings = embeddings + self.position_embeddings(packed_positions)
        return self.dropout(self.LayerNorm(embeddings))


class _CastCopy(torch.autograd.Function):
    """A cached low-precision copy standing in for `parameter` (all its groups, or those of `index`): the forward
    returns the copy, the backward gives the parameter the gradient in its own dtype (zeros for the other groups)."""

    @staticmethod
    def forward(ctx, parameter, copy, index):
        ctx.shape, ctx.dtype, ctx.index = parameter.shape, parameter.dtype, index
        return copy.view_as(copy)

    @staticmethod
    def backward(ctx, grad):
        if ctx.index is None:
            return grad.to(ctx.dtype), None, None
        return grad.new_zeros(ctx.shape, dtype=ctx.dtype).index_add_(0, ctx.index, grad.to(ctx.dtype)), None, None


class MoLGroupedLinear(nn.Module):
    """A Linear with one (in, out) weight and (out,) bias per group: weight (groups, in, out), bias (groups, out).

    Under autocast it computes in the autocast dtype (grouped_mm and the Hub kernel take one dtype for all operands).
    Each group's copy is cast when a batch first uses it and kept until the weights change (an optimizer step): the
    micro-batches of a step, evaluation batches and checkpointed recomputations reuse it, and a batch of a few groups
    never casts the others."""

    def __init__(self, config, in_features, out_features, num_groups, grouped_gemm):
        super().__init__()
        self.in_features, self.out_features, self.num_groups = in_features, out_features, num_groups
        self.weight = nn.Parameter(torch.empty(num_groups, in_features, out_features))
        self.bias = nn.Parameter(torch.zeros(num_groups, out_features))
        self.grouped_gemm = grouped_gemm
        self._cast_cache = None

    def forward(self, rows, groups, activation=None):
        """`activation`: None or "gelu", applied in the grouped GEMM's epilogue where the backend has one."""
        return self.compute(*self.operands(rows, groups), activation=activation)

    def operands(self, rows, groups):
        """(rows, weight, bias, offsets) as the GEMM takes them: in the autocast dtype under autocast, the copies
        of the groups with rows only."""
        weight, bias, offsets = self.weight, self.bias, groups.offsets
        device_type = rows.device.type
        if torch.is_autocast_enabled(device_type):
            dtype = torch.get_autocast_dtype(device_type)
            rows = rows.to(dtype)
            if weight.dtype != dtype and not torch.compiler.is_compiling():
                weight, bias, offsets = self._cast_once(dtype, groups)
            else:
                if self.num_groups > 1 and groups.present_groups is not None:
                    weight, bias = weight.index_select(0, groups.present_groups), bias.index_select(0, groups.present_groups)
                    offsets = groups.present_offsets
                weight, bias = weight.to(dtype), bias.to(dtype)
        return rows, weight, bias, offsets

    def compute(self, rows, weight, bias, offsets, activation=None):
        """act(rows @ weight[g] + bias[g]) per group: one GEMM for a shared block, the grouped GEMM otherwise."""
        if self.num_groups == 1:
            out = torch.addmm(bias[0], rows, weight[0])
            return F.gelu(out) if activation == "gelu" else out
        return self.grouped_gemm(rows, weight, bias, offsets, activation=activation)

    def _cast_once(self, dtype, groups):
        """(weight, bias, offsets) in `dtype` for the groups with rows: copies cast at most once per weight version.
        The cache is never changed in place once handed out (a live graph may hold it): new groups make a new one."""
        ids = (0,) if self.num_groups == 1 else groups.present_ids
        everything = ids is None or len(ids) == self.num_groups  # a MoE's experts are not known on the host
        ids = tuple(range(self.num_groups)) if ids is None else ids
        key = (self.weight._version, self.bias._version, self.weight.data_ptr(), self.weight.device, dtype)
        cache = self._cast_cache
        if cache is None or cache["key"] != key:
            cache = self._cast_cache = {"key": key, "cast": frozenset(),
                                        "weight": self.weight.new_empty(self.weight.shape, dtype=dtype),
                                        "bias": self.bias.new_empty(self.bias.shape, dtype=dtype)}
        missing = [g for g in ids if g not in cache["cast"]]
        if missing:
            index = torch.tensor(missing, dtype=torch.long, device=self.weight.device)
            with torch.no_grad():
                cache["weight"] = cache["weight"].index_copy(0, index, self.weight.index_select(0, index).to(dtype))
                cache["bias"] = cache["bias"].index_copy(0, index, self.bias.index_select(0, index).to(dtype))
            cache["cast"] = cache["cast"] | set(missing)
        if everything:
            weight, bias, index, offsets = cache["weight"], cache["bias"], None, groups.offsets
        else:
            index, offsets = groups.present_groups, groups.present_offsets
            weight, bias = cache["weight"].index_select(0, index), cache["bias"].index_select(0, index)
        return _CastCopy.apply(self.weight, weight, index), _CastCopy.apply(self.bias, bias, index), offsets

    def extra_repr(self):
        return f"groups={self.num_groups}, in_features={self.in_features}, out_features={self.out_features}"


class MoLGroupedLayerNorm(nn.Module):
    """A LayerNorm with one affine (weight, bias) per group: (groups, dim) each."""

    def __init__(self, config, dim, num_groups):
        super().__init__()
        self.num_groups, self.eps = num_groups, config.layer_norm_eps
        self.weight = nn.Parameter(torch.ones(num_groups, dim))
        self.bias = nn.Parameter(torch.zeros(num_groups, dim))

    def forward(self, rows, groups):
        dim = rows.shape[-1:]
        if self.num_groups == 1:
            return F.layer_norm(rows, dim, self.weight[0], self.bias[0], self.eps)
        normed = F.layer_norm(rows, dim, eps=self.eps)
        return torch.addcmul(self.bias[groups.row_group], normed, self.weight[groups.row_group])


# MoL's own attention over packed sentences, under transformers' implementation names. Any other name registered in
# transformers' `AttentionInterface` (flex_attention, a user's function) runs on the re-padded sentences with
# the mask transformers builds for it (`mol_padded_attention`).
MOL_PACKED_ATTENTION = ("eager", "sdpa", "flash_attention_2")


def mol_padded_attention(module, attention_function, q, k, v, batch, dropout_p):
    """Call a transformers attention function (module, query, key, value, attention_mask, ...) on the batch's
    sentences re-padded to (sentences, heads, max_seqlen, head_dim); returns packed rows and its weights."""
    query, key, value = (pad_rows(t, batch) for t in (q, k, v))
    placeholder = query.new_empty(batch.num_sentences, batch.max_seqlen, 0)
    mask = create_bidirectional_mask(config=module.config, inputs_embeds=placeholder, attention_mask=batch.key_mask())
    if mask is None:
        # transformers builds no mask for a function registered without a mask function (AttentionMaskInterface);
        # the re-padded sentences still need one: the additive key-padding mask, which eager- and SDPA-style
        # functions both take.
        mask = key_padding_bias(batch, query.dtype)
    context, weights = attention_function(
        module, query, key, value, mask, dropout=dropout_p, scaling=module.head_dim**-0.5, is_causal=False
    )
    return context.flatten(0, 1)[batch.pad_index], weights


class MoLAttention(nn.Module):
    """XLM-R self-attention (post-LN) over packed variable-length sentences."""

    def __init__(self, config, num_groups, grouped_gemm):
        super().__init__()
        hidden = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = hidden // config.num_attention_heads
        self.num_key_value_groups = 1  # read by transformers' attention functions
        self.is_causal = False
        self.query = MoLGroupedLinear(config, hidden, hidden, num_groups, grouped_gemm)
        self.key = MoLGroupedLinear(config, hidden, hidden, num_groups, grouped_gemm)
        self.value = MoLGroupedLinear(config, hidden, hidden, num_groups, grouped_gemm)
        self.output = MoLGroupedLinear(config, hidden, hidden, num_groups, grouped_gemm)
        self.LayerNorm = MoLGroupedLayerNorm(config, hidden, num_groups)
        self.dropout_prob = config.attention_probs_dropout_prob
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.config = config

    def forward(self, rows, batch, groups, output_attentions=False):
        """`rows` in the order of `groups` (the batch's, or a routed block's expert order); attention itself always
        runs over the batch's sentences."""
        qkv = self.project_qkv(rows, groups)
        if groups.order is not None:  # expert order -> the batch's sentence order, one gather for Q, K and V
            qkv = qkv[groups.restore]
        q, k, v = (t.reshape(-1, self.num_heads, self.head_dim) for t in qkv.chunk(3, dim=-1))
        context, weights = self.attend(q, k, v, batch, output_attentions)
        context = context.reshape(rows.shape)
        if groups.order is not None:
            context = context[groups.order]
        attended = self.LayerNorm(self.dropout(self.output(context, groups)) + rows, groups)
        return attended, weights

    def project_qkv(self, rows, groups):
        """(rows, 3 * hidden): Q, K and V from one GEMM over their weights side by side, (groups, hidden, 3 * hidden);
        the checkpoint keeps the three weights apart (XLM-R's layout). Projections that are not plain group Linears
        (a wrapper's own forward) run one by one."""
        projections = (self.query, self.key, self.value)
        if not all(type(projection) is MoLGroupedLinear for projection in projections):
            return torch.cat([projection(rows, groups) for projection in projections], dim=-1)
        rows, weight, bias, offsets = self.query.operands(rows, groups)
        parts = [(weight, bias)] + [projection.operands(rows, groups)[1:3] for projection in projections[1:]]
        weight = torch.cat([w for w, _ in parts], dim=-1)
        bias = torch.cat([b for _, b in parts], dim=-1)
        return self.query.compute(rows, weight, bias, offsets)

    def attend(self, q, k, v, batch, output_attentions):
        name = self.config._attn_implementation or "sdpa"
        dropout = self.dropout_prob if self.training else 0.0
        if name not in MOL_PACKED_ATTENTION:
            attention_function = ALL_ATTENTION_FUNCTIONS.get_interface(name, None)
            context, weights = mol_padded_attention(self, attention_function, q, k, v, batch, dropout)
            if output_attentions and weights is None:
                raise ValueError(f"output_attentions=True: attn_implementation={name!r} does not return attention weights.")
            return context, weights if output_attentions else None
        if output_attentions:
            if name != "eager":
                raise ValueError(
                    f"output_attentions=True needs attn_implementation='eager' (this model uses {name!r}, whose kernels "
                    "never form the attention probabilities): call model.set_attn_implementation('eager')."
                )
            return eager_attention(q, k, v, batch, dropout, self.training, output_attentions=True)
        if torch.compiler.is_compiling() or batch.seq_lengths is None:
            attend = compilable_attention(name, q.device.type, q.dtype, dropout > 0)
        else:
            attend = choose_attention(name, q.device.type, q.dtype, dropout > 0)
        return attend(q, k, v, batch, dropout_p=dropout, training=self.training), None


class MoLLayer(GradientCheckpointingLayer):
    """The one block class: shared (one group), group-specific (every Linear and LayerNorm per language group), or
    routed (the same per expert, with a learned router; the MoE baselines)."""

    def __init__(self, config, layer_idx, grouped_gemm):
        super().__init__()
        self.layer_idx = layer_idx
        self.is_group_block = layer_idx in config.group_layers
        num_groups = config.num_groups if self.is_group_block else 1
        self.attention = MoLAttention(config, num_groups, grouped_gemm)
        self.intermediate = MoLGroupedLinear(config, config.hidden_size, config.intermediate_size, num_groups, grouped_gemm)
        self.activation = ACT2FN[config.hidden_act]
        # Exact GELU (BERT's and XLM-R's "gelu") runs in the grouped GEMM's epilogue; any other activation after it.
        self.fused_activation = "gelu" if config.hidden_act == "gelu" else None
        self.output = MoLGroupedLinear(config, config.intermediate_size, config.hidden_size, num_groups, grouped_gemm)
        self.LayerNorm = MoLGroupedLayerNorm(config, config.hidden_size, num_groups)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.router = MoLRouter(config) if self.is_group_block and config.is_moe else None
        # Group-parallel training keeps only some groups' copies on a rank (mol_toolkit's group_parallel); None: all.
        self.held_groups = None

    def forward(self, rows, batch, output_attentions=False):
        """(rows, attention weights, router logits per row in the batch's order, load-balancing loss): the last two
        None except in a routed block. Tensors only, so that reentrant gradient checkpointing keeps their graphs."""
        if self.router is None:
            groups = batch.row_groups()
            if self.held_groups is not None:
                groups = groups.localised(self.held_groups)
            attended, weights = self.attention(rows, batch, groups, output_attentions)
            return self.feed_forward(attended, groups), weights, None, None
        groups, logits, aux_loss, chosen = self.router(rows, batch)
        attended, weights = self.attention(rows[groups.order], batch, groups, output_attentions)
        # The expert's output is multiplied by p / p.detach() (p: the chosen expert's gate probability): the value
        # is exactly the expert block's output, and the gate gets the gradient of the Switch Transformer's p *
        # output (divided by p). A plain p * output would shrink each post-LN block's normalised output by up to
        # num_experts times, compounding over the routed blocks, and a MoE started from XLM-R (all experts equal)
        # would no longer compute what XLM-R computes.
        scale = (chosen / chosen.detach()).to(attended.dtype)
        out = self.feed_forward(attended, groups)[groups.restore] * scale[:, None]
        return out, weights, logits, aux_loss

    def feed_forward(self, attended, groups):
        if self.fused_activation is not None:
            expanded = self.intermediate(attended, groups, activation=self.fused_activation)
        else:
            expanded = self.activation(self.intermediate(attended, groups))
        return self.LayerNorm(self.dropout(self.output(expanded, groups)) + attended, groups)


class MoLEncoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.grouped_gemm = MoLGroupedGemm.from_config(config)
        self.layer = nn.ModuleList([MoLLayer(config, i, self.grouped_gemm) for i in range(config.num_hidden_layers)])

    def forward(self, rows, batch, output_hidden_states=False, output_attentions=False):
        all_rows = (rows,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        router_logits, aux_losses = (), ()
        for layer in self.layer:
            if rows.shape[0] > 0:  # a batch of padding only has no rows: its outputs are zeros
                rows, weights, logits, aux_loss = layer(rows, batch, output_attentions)
                if logits is not None:
                    router_logits, aux_losses = router_logits + (logits,), aux_losses + (aux_loss,)
            else:
                weights = rows.new_zeros(0, layer.attention.num_heads, 0, 0) if output_attentions else None
            if output_hidden_states:
                all_rows += (rows,)
            if output_attentions:
                all_attentions += (weights,)
        return rows, all_rows, all_attentions, router_logits, aux_losses


class MoLPooler(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden_states):
        return self.activation(self.dense(hidden_states[:, 0]))


class MoLPreTrainedModel(PreTrainedModel):
    config_class = MoLConfig
    base_model_prefix = "mol"
    supports_gradient_checkpointing = True
    _no_split_modules = ["MoLLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True  # functions registered in transformers' AttentionInterface run re-padded
    # Trainer passes `num_items_in_batch` only to heads that divide their summed token loss by it (MLM, token
    # classification); the others return a mean that Trainer itself divides by the accumulation steps.
    accepts_loss_kwargs = False

    @torch.no_grad()
    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, MoLGroupedLinear)):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.padding_idx is not None and not getattr(module.weight, "_is_hf_initialized", False):
                init.zeros_(module.weight[module.padding_idx])
        elif isinstance(module, (nn.LayerNorm, MoLGroupedLayerNorm)):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, MoLLMHead):
            init.zeros_(module.bias)

    # ---- routing -------------------------------------------------------------------------------------------------
    _UNCHANGED = object()

    def set_default_language(self, code, fallback=_UNCHANGED):
        """Language used when a forward pass names none (pipelines pass no language); `"auto"` identifies each
        text's language. `fallback` (a code, "error", or None for the default language) is where a text goes whose
        identified language the model lacks or whose confidence is under the threshold."""
        if code == AUTO_LANGUAGE:
            self._check_identifier()
        elif code is not None:
            self._language_index(code)
        if fallback is not self._UNCHANGED:
            if fallback not in (None, "error"):
                self._language_index(fallback)
            self.config.language_identifier_fallback = fallback
        self.config.default_language = code

    def _check_identifier(self):
        if getattr(self.base_model, "language_identifier", None) is None:
            raise ValueError("Language 'auto' needs a language identifier, and this model has none: fit one with "
                             "`python train_mlm.py fit-language-id --model ...`, or name each text's language.")

    def add_language_identifier(self, labels, weight, bias, ignored_ids, threshold=0.5, fitted_on=None):
        """Install a fitted identifier (replacing any): `weight` (labels, hidden) and `bias` (labels,) of a linear
        model over mean-pooled input embeddings; recorded in the config, saved with the weights."""
        config = self.config
        config.language_identifier = "input-embedding-linear"
        config.language_identifier_labels = list(labels)
        config.language_identifier_ignored_ids = sorted(int(i) for i in ignored_ids)
        config.language_identifier_threshold = float(threshold)
        config.language_identifier_fitted_on = fitted_on
        config._validate_language_identifier(set(config.languages))
        base = self.base_model
        device = base.embeddings.word_embeddings.weight.device
        base.language_identifier = MoLLanguageIdentifier(config).to(device)
        base.language_identifier.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
        base.language_identifier.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))

    @torch.no_grad()
    def identify_languages(self, input_ids, attention_mask=None):
        """Each text's language by the checkpoint's identifier: a `MoLLanguageIdentification` (predicted codes,
        confidences, the language each text is routed by, and which fell back). Raises, naming the texts, when the
        fallback is "error" and a text is unknown to the model or under the threshold."""
        self._check_identifier()
        base, config = self.base_model, self.config
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        device = input_ids.device
        ignored = torch.tensor(config.language_identifier_ignored_ids, dtype=input_ids.dtype, device=device)
        logits = base.language_identifier(base.embeddings.word_embeddings, input_ids, attention_mask, ignored)
        confidences, labels = logits.softmax(-1).max(-1)
        known = config.languages
        to_language = torch.tensor([known.index(c) if c in known else -1 for c in config.language_identifier_labels],
                                   dtype=torch.long, device=device)
        routed = to_language[labels]
        # A text with no real token (empty, only special or padding tokens) has nothing to identify: its "prediction"
        # is the identifier's bias alone, so it always goes to the fallback, whatever its confidence.
        empty = (attention_mask.bool() & ~torch.isin(input_ids, ignored)).sum(-1) == 0
        confidences = torch.where(empty, torch.zeros_like(confidences), confidences)
        fell_back = (routed < 0) | (confidences < config.language_identifier_threshold) | empty
        fallback = config.identifier_fallback()
        codes = [config.language_identifier_labels[i] for i in labels.tolist()]
        if fallback == "error":
            if bool(fell_back.any()):
                raise ValueError(self._unidentified_message(codes, confidences, fell_back))
        else:
            routed = torch.where(fell_back, torch.full_like(routed, known.index(fallback)), routed)
        return MoLLanguageIdentification(codes, confidences, routed, [known[i] for i in routed.tolist()], fell_back)

    def _unidentified_message(self, codes, confidences, fell_back):
        config, problems = self.config, []
        for index in fell_back.nonzero().flatten().tolist()[:5]:
            code, confidence = codes[index], float(confidences[index])
            if confidence == 0.0:
                problems.append(f"text {index} has no real token (empty, or only special and padding tokens): there "
                                "is nothing to identify")
            elif code not in config.languages:
                problems.append(f"text {index} was identified as {code!r} (confidence {confidence:.2f}), which this "
                                "model does not know")
            else:
                problems.append(f"text {index} was identified as {code!r} with confidence {confidence:.2f}, under the "
                                f"threshold {config.language_identifier_threshold}")
        more = int(fell_back.sum()) - len(problems)
        return ("; ".join(problems) + (f"; and {more} more" if more > 0 else "") +
                f". This model's languages are {config.languages}: name the texts' languages, or set a fallback "
                "(model.set_default_language('auto', fallback=code)).")

    def _language_index(self, code):
        try:
            return self.config.languages.index(code)
        except ValueError:
            raise ValueError(f"Unknown language {code!r}: this model knows {self.config.languages}.") from None

    def _routes_by_language(self):
        config = self.config
        return not config.is_moe and bool(config.group_layers) and config.num_groups > 1

    def set_random_routing(self, seed=None):
        """MoE only: route to uniformly random experts (drawn from a generator seeded with `seed`) instead of the
        learned gate's top-1, the paper's Appendix A comparison; `None` restores the learned routing."""
        if not self.config.is_moe:
            raise ValueError(f"set_random_routing needs a learned-routing model (routing 'token' or 'sentence'); "
                             f"this one has routing={self.config.routing!r}.")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"seed must be an integer or None, got {seed!r}.")
        generator = None if seed is None else torch.Generator().manual_seed(seed)  # one stream, drawn block by block
        for module in self.modules():
            if isinstance(module, MoLRouter):
                module.random_generator = generator

    def _identified(self, input_ids, attention_mask, rows=None):
        """Identified language indices of the batch (or of `rows` of it)."""
        if input_ids is None:
            raise ValueError("Language 'auto' identifies texts from their input_ids; with inputs_embeds, name the "
                             "languages (`languages=[...]` or `lang_ids=...`).")
        if rows is not None:
            input_ids, attention_mask = input_ids[rows], attention_mask[rows]
        return self.identify_languages(input_ids, attention_mask).lang_ids

    def _sentence_languages(self, languages, lang_ids, batch_size, device, input_ids=None, attention_mask=None):
        """The language index of every sentence, (batch,), or None for a model that needs none; "auto" (for the
        batch, for some sentences, or as the default language) identifies them. Indices the caller passed as a
        tensor are range-checked later, in the forward pass's one host synchronisation."""
        config = self.config
        if languages is not None and lang_ids is not None:
            raise ValueError("Pass either `languages` (codes) or `lang_ids` (indices into config.languages), not both.")
        if languages is not None:
            if isinstance(languages, str):
                languages = [languages] * batch_size
            if isinstance(languages, (Set, Mapping)):  # no order: a text could take another text's code
                raise ValueError(
                    f"`languages` must be one code or a list with one code per sentence, in the batch's order; got "
                    f"{type(languages).__name__} {languages!r}."
                )
            languages = list(languages)
            if len(languages) != batch_size:
                raise ValueError(
                    f"`languages` has {len(languages)} codes but the batch has {batch_size} sentences: "
                    "give one code per sentence, or a single code for the whole batch."
                )
            auto = [i for i, code in enumerate(languages) if code == AUTO_LANGUAGE]
            index = torch.tensor([0 if code == AUTO_LANGUAGE else self._language_index(code) for code in languages],
                                 dtype=torch.long, device=device)
            if auto:
                index[auto] = self._identified(input_ids, attention_mask, auto if len(auto) < batch_size else None)
            return index
        if lang_ids is not None:
            if isinstance(lang_ids, (list, tuple)) and any(isinstance(i, bool) or not isinstance(i, int) for i in lang_ids):
                raise ValueError(f"`lang_ids` must hold integer indices into config.languages, got {lang_ids!r}.")
            lang_ids = torch.as_tensor(lang_ids, device=device)
            if lang_ids.dtype == torch.bool or lang_ids.is_floating_point() or lang_ids.is_complex():
                raise ValueError(f"`lang_ids` must hold integer indices into config.languages, got dtype {lang_ids.dtype}.")
            lang_ids = lang_ids.long().expand(batch_size) if lang_ids.dim() == 0 else lang_ids.long()
            if lang_ids.shape != (batch_size,):
                raise ValueError(
                    f"`lang_ids` has shape {tuple(lang_ids.shape)} but the batch has {batch_size} sentences: "
                    f"pass a LongTensor of shape ({batch_size},)."
                )
            if not config.languages:
                raise ValueError("`lang_ids` were given but this model has no languages (config.languages is empty).")
            return lang_ids
        if config.default_language == AUTO_LANGUAGE:
            return self._identified(input_ids, attention_mask)
        if config.default_language is not None:
            return torch.full((batch_size,), self._language_index(config.default_language), device=device)
        if self._routes_by_language():
            raise ValueError(
                "This MoL model routes every sentence by its language, and none was given: pass `languages=[...]` "
                "(codes from config.languages) or `lang_ids=...`, or call `model.set_default_language(code)`."
            )
        return None

    def _sentence_groups(self, language_index, batch_size, device):
        if language_index is None:
            return torch.zeros(batch_size, dtype=torch.long, device=device)
        table = torch.tensor(self.config.language_to_group(), dtype=torch.long, device=device)
        # Clamped so that a bad index fails in the range check with a clear message, not in this lookup.
        return table[language_index.clamp(0, len(table) - 1)]

    def _router_logits(self, encoding, output_router_logits):
        """The padded router logits when asked for (argument, else config.output_router_logits) and the model routes
        by learning, else None."""
        wanted = self.config.output_router_logits if output_router_logits is None else output_router_logits
        return encoding.padded_router_logits() if wanted and self.config.is_moe else None

    def _output_flags(self, output_hidden_states, output_attentions, return_dict):
        """Explicit arguments win over the config's values, in both directions."""
        config = self.config
        return (
            config.output_hidden_states if output_hidden_states is None else output_hidden_states,
            config.output_attentions if output_attentions is None else output_attentions,
            config.return_dict if return_dict is None else return_dict,
        )

    # ---- Hub-native checkpoints ------------------------------------------------------------------------------------
    def save_pretrained(self, save_directory, *args, tokenizer=None, license="apache-2.0", **kwargs):
        """Save as a flat remote-code bundle: config.json with the full auto_map, safetensors weights, the model's
        own source files, the tokenizer when one is given, and a model card (README.md) when the folder has none.
        `license` is the weights' licence in the card's metadata (the code is the project's Apache-2.0)."""
        self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **MOL_AUTO_MAP}
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            if not os.path.exists(os.path.join(save_directory, "README.md")):
                self.model_card(license).save(os.path.join(save_directory, "README.md"))
            for source in remote_code_files():
                target = os.path.join(save_directory, os.path.basename(source))
                if not os.path.exists(target) or not os.path.samefile(source, target):
                    shutil.copyfile(source, target)
            if tokenizer is not None:
                limit = position_limit(self.config)
                if not tokenizer.model_max_length or tokenizer.model_max_length > limit:
                    # What the position table allows: `truncation=True` then never gives the model too long an input.
                    tokenizer.model_max_length = limit
                tokenizer.save_pretrained(save_directory)
            write_sentence_transformers_config(save_directory, self.config)

    def push_to_hub(self, repo_id, *args, tokenizer=None, license="apache-2.0", **kwargs):
        """Upload the bundle of `save_pretrained` (and the tokenizer when one is given) to the Hub repo `repo_id`.
        A repo without a README first gets MoL's card: transformers keeps a card it finds and adds its tags."""
        from huggingface_hub import HfApi

        api = HfApi(token=kwargs.get("token"))
        repo_id = api.create_repo(repo_id, private=kwargs.get("private"), exist_ok=True).repo_id
        if not api.file_exists(repo_id, "README.md", revision=kwargs.get("revision")):
            self.model_card(license).push_to_hub(repo_id, token=kwargs.get("token"), revision=kwargs.get("revision"),
                                                 commit_message="Add the MoL model card")
        url = super().push_to_hub(repo_id, *args, **kwargs)
        if tokenizer is not None:
            tokenizer.push_to_hub(repo_id, token=kwargs.get("token"), revision=kwargs.get("revision"))
        return url

    def model_card(self, license="apache-2.0"):
        """huggingface_hub's ModelCard for this model: the Hub metadata (license, ISO 639-3 languages, library,
        pipeline, tags, base_model for a converted model) and how to load and route it."""
        from huggingface_hub import ModelCard, ModelCardData

        config = self.config
        data = ModelCardData(
            license=license,
            language=sorted({code.split("_")[0] for code in config.languages}) or None,
            library_name="transformers",
            pipeline_tag=_PIPELINE_TAGS.get(type(self).__name__),
            tags=["mol", "mixture-of-languages", "multilingual", "custom_code",
                  *(["moe", "mixture-of-experts"] if config.is_moe else [])],
            base_model=config.converted_from,
        )
        return ModelCard.from_template(
            data, template_str=_MODEL_CARD, model_class=type(self).__name__, groups=config.language_groups,
            layers=config.group_layers, layout=config.group_layout, base_model=config.converted_from,
            first_language=config.languages[0] if config.languages else "eng_Latn", license=license,
            routing=config.routing, num_experts=config.num_experts,
        )

    # ---- warm start from XLM-R -----------------------------------------------------------------------------------
    @classmethod
    def from_xlm_roberta(cls, xlmr_model, languages=None, language_groups=None, group_layers="dense", **config_kwargs):
        """Build a MoL from a transformers XLM-R model (`XLMRobertaModel`, `...ForMaskedLM`, `...ForSequence
        Classification`); every group copy of a block starts from that block's dense weights.

        With all group copies equal the MoL computes what the XLM-R model computes, whatever the routing.
        """
        xlmr_config = xlmr_model.config.to_dict()
        fields = set(inspect.signature(MoLConfig.__init__).parameters) - {"self", "kwargs"}
        fields |= {"num_labels", "id2label", "label2id", "problem_type"}
        kwargs = {key: value for key, value in xlmr_config.items() if key in fields}
        kwargs.update(languages=languages, language_groups=language_groups, group_layers=group_layers, **config_kwargs)
        source = getattr(xlmr_model.config, "_name_or_path", None) or None
        # A Hub id is the card's base_model; a local folder is not something the Hub can link to.
        kwargs.setdefault("converted_from", None if source is None or os.path.isdir(source) else source)
        model = cls(MoLConfig(**kwargs))
        state = convert_xlm_roberta_state_dict(xlmr_model.state_dict(), model)
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [key for key in missing if key not in (cls._tied_weights_keys or {})]
        # A MoE's gates have no XLM-R counterpart: they keep their initialisation (_init_weights).
        gates = [key for key in missing if ".router." in key]
        missing = [key for key in missing if key not in gates]
        if gates:
            logger.info(f"from_xlm_roberta: {len(gates)} router gates initialised (std {model.config.initializer_range}).")
        backbone_missing = [key for key in missing if ".encoder." in f".{key}" or ".embeddings." in f".{key}"]
        if backbone_missing:
            raise ValueError(f"The XLM-R model lacks encoder weights {backbone_missing}: is it an XLM-R model?")
        if missing or unexpected:
            logger.warning(f"from_xlm_roberta: newly initialised {missing}; not used {unexpected}.")
        model.tie_weights()
        return model.to(next(xlmr_model.parameters()).dtype)


@dataclass
class MoLModelOutput(BaseModelOutputWithPooling):
    """`BaseModelOutputWithPooling`, plus transformers' MoE fields for the learned-routing baselines (None for MoL):
    `router_logits` (with `output_router_logits`: per routed block, (batch * seq_len, experts) gate logits, noise
    included in training) and `aux_loss` (the load-balancing loss, mean over routed blocks)."""

    router_logits: tuple | None = None
    aux_loss: torch.FloatTensor | None = None
    language_ids: torch.LongTensor | None = None  # with languages "auto": the index into config.languages routed by


@dataclass
class MoLMaskedLMOutput(MaskedLMOutput):
    """`MaskedLMOutput` plus transformers' MoE fields (see `MoLModelOutput`); for a MoE, `loss` already includes
    `router_aux_loss_coef * aux_loss`, as in transformers' MoE models."""

    aux_loss: torch.FloatTensor | None = None
    router_logits: tuple | None = None
    language_ids: torch.LongTensor | None = None  # with languages "auto": the index into config.languages routed by


@dataclass
class MoLEncoding:
    """What the encoder gives the heads: packed output rows, where they came from, and the optional outputs padded."""

    rows: torch.Tensor
    batch: MoLPackedBatch
    hidden_states: tuple | None = None
    attentions: tuple | None = None
    router_logits: tuple = ()  # per routed block, (rows, experts) in row order
    aux_loss: torch.Tensor | None = None  # the mean of the routed blocks' load-balancing losses (MoE only)
    language_ids: torch.Tensor | None = None  # each sentence's routed language, when "auto" identified it

    def padded_router_logits(self):
        """transformers' MoE layout: per routed block, (batch * seq_len, experts) in the batch's order, zeros at
        padding (what `load_balancing_loss_func` and `output_router_logits` users expect)."""
        return tuple(self.batch.unpack(logits).flatten(0, 1) for logits in self.router_logits)


class MoLModel(MoLPreTrainedModel):
    """The bare MoL encoder: padded (batch, seq_len, hidden) outputs, zeros at padding."""

    def __init__(self, config, add_pooling_layer=True):
        super().__init__(config)
        self.embeddings = MoLEmbeddings(config)
        self.encoder = MoLEncoder(config)
        self.pooler = MoLPooler(config) if add_pooling_layer else None
        self.language_identifier = MoLLanguageIdentifier(config) if config.language_identifier else None
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.embeddings.word_embeddings = value

    def _input_shape(self, input_ids, inputs_embeds, attention_mask):
        """(batch, seq_len) of the inputs, after checking their types and shapes."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` and `inputs_embeds`.")
        if input_ids is not None:
            if not torch.is_tensor(input_ids) or input_ids.is_floating_point() or input_ids.dtype == torch.bool:
                kind = input_ids.dtype if torch.is_tensor(input_ids) else type(input_ids).__name__
                raise ValueError(f"input_ids must be an integer tensor of shape (batch, seq_len), got {kind}.")
            if input_ids.dim() != 2:
                hint = " (one sentence: use input_ids[None])" if input_ids.dim() == 1 else ""
                raise ValueError(f"input_ids must have shape (batch, seq_len), got {tuple(input_ids.shape)}{hint}.")
            shape = tuple(input_ids.shape)
        else:
            if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != self.config.hidden_size:
                raise ValueError(
                    f"inputs_embeds must have shape (batch, seq_len, {self.config.hidden_size}), "
                    f"got {tuple(inputs_embeds.shape)}."
                )
            shape = tuple(inputs_embeds.shape[:2])
        if shape[1] == 0:
            raise ValueError(f"The inputs have no tokens (shape {shape}): give at least one token per sentence.")
        if attention_mask is not None and tuple(attention_mask.shape) != shape:
            raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, expected {shape}.")
        return shape

    def encode_packed(
        self,
        input_ids=None,
        attention_mask=None,
        languages=None,
        lang_ids=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        output_hidden_states=False,
        output_attentions=False,
        labels=None,
        num_label_classes=None,
    ):
        """Check the inputs, pack them, run the encoder: a `MoLEncoding`. `labels` (with `num_label_classes`) are
        range-checked with the inputs, in the same host synchronisation as the packing."""
        batch_size, seq_len = self._input_shape(input_ids, inputs_embeds, attention_mask)
        device = (input_ids if input_ids is not None else inputs_embeds).device
        if labels is not None and tuple(labels.shape) != (batch_size, seq_len):
            raise ValueError(f"labels has shape {tuple(labels.shape)}; it must match input_ids, {(batch_size, seq_len)}.")
        if attention_mask is None:
            attention_mask = torch.ones(batch_size, seq_len, dtype=torch.long, device=device)
        given_positions = position_ids is not None
        if position_ids is None:
            position_ids = self.embeddings.position_ids(input_ids, inputs_embeds)
        if token_type_ids is None:
            token_type_ids = torch.zeros(batch_size, seq_len, dtype=torch.long, device=device)
        position_ids = position_ids.expand(batch_size, seq_len)
        token_type_ids = token_type_ids.expand(batch_size, seq_len)
        language_index = self._sentence_languages(languages, lang_ids, batch_size, device, input_ids, attention_mask)
        identified = AUTO_LANGUAGE in ([languages] if isinstance(languages, str) else languages) if languages is not None \
            else lang_ids is None and self.config.default_language == AUTO_LANGUAGE
        checks = self._range_checks(input_ids, position_ids, token_type_ids, language_index, lang_ids, labels, num_label_classes)
        groups = self._sentence_groups(language_index, batch_size, device)
        language_copies = 1 if self.config.is_moe else self.config.num_groups  # a MoE packs one group and routes
        batch, values = MoLPackedBatch.from_mask(
            attention_mask, groups, language_copies, torch.stack([t for _, t, _ in checks]) if checks else None
        )
        if values is not None:  # eager: compiled and exported graphs skip the checks (no host synchronisation)
            for (check, _, bounds), value in zip(checks, values):
                check(value, bounds, given_positions)
        rows = self.embeddings(
            batch.pack(input_ids) if input_ids is not None else None,
            batch.pack(position_ids),
            batch.pack(token_type_ids),
            batch.pack(inputs_embeds) if inputs_embeds is not None else None,
        )
        rows, all_rows, all_attentions, router_logits, aux_losses = self.encoder(
            rows, batch, output_hidden_states, output_attentions
        )
        return MoLEncoding(
            rows=rows,
            batch=batch,
            hidden_states=tuple(batch.unpack(r) for r in all_rows) if all_rows is not None else None,
            attentions=tuple(batch.unpack_attention(a) for a in all_attentions) if all_attentions is not None else None,
            router_logits=router_logits,
            aux_loss=torch.stack(aux_losses).mean() if aux_losses else None,
            language_ids=language_index if identified else None,
        )

    def _range_checks(self, input_ids, position_ids, token_type_ids, language_index, lang_ids, labels, num_classes):
        """(check, device scalar, bounds) for every value that must lie in a range: fetched in one synchronisation."""
        config = self.config
        checks = []

        def add(check, tensor, bounds, reduce):
            if tensor is not None and tensor.numel():
                checks.append((check, reduce(tensor).long(), bounds))

        add(_check_ids, input_ids, (0, config.vocab_size), torch.min)
        add(_check_ids, input_ids, (0, config.vocab_size), torch.max)
        add(_check_positions, position_ids, (config.max_position_embeddings, config.pad_token_id), torch.max)
        add(_check_token_types, token_type_ids, (0, config.type_vocab_size), torch.min)
        add(_check_token_types, token_type_ids, (0, config.type_vocab_size), torch.max)
        if lang_ids is not None:
            add(_check_lang_ids, language_index, (0, len(config.languages)), torch.min)
            add(_check_lang_ids, language_index, (0, len(config.languages)), torch.max)
        if labels is not None:
            real_labels = labels.masked_fill(labels == -100, 0)
            add(_check_labels, real_labels, (0, num_classes), torch.min)
            add(_check_labels, real_labels, (0, num_classes), torch.max)
        return checks

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        languages: str | list[str] | None = None,
        lang_ids: torch.LongTensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        output_attentions: bool | None = None,
        output_router_logits: bool | None = None,
        **kwargs,
    ) -> "MoLModelOutput | tuple":
        """Encode a padded batch; every sentence goes through its language group's copy of the group blocks.

        Args:
            input_ids / inputs_embeds: (batch, seq_len) token ids, or (batch, seq_len, hidden) embeddings; one of them.
            attention_mask: (batch, seq_len), 1 for real tokens; padding is never computed.
            languages: each sentence's language: one code for the whole batch, one per sentence, or "auto" (the
                checkpoint's language identifier decides). Codes are FLORES codes of `config.languages` (`fra_Latn`).
            lang_ids: the same as (batch,) indices into `config.languages`; give `languages` or `lang_ids`.
            Neither: `config.default_language` routes every sentence (a code, or "auto"); with no default either,
            a model with group blocks raises, naming the remedies (a dense MoL or a MoE needs no language).
            output_router_logits: the MoE baselines' gate logits per routed block (transformers' MoE layout).
        """
        output_hidden_states, output_attentions, return_dict = self._output_flags(
            output_hidden_states, output_attentions, return_dict
        )
        encoding = self.encode_packed(
            input_ids, attention_mask, languages, lang_ids, token_type_ids, position_ids, inputs_embeds,
            output_hidden_states=output_hidden_states, output_attentions=output_attentions,
        )
        last_hidden_state = encoding.batch.unpack(encoding.rows)
        output = MoLModelOutput(
            last_hidden_state=last_hidden_state,
            pooler_output=self.pooler(last_hidden_state) if self.pooler is not None else None,
            hidden_states=encoding.hidden_states,
            attentions=encoding.attentions,
            router_logits=self._router_logits(encoding, output_router_logits),
            aux_loss=encoding.aux_loss,
            language_ids=encoding.language_ids,
        )
        return output if return_dict else output.to_tuple()


def _check_ids(value, bounds, _):
    low, high = bounds
    if not low <= value < high:
        raise ValueError(f"input_ids contains {value}, outside the vocabulary: valid ids are 0..{high - 1} (vocab_size={high}).")


def _check_positions(value, bounds, given):
    table, pad = bounds
    if given and value >= table:
        raise ValueError(f"position_ids contains {value}: valid positions are 0..{table - 1} (max_position_embeddings={table}).")
    if not given and value >= table:
        limit = table - pad - 1
        raise ValueError(
            f"A sentence has {value - pad} tokens but this model takes at most {limit} (max_position_embeddings={table}, "
            f"positions start at pad_token_id + 1 = {pad + 1}): truncate the input, e.g. "
            f"tokenizer(..., truncation=True, max_length={limit})."
        )


def _check_token_types(value, bounds, _):
    low, high = bounds
    if not low <= value < high:
        raise ValueError(f"token_type_ids contains {value}: valid token types are 0..{high - 1} (type_vocab_size={high}).")


def _check_lang_ids(value, bounds, _):
    low, high = bounds
    if not low <= value < high:
        raise ValueError(
            f"`lang_ids` contains {value}, out of range: valid ids are 0..{high - 1} (indices into config.languages)."
        )


def _check_labels(value, bounds, _):
    low, high = bounds
    if not low <= value < high:
        raise ValueError(f"labels contains {value}: valid labels are -100 (ignored) and 0..{high - 1}.")


class MoLLMHead(nn.Module):
    """XLM-R's MLM head with the decoder tied to the word embeddings and its bias registered once (FSDP2 shards
    every parameter once; XLM-R registers the decoder bias twice)."""

    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, features):
        return F.linear(self.layer_norm(gelu(self.dense(features))), self.decoder.weight, self.bias)

    def resize_bias(self, vocab_size):
        """Keep the bias the size of the (resized) vocabulary: old entries kept, new ones zero."""
        old = self.bias
        if old.shape[0] != vocab_size:
            new = old.new_zeros(vocab_size)
            keep = min(vocab_size, old.shape[0])
            new[:keep] = old.detach()[:keep]
            self.bias = nn.Parameter(new, requires_grad=old.requires_grad)


class MoLForMaskedLM(MoLPreTrainedModel):
    """MoL with the MLM head. `logits` is (batch, seq, vocab) as in every transformers MLM. With
    `config.sparse_prediction` (what train_mlm.py sets) and `labels`, only the masked positions (labels != -100) go
    through the head: `logits` is then (masked tokens, vocab) in the batch's row-major order, the loss the same."""

    _tied_weights_keys = {"lm_head.decoder.weight": "mol.embeddings.word_embeddings.weight"}
    accepts_loss_kwargs = True  # the loss is summed over masked tokens and divided by Trainer's num_items_in_batch

    def __init__(self, config):
        super().__init__(config)
        self.mol = MoLModel(config, add_pooling_layer=False)
        self.lm_head = MoLLMHead(config)
        self.post_init()

    def get_output_embeddings(self):
        return self.lm_head.decoder

    def set_output_embeddings(self, new_embeddings):
        self.lm_head.decoder = new_embeddings

    def resize_token_embeddings(self, *args, **kwargs):
        embeddings = super().resize_token_embeddings(*args, **kwargs)
        self.lm_head.resize_bias(self.get_input_embeddings().num_embeddings)
        return embeddings

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        languages=None,
        lang_ids=None,
        labels=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        output_hidden_states=None,
        return_dict=None,
        output_attentions=None,
        num_items_in_batch=None,
        output_router_logits=None,
        **kwargs,
    ):
        output_hidden_states, output_attentions, return_dict = self._output_flags(
            output_hidden_states, output_attentions, return_dict
        )
        encoding = self.mol.encode_packed(
            input_ids, attention_mask, languages, lang_ids, token_type_ids, position_ids, inputs_embeds,
            output_hidden_states=output_hidden_states, output_attentions=output_attentions,
            labels=labels, num_label_classes=self.config.vocab_size,
        )
        rows, batch, loss = encoding.rows, encoding.batch, None
        if labels is not None and self.config.sparse_prediction:
            # Sorting the packed rows back to the batch's row-major order keeps logits aligned with labels[labels != -100].
            row_labels = batch.pack(labels.to(rows.device))
            masked = (row_labels != -100).nonzero().squeeze(1)
            masked = masked[torch.argsort(batch.token_index[masked])]
            logits = self.lm_head(rows[masked])
            loss = fixed_cross_entropy(logits.float(), row_labels[masked], num_items_in_batch)
        else:
            logits = batch.unpack(self.lm_head(rows))
            if labels is not None:
                flat_labels = labels.to(logits.device).reshape(-1)
                loss = fixed_cross_entropy(logits.float().view(-1, logits.shape[-1]), flat_labels, num_items_in_batch)
        if loss is not None and encoding.aux_loss is not None:
            loss = loss + self.config.router_aux_loss_coef * self._aux_weight(labels, num_items_in_batch) * encoding.aux_loss
        output = MoLMaskedLMOutput(loss=loss, logits=logits, hidden_states=encoding.hidden_states,
                                   attentions=encoding.attentions, aux_loss=encoding.aux_loss,
                                   router_logits=self.mol._router_logits(encoding, output_router_logits),
                                   language_ids=encoding.language_ids)
        return output if return_dict else output.to_tuple()

    @staticmethod
    def _aux_weight(labels, num_items_in_batch):
        """1, or under Trainer's gradient accumulation (the MLM loss divided by the masked tokens of all
        micro-batches) this micro-batch's share of those tokens: the accumulated auxiliary loss is then their
        token-weighted mean, not the sum over micro-batches."""
        if num_items_in_batch is None:
            return 1.0
        masked = (labels != -100).sum()
        return masked.to(torch.float32) / torch.as_tensor(num_items_in_batch, dtype=torch.float32, device=masked.device)


class MoLClassificationHead(nn.Module):
    """XLM-R's sentence-level head: dense, tanh, out_proj on the first token (or the mean of the real tokens)."""

    def __init__(self, config):
        super().__init__()
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, features):
        x = torch.tanh(self.dense(self.dropout(features)))
        return self.out_proj(self.dropout(x))


class MoLForSequenceClassification(MoLPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.mol = MoLModel(config, add_pooling_layer=False)
        self.classifier = MoLClassificationHead(config)
        self.post_init()

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        languages=None,
        lang_ids=None,
        labels=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        output_hidden_states=None,
        return_dict=None,
        output_attentions=None,
        **kwargs,
    ):
        outputs = self.mol(
            input_ids, attention_mask, languages, lang_ids, token_type_ids, position_ids, inputs_embeds,
            output_hidden_states=output_hidden_states, output_attentions=output_attentions, return_dict=True,
        )
        hidden = outputs.last_hidden_state
        if self.config.classifier_pooling == "mean":
            real = (attention_mask if attention_mask is not None else torch.ones(hidden.shape[:2], device=hidden.device))
            real = real.to(hidden.dtype).unsqueeze(-1)
            features = (hidden * real).sum(1) / real.sum(1).clamp(min=1)
        else:
            features = hidden[:, 0]
        logits = self.classifier(features)
        loss = sentence_classification_loss(self.config, logits, labels) if labels is not None else None
        output = SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                          attentions=outputs.attentions)
        return output if self._output_flags(None, None, return_dict)[2] else output.to_tuple()


def sentence_classification_loss(config, logits, labels):
    """transformers' problem types: regression (one label), single-label (integer labels), multi-label."""
    labels = labels.to(logits.device)
    num_labels = config.num_labels
    if config.problem_type is None:
        if num_labels == 1:
            config.problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int):
            config.problem_type = "single_label_classification"
        else:
            config.problem_type = "multi_label_classification"
    if config.problem_type == "regression":
        return F.mse_loss(logits.squeeze(-1), labels.squeeze(-1).to(logits.dtype))
    if config.problem_type == "single_label_classification":
        return F.cross_entropy(logits.view(-1, num_labels), labels.view(-1))
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


class MoLForTokenClassification(MoLPreTrainedModel):
    """XLM-R's token classification head (dropout, linear) on every real token; zeros at padding."""

    accepts_loss_kwargs = True  # the loss is summed over labelled tokens and divided by Trainer's num_items_in_batch

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.mol = MoLModel(config, add_pooling_layer=False)
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        languages=None,
        lang_ids=None,
        labels=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        output_hidden_states=None,
        return_dict=None,
        output_attentions=None,
        num_items_in_batch=None,
        **kwargs,
    ):
        output_hidden_states, output_attentions, return_dict = self._output_flags(
            output_hidden_states, output_attentions, return_dict
        )
        encoding = self.mol.encode_packed(
            input_ids, attention_mask, languages, lang_ids, token_type_ids, position_ids, inputs_embeds,
            output_hidden_states=output_hidden_states, output_attentions=output_attentions,
            labels=labels, num_label_classes=self.num_labels,
        )
        logits = encoding.batch.unpack(self.classifier(self.dropout(encoding.rows)))
        loss = None
        if labels is not None:
            flat_labels = labels.to(logits.device).reshape(-1)
            loss = fixed_cross_entropy(logits.float().view(-1, self.num_labels), flat_labels, num_items_in_batch)
        output = TokenClassifierOutput(loss=loss, logits=logits, hidden_states=encoding.hidden_states,
                                       attentions=encoding.attentions)
        return output if return_dict else output.to_tuple()


class MoLForQuestionAnswering(MoLPreTrainedModel):
    """XLM-R's extractive QA head: start and end logits per token (zeros at padding)."""

    def __init__(self, config):
        if config.num_labels != 2:
            raise ValueError(
                f"Question answering predicts one start and one end logit per token: num_labels must be 2, "
                f"got {config.num_labels}."
            )
        super().__init__(config)
        self.num_labels = config.num_labels
        self.mol = MoLModel(config, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        languages=None,
        lang_ids=None,
        start_positions=None,
        end_positions=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        output_hidden_states=None,
        return_dict=None,
        output_attentions=None,
        **kwargs,
    ):
        output_hidden_states, output_attentions, return_dict = self._output_flags(
            output_hidden_states, output_attentions, return_dict
        )
        encoding = self.mol.encode_packed(
            input_ids, attention_mask, languages, lang_ids, token_type_ids, position_ids, inputs_embeds,
            output_hidden_states=output_hidden_states, output_attentions=output_attentions,
        )
        logits = encoding.batch.unpack(self.qa_outputs(encoding.rows))
        start_logits, end_logits = (part.squeeze(-1).contiguous() for part in logits.split(1, dim=-1))
        loss = None
        if start_positions is not None and end_positions is not None:
            # As in XLM-R: positions outside the sequence are clamped to seq_len and ignored.
            ignored = start_logits.size(1)
            start = start_positions.reshape(-1).to(start_logits.device).clamp(0, ignored)
            end = end_positions.reshape(-1).to(end_logits.device).clamp(0, ignored)
            loss = (F.cross_entropy(start_logits, start, ignore_index=ignored)
                    + F.cross_entropy(end_logits, end, ignore_index=ignored)) / 2
        output = QuestionAnsweringModelOutput(loss=loss, start_logits=start_logits, end_logits=end_logits,
                                              hidden_states=encoding.hidden_states, attentions=encoding.attentions)
        return output if return_dict else output.to_tuple()


class MoLForMultipleChoice(MoLPreTrainedModel):
    """XLM-R's multiple-choice head on (batch, choices, seq_len) inputs: one language per example (or per choice)."""

    def __init__(self, config):
        super().__init__(config)
        self.mol = MoLModel(config)
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, 1)
        self.post_init()

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        languages=None,
        lang_ids=None,
        labels=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        output_hidden_states=None,
        return_dict=None,
        output_attentions=None,
        **kwargs,
    ):
        reference = input_ids if input_ids is not None else inputs_embeds
        if reference is None or reference.dim() != (3 if input_ids is not None else 4):
            shape = None if reference is None else tuple(reference.shape)
            raise ValueError(f"Multiple choice takes input_ids of shape (batch, choices, seq_len); got {shape}.")
        num_examples, num_choices = reference.shape[:2]

        def flat(tensor):
            return tensor.reshape(-1, *tensor.shape[2:]) if tensor is not None else None

        languages, lang_ids = _per_choice(languages, lang_ids, num_examples, num_choices)
        outputs = self.mol(
            flat(input_ids), flat(attention_mask), languages, lang_ids, flat(token_type_ids), flat(position_ids),
            flat(inputs_embeds), output_hidden_states=output_hidden_states, output_attentions=output_attentions,
            return_dict=True,
        )
        logits = self.classifier(self.dropout(outputs.pooler_output)).view(num_examples, num_choices)
        loss = F.cross_entropy(logits, labels.to(logits.device)) if labels is not None else None
        output = MultipleChoiceModelOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                           attentions=outputs.attentions)
        return output if self._output_flags(None, None, return_dict)[2] else output.to_tuple()


def _per_choice(languages, lang_ids, num_examples, num_choices):
    """One language per example (repeated for each of its choices) or one per (example, choice)."""
    if languages is not None and not isinstance(languages, str):
        languages = list(languages)
        if len(languages) == num_examples:
            languages = [code for code in languages for _ in range(num_choices)]
    if lang_ids is not None:
        lang_ids = torch.as_tensor(lang_ids)
        if lang_ids.dim() == 1 and lang_ids.shape[0] == num_examples:
            lang_ids = lang_ids.repeat_interleave(num_choices)
        elif lang_ids.dim() == 2:
            lang_ids = lang_ids.reshape(-1)
    return languages, lang_ids


__all__ = [
    "MoLMaskedLMOutput",
    "MoLModelOutput",
    "MoLPreTrainedModel",
    "MoLModel",
    "MoLForMaskedLM",
    "MoLForSequenceClassification",
    "MoLForTokenClassification",
    "MoLForQuestionAnswering",
    "MoLForMultipleChoice",
]
