"""PyTorch MoL (Mixture of Languages): an XLM-R encoder whose group-specific blocks hold one weight copy per
language group; every token of a sentence goes through the copy of the sentence's language group.

Data path (one pass, no compute on padding): embed, unpad once into packed token rows ordered by group (a
collator that already sorts sentences by group makes that free), run every group Linear as one grouped GEMM over
contiguous row ranges and attention over variable-length sentences, restore the batch's order and padding at the
end. A shared block is the one-group case of the same block class.

This file and its siblings (`configuration_mol.py`, `mol_grouped_gemm.py`, `mol_attention.py`) are copied flat
into every exported checkpoint as remote code: they import each other only as `from .name import X`.
"""

import inspect
import json
import os
import re
import shutil
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN, gelu
from transformers.dynamic_module_utils import get_relative_imports
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutputWithPooling,
    MaskedLMOutput,
    SequenceClassifierOutput,
)
from transformers.utils import logging

from .mol_attention import choose_attention
from .mol_grouped_gemm import MoLGroupedGemm


try:  # in an exported checkpoint the configuration is a sibling file
    from .configuration_mol import MOL_AUTO_MAP, MoLConfig
except ImportError:  # in this project it is the `configuration_mol` package beside `modeling_mol`
    from configuration_mol.configuration_mol import MOL_AUTO_MAP, MoLConfig


logger = logging.get_logger(__name__)


@dataclass
class MoLPackedBatch:
    """Where the real tokens of a padded batch went once packed and ordered by group.

    token_index: (tokens,) flat positions in the (batch * seq_len) padded grid, in packed order.
    seq_lengths / cu_seqlens / max_seqlen: the non-empty sentences in packed order (host list, int32 device, int).
    pad_index: (tokens,) positions in a (sentences, max_seqlen) grid, for attention backends that re-pad.
    group_offsets: (groups,) int32 cumulative row ends of each group; all_rows: (1,) the one-group case.
    row_group: (tokens,) the group of every row.
    """

    token_index: torch.Tensor
    seq_lengths: list
    cu_seqlens: torch.Tensor
    max_seqlen: int
    pad_index: torch.Tensor
    group_offsets: torch.Tensor
    all_rows: torch.Tensor
    row_group: torch.Tensor
    batch_size: int
    seq_len: int

    @classmethod
    def from_mask(cls, attention_mask, sentence_group, num_groups):
        batch_size, seq_len = attention_mask.shape
        device = attention_mask.device
        # A stable sort keeps sentences of one group in batch order: an already sorted batch stays as it is.
        order = torch.sort(sentence_group, stable=True).indices
        real = attention_mask[order].bool()
        positions = order[:, None] * seq_len + torch.arange(seq_len, device=device)
        token_index = positions.masked_select(real)
        lengths = real.sum(dim=1)
        seq_lengths = [length for length in lengths.tolist() if length > 0]
        num_tokens = sum(seq_lengths)
        nonempty = torch.tensor(seq_lengths, device=device, dtype=torch.long)
        starts = torch.cumsum(nonempty, 0) - nonempty
        max_seqlen = max(seq_lengths, default=0)
        row_in_sentence = torch.arange(num_tokens, device=device) - torch.repeat_interleave(starts, nonempty)
        sentence_slot = torch.repeat_interleave(torch.arange(len(seq_lengths), device=device), nonempty)
        group_tokens = torch.zeros(num_groups, dtype=torch.long, device=device).index_add_(0, sentence_group[order], lengths)
        return cls(
            token_index=token_index,
            seq_lengths=seq_lengths,
            cu_seqlens=F.pad(torch.cumsum(nonempty, 0), (1, 0)).to(torch.int32),
            max_seqlen=max_seqlen,
            pad_index=sentence_slot * max_seqlen + row_in_sentence,
            group_offsets=torch.cumsum(group_tokens, 0).to(torch.int32),
            all_rows=torch.tensor([num_tokens], dtype=torch.int32, device=device),
            row_group=torch.repeat_interleave(sentence_group[order], lengths, output_size=num_tokens),
            batch_size=batch_size,
            seq_len=seq_len,
        )

    @property
    def num_tokens(self):
        return self.token_index.shape[0]

    def pack(self, padded):
        """(batch, seq_len, ...) -> (tokens, ...) in packed order."""
        return padded.reshape(self.batch_size * self.seq_len, *padded.shape[2:])[self.token_index]

    def unpack(self, rows, fill=0):
        """(tokens, ...) -> (batch, seq_len, ...) in the batch's order, `fill` at padding."""
        padded = rows.new_full((self.batch_size * self.seq_len, *rows.shape[1:]), fill)
        padded = padded.index_copy(0, self.token_index, rows)
        return padded.view(self.batch_size, self.seq_len, *rows.shape[1:])


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


class MoLGroupedLinear(nn.Module):
    """A Linear with one (in, out) weight and (out,) bias per group: weight (groups, in, out), bias (groups, out)."""

    def __init__(self, config, in_features, out_features, num_groups, grouped_gemm):
        super().__init__()
        self.in_features, self.out_features, self.num_groups = in_features, out_features, num_groups
        self.weight = nn.Parameter(torch.empty(num_groups, in_features, out_features))
        self.bias = nn.Parameter(torch.zeros(num_groups, out_features))
        self.grouped_gemm = grouped_gemm

    def forward(self, rows, batch):
        if self.num_groups == 1:
            return torch.addmm(self.bias[0], rows, self.weight[0])
        return self.grouped_gemm(rows, self.weight, self.bias, batch.group_offsets)

    def extra_repr(self):
        return f"groups={self.num_groups}, in_features={self.in_features}, out_features={self.out_features}"


class MoLGroupedLayerNorm(nn.Module):
    """A LayerNorm with one affine (weight, bias) per group: (groups, dim) each."""

    def __init__(self, config, dim, num_groups):
        super().__init__()
        self.num_groups, self.eps = num_groups, config.layer_norm_eps
        self.weight = nn.Parameter(torch.ones(num_groups, dim))
        self.bias = nn.Parameter(torch.zeros(num_groups, dim))

    def forward(self, rows, batch):
        dim = rows.shape[-1:]
        if self.num_groups == 1:
            return F.layer_norm(rows, dim, self.weight[0], self.bias[0], self.eps)
        normed = F.layer_norm(rows, dim, eps=self.eps)
        return torch.addcmul(self.bias[batch.row_group], normed, self.weight[batch.row_group])


class MoLAttention(nn.Module):
    """XLM-R self-attention (post-LN) over packed variable-length sentences."""

    def __init__(self, config, num_groups, grouped_gemm):
        super().__init__()
        hidden = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = hidden // config.num_attention_heads
        self.query = MoLGroupedLinear(config, hidden, hidden, num_groups, grouped_gemm)
        self.key = MoLGroupedLinear(config, hidden, hidden, num_groups, grouped_gemm)
        self.value = MoLGroupedLinear(config, hidden, hidden, num_groups, grouped_gemm)
        self.output = MoLGroupedLinear(config, hidden, hidden, num_groups, grouped_gemm)
        self.LayerNorm = MoLGroupedLayerNorm(config, hidden, num_groups)
        self.dropout_prob = config.attention_probs_dropout_prob
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.config = config

    def forward(self, rows, batch):
        q, k, v = (proj(rows, batch).view(-1, self.num_heads, self.head_dim) for proj in (self.query, self.key, self.value))
        attend = choose_attention(
            self.config._attn_implementation, rows.device.type, rows.dtype, self.training and self.dropout_prob > 0
        )
        context = attend(q, k, v, batch, dropout_p=self.dropout_prob, training=self.training).reshape(rows.shape)
        return self.LayerNorm(self.dropout(self.output(context, batch)) + rows, batch)


class MoLLayer(GradientCheckpointingLayer):
    """The one block class: shared (one group) or group-specific (every Linear and LayerNorm per group)."""

    def __init__(self, config, layer_idx, grouped_gemm):
        super().__init__()
        self.layer_idx = layer_idx
        self.is_group_block = layer_idx in config.group_layers
        num_groups = config.num_groups if self.is_group_block else 1
        self.attention = MoLAttention(config, num_groups, grouped_gemm)
        self.intermediate = MoLGroupedLinear(config, config.hidden_size, config.intermediate_size, num_groups, grouped_gemm)
        self.activation = ACT2FN[config.hidden_act]
        self.output = MoLGroupedLinear(config, config.intermediate_size, config.hidden_size, num_groups, grouped_gemm)
        self.LayerNorm = MoLGroupedLayerNorm(config, config.hidden_size, num_groups)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, rows, batch):
        attended = self.attention(rows, batch)
        expanded = self.activation(self.intermediate(attended, batch))
        return self.LayerNorm(self.dropout(self.output(expanded, batch)) + attended, batch)


class MoLEncoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.grouped_gemm = MoLGroupedGemm.from_config(config)
        self.layer = nn.ModuleList([MoLLayer(config, i, self.grouped_gemm) for i in range(config.num_hidden_layers)])

    def forward(self, rows, batch, output_hidden_states=False):
        all_rows = (rows,) if output_hidden_states else None
        for layer in self.layer:
            rows = layer(rows, batch)
            if output_hidden_states:
                all_rows += (rows,)
        return rows, all_rows


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
    def set_default_language(self, code):
        """Language used when a forward pass names none (pipelines pass no language)."""
        if code is not None:
            self._language_index(code)
        self.config.default_language = code

    def _language_index(self, code):
        try:
            return self.config.languages.index(code)
        except ValueError:
            raise ValueError(f"Unknown language {code!r}: this model knows {self.config.languages}.") from None

    def _routes_by_language(self):
        return bool(self.config.group_layers) and self.config.num_groups > 1

    def _sentence_groups(self, languages, lang_ids, batch_size, device):
        """The group index of every sentence, (batch,), from codes, indices or the default language."""
        config = self.config
        if languages is not None and lang_ids is not None:
            raise ValueError("Pass either `languages` (codes) or `lang_ids` (indices into config.languages), not both.")
        if languages is not None:
            if isinstance(languages, str):
                languages = [languages] * batch_size
            languages = list(languages)
            if len(languages) != batch_size:
                raise ValueError(
                    f"`languages` has {len(languages)} codes but the batch has {batch_size} sentences: "
                    "give one code per sentence, or a single code for the whole batch."
                )
            lang_ids = torch.tensor([self._language_index(code) for code in languages], device=device)
        elif lang_ids is not None:
            lang_ids = torch.as_tensor(lang_ids, device=device)
            if lang_ids.dtype in (torch.bool,) or lang_ids.is_floating_point():
                raise ValueError(f"`lang_ids` must hold integer indices into config.languages, got dtype {lang_ids.dtype}.")
            lang_ids = lang_ids.long().expand(batch_size) if lang_ids.dim() == 0 else lang_ids.long()
            if lang_ids.shape != (batch_size,):
                raise ValueError(
                    f"`lang_ids` has shape {tuple(lang_ids.shape)} but the batch has {batch_size} sentences: "
                    f"pass a LongTensor of shape ({batch_size},)."
                )
            bad = lang_ids[(lang_ids < 0) | (lang_ids >= len(config.languages))]
            if bad.numel():
                raise ValueError(
                    f"`lang_ids` contains {bad.tolist()}, out of range: valid ids are 0..{len(config.languages) - 1} "
                    f"(config.languages = {config.languages})."
                )
        elif config.default_language is not None:
            lang_ids = torch.full((batch_size,), self._language_index(config.default_language), device=device)
        elif self._routes_by_language():
            raise ValueError(
                "This MoL model routes every sentence by its language, and none was given: pass `languages=[...]` "
                "(codes from config.languages) or `lang_ids=...`, or call `model.set_default_language(code)`."
            )
        else:
            return torch.zeros(batch_size, dtype=torch.long, device=device)
        return torch.tensor(config.language_to_group(), dtype=torch.long, device=device)[lang_ids]

    # ---- Hub-native checkpoints ------------------------------------------------------------------------------------
    def save_pretrained(self, save_directory, *args, tokenizer=None, **kwargs):
        """Save as a flat remote-code bundle: config.json with the full auto_map, safetensors weights, the model's
        own source files, and the tokenizer when one is given."""
        self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **MOL_AUTO_MAP}
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            for source in remote_code_files():
                target = os.path.join(save_directory, os.path.basename(source))
                if not os.path.exists(target) or not os.path.samefile(source, target):
                    shutil.copyfile(source, target)
            if tokenizer is not None:
                tokenizer.save_pretrained(save_directory)
            write_sentence_transformers_config(save_directory, self.config)

    def push_to_hub(self, repo_id, *args, tokenizer=None, **kwargs):
        """Upload the bundle of `save_pretrained` (and the tokenizer when one is given) to the Hub repo `repo_id`."""
        url = super().push_to_hub(repo_id, *args, **kwargs)
        if tokenizer is not None:
            tokenizer.push_to_hub(repo_id, token=kwargs.get("token"), revision=kwargs.get("revision"))
        return url

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
        model = cls(MoLConfig(**kwargs))
        state = convert_xlm_roberta_state_dict(xlmr_model.state_dict(), model)
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [key for key in missing if key not in (cls._tied_weights_keys or {})]
        backbone_missing = [key for key in missing if ".encoder." in f".{key}" or ".embeddings." in f".{key}"]
        if backbone_missing:
            raise ValueError(f"The XLM-R model lacks encoder weights {backbone_missing}: is it an XLM-R model?")
        if missing or unexpected:
            logger.warning(f"from_xlm_roberta: newly initialised {missing}; not used {unexpected}.")
        model.tie_weights()
        return model.to(next(xlmr_model.parameters()).dtype)


def sentence_transformers_module():
    """sentence-transformers' input module for this bundle. Only sentence-transformers' loader imports it; the import
    is named here so that transformers copies `mol_sentence_transformers.py` with the rest of the remote code."""
    from .mol_sentence_transformers import MoLSentenceTransformer

    return MoLSentenceTransformer


def write_sentence_transformers_config(folder, config):
    """What `SentenceTransformer(folder, trust_remote_code=True)` reads: MoL's input module (which routes each text
    by its language), then mean pooling over real tokens (the papers' sentence representation)."""
    limit = config.max_position_embeddings - config.pad_token_id - 1  # XLM-R positions start at pad_token_id + 1
    files = {
        "modules.json": [
            {"idx": 0, "name": "0", "path": "", "type": "mol_sentence_transformers.MoLSentenceTransformer",
             "kwargs": ["languages"]},
            {"idx": 1, "name": "1", "path": "1_Pooling",
             "type": "sentence_transformers.sentence_transformer.modules.pooling.Pooling"},
        ],
        "sentence_bert_config.json": {
            "max_seq_length": min(limit, 512), "transformer_task": "feature-extraction",
            "modality_config": {"text": {"method": "forward", "method_output_name": "last_hidden_state"}},
            "module_output_name": "token_embeddings",
        },
        "1_Pooling/config.json": {"embedding_dimension": config.hidden_size, "pooling_mode": "mean",
                                  "include_prompt": True},
        "config_sentence_transformers.json": {"model_type": "SentenceTransformer", "similarity_fn_name": "cosine",
                                              "prompts": {}, "default_prompt_name": None},
    }
    for name, value in files.items():
        path = os.path.join(folder, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(value, handle, indent=2)


def remote_code_files():
    """This file, the configuration file and every sibling helper they import as `from .name import X`."""
    roots = [os.path.abspath(__file__), os.path.abspath(inspect.getfile(MoLConfig))]
    folders = [os.path.dirname(path) for path in roots]
    found, queue = set(), list(roots)
    while queue:
        path = queue.pop()
        if path not in found:
            found.add(path)
            for name in get_relative_imports(path):
                queue += [p for p in (os.path.join(f, f"{name}.py") for f in folders) if os.path.isfile(p)][:1]
    return sorted(found)


_XLMR_LAYER_KEY = re.compile(r"^(.*encoder\.layer\.)(\d+)\.(.+)\.(weight|bias)$")
# XLM-R's module path inside a layer -> MoL's.
_XLMR_LAYER_NAMES = {
    "attention.self.query": "attention.query",
    "attention.self.key": "attention.key",
    "attention.self.value": "attention.value",
    "attention.output.dense": "attention.output",
    "attention.output.LayerNorm": "attention.LayerNorm",
    "intermediate.dense": "intermediate",
    "output.dense": "output",
    "output.LayerNorm": "LayerNorm",
}


def convert_xlm_roberta_state_dict(state, model):
    """XLM-R weights under MoL's names and shapes: Linear weights transposed to (in, out), block weights copied
    to every group of the block."""
    config, heads = model.config, dict(model.named_children())
    converted = {}
    for key, tensor in state.items():
        if key.endswith(("position_ids", "token_type_ids")) or key == "lm_head.decoder.bias":
            continue  # buffers, and the decoder bias XLM-R registers a second time as lm_head.bias
        key = key.removeprefix("roberta.")
        layer = _XLMR_LAYER_KEY.match(key)
        if layer:
            start, index, module, kind = layer.groups()
            key = f"{start}{index}.{_XLMR_LAYER_NAMES[module]}.{kind}"
            tensor = tensor.t() if tensor.dim() == 2 else tensor
            groups = config.num_groups if int(index) in config.group_layers else 1
            tensor = tensor.unsqueeze(0).expand(groups, *tensor.shape).contiguous()
        if key.split(".")[0] not in heads:
            key = f"{model.base_model_prefix}.{key}"
        converted[key] = tensor
    return converted


class MoLModel(MoLPreTrainedModel):
    """The bare MoL encoder: padded (batch, seq_len, hidden) outputs, zeros at padding."""

    def __init__(self, config, add_pooling_layer=True):
        super().__init__(config)
        self.embeddings = MoLEmbeddings(config)
        self.encoder = MoLEncoder(config)
        self.pooler = MoLPooler(config) if add_pooling_layer else None
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.embeddings.word_embeddings = value

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
    ):
        """Run the encoder on packed tokens: returns (rows, batch, per-layer rows or None)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` and `inputs_embeds`.")
        reference = input_ids if input_ids is not None else inputs_embeds[..., 0]
        batch_size, seq_len = reference.shape
        device = reference.device
        if attention_mask is None:
            attention_mask = torch.ones(batch_size, seq_len, dtype=torch.long, device=device)
        if attention_mask.shape != (batch_size, seq_len):
            raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, expected {(batch_size, seq_len)}.")
        if position_ids is None:
            position_ids = self.embeddings.position_ids(input_ids, inputs_embeds)
        if token_type_ids is None:
            token_type_ids = torch.zeros(batch_size, seq_len, dtype=torch.long, device=device)
        groups = self._sentence_groups(languages, lang_ids, batch_size, device)
        batch = MoLPackedBatch.from_mask(attention_mask, groups, self.config.num_groups)
        rows = self.embeddings(
            batch.pack(input_ids) if input_ids is not None else None,
            batch.pack(position_ids.expand(batch_size, seq_len)),
            batch.pack(token_type_ids.expand(batch_size, seq_len)),
            batch.pack(inputs_embeds) if inputs_embeds is not None else None,
        )
        rows, all_rows = self.encoder(rows, batch, output_hidden_states=output_hidden_states)
        return rows, batch, all_rows

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        languages=None,
        lang_ids=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        output_hidden_states=None,
        return_dict=None,
        **kwargs,
    ):
        output_hidden_states = output_hidden_states or self.config.output_hidden_states
        rows, batch, all_rows = self.encode_packed(
            input_ids, attention_mask, languages, lang_ids, token_type_ids, position_ids, inputs_embeds,
            output_hidden_states,
        )
        last_hidden_state = batch.unpack(rows)
        pooled = self.pooler(last_hidden_state) if self.pooler is not None else None
        hidden_states = tuple(batch.unpack(r) for r in all_rows) if all_rows is not None else None
        if return_dict is False:
            return tuple(t for t in (last_hidden_state, pooled, hidden_states) if t is not None)
        return BaseModelOutputWithPooling(
            last_hidden_state=last_hidden_state, pooler_output=pooled, hidden_states=hidden_states
        )


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


class MoLForMaskedLM(MoLPreTrainedModel):
    """MoL with the MLM head. Given `labels`, it predicts only the masked positions (labels != -100): `logits` is
    then (masked tokens, vocab) in the batch's row-major order; without labels it is the full (batch, seq, vocab)."""

    _tied_weights_keys = {"lm_head.decoder.weight": "mol.embeddings.word_embeddings.weight"}

    def __init__(self, config):
        super().__init__(config)
        self.mol = MoLModel(config, add_pooling_layer=False)
        self.lm_head = MoLLMHead(config)
        self.post_init()

    def get_output_embeddings(self):
        return self.lm_head.decoder

    def set_output_embeddings(self, new_embeddings):
        self.lm_head.decoder = new_embeddings

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
        **kwargs,
    ):
        output_hidden_states = output_hidden_states or self.config.output_hidden_states
        rows, batch, all_rows = self.mol.encode_packed(
            input_ids, attention_mask, languages, lang_ids, token_type_ids, position_ids, inputs_embeds,
            output_hidden_states,
        )
        loss = None
        if labels is not None:
            # Sorting the packed rows back to the batch's row-major order keeps logits aligned with labels[labels != -100].
            row_labels = batch.pack(labels)
            masked = (row_labels != -100).nonzero().squeeze(1)
            masked = masked[torch.argsort(batch.token_index[masked])]
            logits = self.lm_head(rows[masked])
            loss = F.cross_entropy(logits.float(), row_labels[masked])
        else:
            logits = batch.unpack(self.lm_head(rows))
        hidden_states = tuple(batch.unpack(r) for r in all_rows) if all_rows is not None else None
        if return_dict is False:
            return tuple(t for t in (loss, logits, hidden_states) if t is not None)
        return MaskedLMOutput(loss=loss, logits=logits, hidden_states=hidden_states)


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
        **kwargs,
    ):
        outputs = self.mol(
            input_ids, attention_mask, languages, lang_ids, token_type_ids, position_ids, inputs_embeds,
            output_hidden_states=output_hidden_states,
        )
        hidden = outputs.last_hidden_state
        if self.config.classifier_pooling == "mean":
            real = (attention_mask if attention_mask is not None else torch.ones(hidden.shape[:2], device=hidden.device))
            real = real.to(hidden.dtype).unsqueeze(-1)
            features = (hidden * real).sum(1) / real.sum(1).clamp(min=1)
        else:
            features = hidden[:, 0]
        logits = self.classifier(features)
        loss = self._classification_loss(logits, labels) if labels is not None else None
        if return_dict is False:
            return tuple(t for t in (loss, logits, outputs.hidden_states) if t is not None)
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)

    def _classification_loss(self, logits, labels):
        labels = labels.to(logits.device)
        if self.config.problem_type is None:
            if self.num_labels == 1:
                self.config.problem_type = "regression"
            elif labels.dtype in (torch.long, torch.int):
                self.config.problem_type = "single_label_classification"
            else:
                self.config.problem_type = "multi_label_classification"
        if self.config.problem_type == "regression":
            return F.mse_loss(logits.squeeze(-1), labels.squeeze(-1).to(logits.dtype))
        if self.config.problem_type == "single_label_classification":
            return F.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


__all__ = [
    "MoLPreTrainedModel",
    "MoLModel",
    "MoLForMaskedLM",
    "MoLForSequenceClassification",
]
