"""MoL (Mixture of Languages) configuration.

This file is copied flat into every exported checkpoint as remote code: it imports nothing of this project and
nothing that a plain `torch` + `transformers` install lacks.
"""

import re

from transformers import PretrainedConfig
from transformers.utils import logging


logger = logging.get_logger(__name__)


# The classes a checkpoint's `auto_map` points at. `save_pretrained` only writes the entry of the class being
# saved, so the whole map is set here, on every config.
MOL_AUTO_MAP = {
    "AutoConfig": "configuration_mol.MoLConfig",
    "AutoModel": "modeling_mol.MoLModel",
    "AutoModelForMaskedLM": "modeling_mol.MoLForMaskedLM",
    "AutoModelForSequenceClassification": "modeling_mol.MoLForSequenceClassification",
    "AutoModelForTokenClassification": "modeling_mol.MoLForTokenClassification",
    "AutoModelForQuestionAnswering": "modeling_mol.MoLForQuestionAnswering",
    "AutoModelForMultipleChoice": "modeling_mol.MoLForMultipleChoice",
}

GROUP_LAYOUTS = ("stacked", "interleaved", "lid", "dense", "all")
GROUPED_GEMM_BACKENDS = ("auto", "hub_kernel", "grouped_mm", "loop")
# The mol-grouped-gemm kernel's major version (hub_kernels/mol-grouped-gemm/build.toml; a test keeps them equal).
GROUPED_GEMM_KERNEL_VERSION = 0
CLASSIFIER_POOLINGS = ("cls", "mean")
ROUTINGS = ("language", "token", "sentence")
# `languages="auto"` / `default_language="auto"`: identify each text's language, then route it.
AUTO_LANGUAGE = "auto"
LANGUAGE_IDENTIFIERS = ("input-embedding-linear",)
# The learned-routing options and their defaults for a MoE (routing="token" or "sentence"). The paper gives none of
# these values (it trains 5 experts, the size of MoL-30's 5 groups): they are the project's choices.
MOE_DEFAULTS = {
    "num_experts": None,  # required: the paper's equal-size baseline uses as many experts as MoL has groups
    "router_noise_std": 1.0,  # unit Gaussian noise on the gate logits in training (Shazeer et al.'s noisy gating)
    "router_aux_loss_coef": 0.01,  # the Switch Transformer's alpha = 1e-2 on the GShard load-balancing loss
}
_LID_SIZES = re.compile(r"^lid[:\-](\d+)-(\d+)-(\d+)$")
_EXPLICIT_SIZES = re.compile(r"^(?:lid:)?((?:\s*(?:first|shared|last)\s*=\s*\d+\s*,?)+)$")
_BARE_SIZES = re.compile(r"^(\d+)[-:,](\d+)[-:,](\d+)$")


def resolve_group_layers(layout, num_hidden_layers):
    """Turn a named layout (or an explicit list) into the sorted list of group-specific block indices.

    - `stacked`: a quarter of the blocks at each end (the paper's 6-12-6 of 24);
    - `interleaved`: every other block, starting with a group block;
    - `lid:a-b-c`: counted from the input side: the first a blocks group-specific, then b shared, then the last c
      group-specific (the paper's LID-based 6-9-9: blocks 0-5 and 15-23 of 24). The paper's Figure 1 letters run
      the other way (its "a=9, b=9, c=6" is this 6-9-9). Plain `lid` is 6-9-9 and so only valid for 24 blocks;
    - `first=a,shared=b,last=c` (or `lid:first=a,shared=b,last=c`): the same, with the direction in the words;
      a bare `a-b-c` could be read either way and is refused;
    - `dense`: none; `all`: every block.
    """
    n = num_hidden_layers
    if isinstance(layout, (list, tuple)):
        layers = []
        for index in layout:
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < n:
                raise ValueError(
                    f"group_layers contains {index!r}, which is not a block index: valid indices are 0..{n - 1} "
                    f"(num_hidden_layers={n})."
                )
            layers.append(index)
        if len(set(layers)) != len(layers):
            raise ValueError(f"group_layers {list(layout)} lists a block more than once.")
        return sorted(layers)
    if not isinstance(layout, str):
        raise ValueError(f"group_layers must be a list of block indices or a layout name, got {layout!r}.")
    if n == 0 and layout != "dense":
        raise ValueError(
            f"group_layers={layout!r} names a layout but num_hidden_layers=0: a model without blocks has no "
            "group-specific blocks; use group_layers='dense' or give num_hidden_layers >= 1."
        )
    if layout == "dense":
        return []
    if layout == "all":
        return list(range(n))
    if layout == "stacked":
        k = max(1, round(n / 4))
        return sorted(set(range(k)) | set(range(n - k, n)))
    if layout == "interleaved":
        return list(range(0, n, 2))
    if layout == "lid":
        layout = "lid:6-9-9"
    if _BARE_SIZES.match(layout.strip()):
        a, b, c = _BARE_SIZES.match(layout.strip()).groups()
        raise ValueError(
            f"group_layers={layout!r} could be read from the input side or, as the paper's Figure 1 letters run, from "
            f"the output side: write 'lid:{a}-{b}-{c}' (first {a} blocks group-specific, counted from the input) or "
            f"'first={a},shared={b},last={c}'."
        )
    explicit = _EXPLICIT_SIZES.match(layout.strip())
    if explicit:
        layout = _explicit_to_lid(layout, explicit.group(1))
    match = _LID_SIZES.match(layout)
    if match:
        a, b, c = (int(size) for size in match.groups())
        if a + b + c != n:
            raise ValueError(
                f"group_layers={layout!r} describes {a}+{b}+{c}={a + b + c} blocks but num_hidden_layers={n}: "
                f"give sizes that add up to {n}, e.g. 'lid:{n // 4}-{n - 2 * (n // 4)}-{n // 4}'."
            )
        return list(range(a)) + list(range(a + b, n))
    raise ValueError(
        f"Unknown group layout {layout!r}: use one of {list(GROUP_LAYOUTS)} (lid with sizes as 'lid:a-b-c'), "
        "or an explicit list of block indices."
    )


def _check_languages(languages, language_groups):
    """A list of codes and a dict of lists of codes; a bare string is the common slip (a list of its characters)."""
    if languages is not None and (
        isinstance(languages, str) or not isinstance(languages, (list, tuple)) or
        not all(isinstance(code, str) for code in languages)
    ):
        raise ValueError(
            f"languages must be a list of language codes such as ['eng_Latn', 'deu_Latn'], got {languages!r}."
        )
    if language_groups is not None and (
        not isinstance(language_groups, dict) or
        not all(isinstance(codes, (list, tuple)) and all(isinstance(c, str) for c in codes)
                for codes in language_groups.values())
    ):
        raise ValueError(
            f"language_groups must map group names to lists of codes, e.g. {{'germanic': ['eng_Latn', 'deu_Latn']}}; "
            f"got {language_groups!r}."
        )


def _check_sizes(**sizes):
    for name, value in sizes.items():
        low = 0 if name == "num_hidden_layers" else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")


def _explicit_to_lid(layout, body):
    """'first=a,shared=b,last=c' (each once) -> 'lid:a-b-c'."""
    sizes = {}
    for part in filter(None, (piece.strip() for piece in body.split(","))):
        name, value = (item.strip() for item in part.split("="))
        if name in sizes:
            raise ValueError(f"group_layers={layout!r} gives {name} twice.")
        sizes[name] = int(value)
    missing = [name for name in ("first", "shared", "last") if name not in sizes]
    if missing:
        raise ValueError(f"group_layers={layout!r} lacks {missing}: give first=a,shared=b,last=c.")
    return f"lid:{sizes['first']}-{sizes['shared']}-{sizes['last']}"


def layout_name(group_layers, num_hidden_layers):
    """'lid:a-b-c' when `group_layers` are one prefix and one suffix of the blocks (a, c >= 0, a + c >= 1), else None."""
    layers, n = sorted(group_layers), num_hidden_layers
    if not layers:
        return None
    first = 0
    while first < n and first in layers:
        first += 1
    last = len(layers) - first
    if last < 0 or layers != list(range(first)) + list(range(n - last, n)):
        return None
    return f"lid:{first}-{n - first - last}-{last}"


class MoLConfig(PretrainedConfig):
    r"""Configuration of a MoL encoder: an XLM-R encoder in which some blocks hold one weight copy per language group.

    The XLM-R fields keep XLM-R's names and meanings (a `XLMRobertaConfig`'s values carry over unchanged). On top:

    Args:
        languages (`list[str]`): ordered FLORES-style codes (`eng_Latn`, ...); `lang_ids` passed to the model index it.
        language_groups (`dict[str, list[str]]`): group name -> codes, a partition of `languages`. Group g's weight
            copy in every group-specific block is the g-th group in sorted name order.
        group_layers (`list[int]` or `str`): the group-specific block indices, or a layout name: `stacked`,
            `interleaved`, `lid` / `lid:a-b-c`, `dense`, `all`. Stored resolved; the name stays in `group_layout`.
        default_language (`str`, *optional*): the language used when a forward pass names none; `"auto"` identifies
            each text's language with the checkpoint's language identifier (`language_identifier`).
        language_identifier (`str`, *optional*): the checkpoint's language identifier, `None` (none) or
            `input-embedding-linear`: a linear model (multinomial logistic regression) over the mean of a text's input
            (word) embeddings, special tokens left out, fitted by `train_mlm.py` on its training data or by
            `train_mlm.py fit-language-id` for converted models. Its weights are the model's
            `language_identifier.weight` / `.bias` buffers.
        language_identifier_labels (`list[str]`): the codes it predicts (may include languages the model lacks).
        language_identifier_ignored_ids (`list[int]`): token ids left out of the mean (the tokenizer's special ids).
        language_identifier_threshold (`float`): the confidence (softmax probability) below which a prediction is not
            trusted (default 0.5).
        language_identifier_fallback (`str`, *optional*): where a text goes whose identified language the model lacks
            or whose confidence is below the threshold: a code of `languages`, or `"error"` (a ValueError naming the
            text's index). `None` (the default) means `default_language` when that is a code, else `"error"`.
        language_identifier_fitted_on (`str`, *optional*): what the identifier was fitted on (for the card).
        grouped_gemm_backend (`str`): `auto` (Hub kernel where it loads, else torch grouped_mm, else a per-group
            loop), or force one of `hub_kernel`, `grouped_mm`, `loop`.
        grouped_gemm_kernel (`str`, *optional*): Hub repo id of the grouped-GEMM kernel; `None` never loads one.
        grouped_gemm_kernel_version (`int`): the kernel's major version (its `v<N>` branch). 0 until the kernel's GPU
            figures are measured (the kernel repo's convention: v0 is unmeasured, v1 the first measured release).
        grouped_gemm_kernel_trust_remote_code (`bool` or `list[str]`): the user's explicit trust in a kernel repo
            whose publisher the Hub does not mark as a trusted kernel publisher (`kernels`' `trust_remote_code`: `True`,
            or a list of repo ids). `False` (the default) refuses such a kernel, says why, and runs the torch path.
            Never written to config.json: trust is the loading user's decision
            (`from_pretrained(..., grouped_gemm_kernel_trust_remote_code=True)`), not the checkpoint's.
        classifier_pooling (`str`): `cls` (XLM-R's first-token head) or `mean` for sequence classification.
        converted_from (`str`, *optional*): the checkpoint `from_xlm_roberta` started from (the card's `base_model`).
        sparse_prediction (`bool`): with `labels`, run the MLM head on the masked positions only and return logits
            of shape (masked tokens, vocab) (ModernBERT's option; `train_mlm.py` turns it on for speed). Off (the
            default), logits are (batch, seq_len, vocab) like every transformers MLM; the loss is the same.
        routing (`str`): `language` (MoL: every sentence through its language group's copy, the default), or the
            paper's Mixture-of-Experts baselines (Section 5): `token` (a learned top-1 gate sends each token to an
            expert) or `sentence` (the gate reads the sentence's mean and sends all its tokens to one expert). The
            routed blocks are `group_layers`, each block whole (attention, FFN, both LayerNorms) per expert.
        num_experts (`int`): experts per routed block (MoE only, >= 2; the paper's equal-size baseline: as many as
            MoL has groups).
        router_noise_std (`float`): std of the Gaussian noise added to the gate logits before the softmax, in
            training only (MoE only; default 1.0, the project's choice: the paper gives no value).
        router_aux_loss_coef (`float`): weight of the GShard load-balancing loss added to the MLM loss (MoE only;
            default 0.01, the project's choice after the Switch Transformer).
        output_router_logits (`bool`): return every routed block's gate logits (`router_logits`), as transformers'
            MoE models do.
    """

    model_type = "mol"

    def __init__(
        self,
        vocab_size=250002,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        hidden_act="gelu",
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        max_position_embeddings=514,
        type_vocab_size=1,
        initializer_range=0.02,
        layer_norm_eps=1e-5,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        tie_word_embeddings=True,
        classifier_dropout=None,
        classifier_pooling="cls",
        sparse_prediction=False,
        converted_from=None,
        languages=None,
        language_groups=None,
        group_layers="dense",
        group_layout=None,
        default_language=None,
        language_identifier=None,
        language_identifier_labels=None,
        language_identifier_ignored_ids=None,
        language_identifier_threshold=0.5,
        language_identifier_fallback=None,
        language_identifier_fitted_on=None,
        grouped_gemm_backend="auto",
        grouped_gemm_kernel="mol-encoders/mol-grouped-gemm",
        grouped_gemm_kernel_version=GROUPED_GEMM_KERNEL_VERSION,
        grouped_gemm_kernel_trust_remote_code=False,
        routing="language",
        num_experts=None,
        router_noise_std=None,
        router_aux_loss_coef=None,
        output_router_logits=False,
        **kwargs,
    ):
        kwargs.setdefault("auto_map", dict(MOL_AUTO_MAP))
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.max_position_embeddings = max_position_embeddings
        self.type_vocab_size = type_vocab_size
        self.initializer_range = initializer_range
        self.layer_norm_eps = layer_norm_eps
        self.classifier_dropout = classifier_dropout
        self.classifier_pooling = classifier_pooling
        self.sparse_prediction = sparse_prediction
        self.converted_from = converted_from
        _check_languages(languages, language_groups)
        _check_sizes(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
                     num_attention_heads=num_attention_heads, intermediate_size=intermediate_size,
                     max_position_embeddings=max_position_embeddings, type_vocab_size=type_vocab_size)
        self.languages = list(languages or [])
        # Weight copies follow the sorted group names: config.json is written with sorted keys, so no other order
        # would survive a save and load.
        self.language_groups = {name: list(codes) for name, codes in sorted((language_groups or {}).items())}
        self.group_layout = group_layout if group_layout is not None else (
            group_layers if isinstance(group_layers, str) else "custom"
        )
        self.group_layers = resolve_group_layers(group_layers, num_hidden_layers)
        self.default_language = default_language
        self.language_identifier = language_identifier
        self.language_identifier_labels = list(language_identifier_labels or [])
        self.language_identifier_ignored_ids = list(language_identifier_ignored_ids or [])
        self.language_identifier_threshold = language_identifier_threshold
        self.language_identifier_fallback = language_identifier_fallback
        self.language_identifier_fitted_on = language_identifier_fitted_on
        self.grouped_gemm_backend = grouped_gemm_backend
        self.grouped_gemm_kernel = grouped_gemm_kernel
        self.grouped_gemm_kernel_version = grouped_gemm_kernel_version
        self.grouped_gemm_kernel_trust_remote_code = grouped_gemm_kernel_trust_remote_code
        self.routing = routing
        self._set_moe_fields(num_experts, router_noise_std, router_aux_loss_coef)
        self.output_router_logits = output_router_logits
        self._validate_mol_fields()

    def _set_moe_fields(self, num_experts, router_noise_std, router_aux_loss_coef):
        """Learned routing's options: required or defaulted for a MoE, refused for a language-routed model (where
        they would silently do nothing)."""
        given = {"num_experts": num_experts, "router_noise_std": router_noise_std,
                 "router_aux_loss_coef": router_aux_loss_coef}
        if self.routing not in ROUTINGS:
            raise ValueError(f"routing {self.routing!r} is unknown: use one of {list(ROUTINGS)} ('language' is MoL; "
                             "'token' and 'sentence' are the paper's learned-routing MoE baselines).")
        if self.routing == "language":
            stray = {name: value for name, value in given.items() if value is not None}
            if stray:
                raise ValueError(f"{sorted(stray)} are options of learned routing (routing='token' or 'sentence'); "
                                 f"this model routes by language (routing='language'): remove {stray}.")
            self.num_experts = self.router_noise_std = self.router_aux_loss_coef = None
            return
        values = {name: MOE_DEFAULTS[name] if value is None else value for name, value in given.items()}
        experts = values["num_experts"]
        if isinstance(experts, bool) or not isinstance(experts, int) or experts < 2:
            raise ValueError(f"num_experts must be an integer >= 2 for routing={self.routing!r}, got {experts!r}.")
        for name in ("router_noise_std", "router_aux_loss_coef"):
            value = values[name]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 or value == float("inf"):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")
            values[name] = float(value)
        if not self.group_layers:
            raise ValueError(f"routing={self.routing!r} routes the blocks of group_layers, and there are none "
                             f"(group_layers={self.group_layout!r}): give the routed blocks, e.g. group_layers='stacked' "
                             "(the paper's MoE: 6-12-6).")
        if self.language_groups:
            # Kept (a tester's or a converted config may carry them) but never used to route: say so once.
            logger.warning_once(f"routing={self.routing!r} learns which expert each token goes to: language_groups "
                                f"{list(self.language_groups)} are kept in the config but not used for routing.")
        self.num_experts = experts
        self.router_noise_std = values["router_noise_std"]
        self.router_aux_loss_coef = values["router_aux_loss_coef"]

    def _validate_mol_fields(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not a multiple of num_attention_heads={self.num_attention_heads}."
            )
        if len(set(self.languages)) != len(self.languages):
            repeated = sorted({code for code in self.languages if self.languages.count(code) > 1})
            raise ValueError(f"languages lists {repeated} more than once.")
        known = set(self.languages)
        seen = {}
        for group, codes in self.language_groups.items():
            for code in codes:
                if code not in known:
                    raise ValueError(
                        f"language_groups[{group!r}] contains {code!r}, which is not in languages {self.languages}."
                    )
                if code in seen:
                    raise ValueError(f"{code!r} is in two language groups: {seen[code]!r} and {group!r}.")
                seen[code] = group
        missing = [code for code in self.languages if code not in seen]
        if self.language_groups and missing:
            raise ValueError(f"languages {missing} belong to no group of language_groups {list(self.language_groups)}.")
        if self.group_layers and not self.language_groups and not self.is_moe:
            raise ValueError(
                f"group_layers={self.group_layers} needs language_groups (group name -> codes) to route sentences; "
                "use group_layers='dense' for a model without group-specific blocks."
            )
        self._validate_language_identifier(known)
        if self.default_language not in (None, AUTO_LANGUAGE) and self.default_language not in known:
            raise ValueError(f"default_language {self.default_language!r} is not in languages {self.languages} "
                             f"(or {AUTO_LANGUAGE!r}: identify each text's language).")
        if self.grouped_gemm_backend not in GROUPED_GEMM_BACKENDS:
            raise ValueError(
                f"grouped_gemm_backend {self.grouped_gemm_backend!r} is unknown: use one of {list(GROUPED_GEMM_BACKENDS)}."
            )
        version = self.grouped_gemm_kernel_version
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            raise ValueError(
                f"grouped_gemm_kernel_version must be an integer >= 0 (the kernel repo's v<N> branch), got {version!r}."
            )
        trust = self.grouped_gemm_kernel_trust_remote_code
        if not isinstance(trust, bool) and not (isinstance(trust, list) and all(isinstance(t, str) for t in trust)):
            raise ValueError(
                f"grouped_gemm_kernel_trust_remote_code must be True, False or a list of kernel repo ids; got {trust!r}."
            )
        if not isinstance(self.output_router_logits, bool):
            raise ValueError(f"output_router_logits must be True or False, got {self.output_router_logits!r}.")
        if not isinstance(self.sparse_prediction, bool):
            raise ValueError(f"sparse_prediction must be True or False, got {self.sparse_prediction!r}.")
        if self.pad_token_id is not None and self.max_position_embeddings <= self.pad_token_id + 1:
            raise ValueError(
                f"max_position_embeddings={self.max_position_embeddings} leaves no position for a token: XLM-R's "
                f"positions start at pad_token_id + 1 = {self.pad_token_id + 1}."
            )
        if self.classifier_pooling not in CLASSIFIER_POOLINGS:
            raise ValueError(
                f"classifier_pooling {self.classifier_pooling!r} is unknown: use one of {list(CLASSIFIER_POOLINGS)}."
            )

    def _validate_language_identifier(self, known):
        identifier = self.language_identifier
        if identifier is not None and identifier not in LANGUAGE_IDENTIFIERS:
            raise ValueError(f"language_identifier {identifier!r} is unknown: use None or one of {list(LANGUAGE_IDENTIFIERS)}.")
        labels = self.language_identifier_labels
        if not all(isinstance(code, str) and code for code in labels) or len(set(labels)) != len(labels):
            raise ValueError(f"language_identifier_labels must be distinct language codes, got {labels!r}.")
        if identifier is not None and not labels:
            raise ValueError("language_identifier needs language_identifier_labels (the codes it predicts).")
        ignored = self.language_identifier_ignored_ids
        if any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < self.vocab_size for i in ignored):
            raise ValueError(f"language_identifier_ignored_ids must be token ids in 0..{self.vocab_size - 1}, got {ignored!r}.")
        threshold = self.language_identifier_threshold
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
            raise ValueError(f"language_identifier_threshold must be a probability in [0, 1], got {threshold!r}.")
        fallback = self.language_identifier_fallback
        if fallback not in (None, "error") and fallback not in known:
            raise ValueError(f"language_identifier_fallback {fallback!r} is not in languages {self.languages}: use one "
                             "of them, 'error', or None (default_language).")
        if self.default_language == AUTO_LANGUAGE and identifier is None:
            raise ValueError("default_language='auto' needs a language identifier, and this model has none: fit one "
                             "with `python train_mlm.py fit-language-id --model ...`, or name a default language.")

    def identifier_fallback(self):
        """Where an unidentifiable text goes: a code of `languages`, or "error"."""
        if self.language_identifier_fallback is not None:
            return self.language_identifier_fallback
        default = self.default_language
        return default if default not in (None, AUTO_LANGUAGE) else "error"

    def to_dict(self):
        output = super().to_dict()
        output.pop("grouped_gemm_kernel_trust_remote_code", None)
        return output

    @property
    def is_moe(self):
        """True for the learned-routing baselines (routing 'token' or 'sentence')."""
        return self.routing != "language"

    @property
    def num_groups(self):
        """Number of weight copies in a group-specific block: the experts of a MoE, the language groups of a MoL
        (1 when the model has no groups)."""
        if self.is_moe:
            return self.num_experts
        return max(1, len(self.language_groups))

    @property
    def group_names(self):
        return list(self.language_groups)

    def language_to_group(self):
        """Index of each language's group, in the order of `languages` (all 0 without groups, and for a MoE, whose
        routing is learned and whose language groups, when a config carries them, never route)."""
        if self.is_moe:
            return [0] * len(self.languages)
        group_of = {code: g for g, codes in enumerate(self.language_groups.values()) for code in codes}
        return [group_of.get(code, 0) for code in self.languages]


__all__ = ["MoLConfig"]
