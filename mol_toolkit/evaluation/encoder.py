"""Sentence embeddings of any transformers encoder, the papers' way: the mean of the last layer's outputs over the
real tokens of each text (Mixture of Languages, Section 3.2).

One class serves a MoL bundle, a Hub repo id and any plain encoder (XLM-R, mBERT, the papers' baselines). A MoL model
with group-specific blocks gets each text's language (FLORES codes, or any code the language table resolves); texts
are batched by language group, then by length, so every batch is as short and as single-group as it can be, and the
caller's order is restored at the end.
"""

import re
from pathlib import Path

import numpy as np
import torch


class EncoderLoadError(ValueError):
    """The model or its tokenizer cannot be loaded (a missing folder, an unknown Hub repo)."""


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def check_model_source(name):
    """Refuse a model that cannot exist before any work: a missing local folder, or a folder without config.json."""
    if not isinstance(name, str) or not name.strip():
        raise EncoderLoadError(f"A model must be a local folder or a Hub repo id, got {name!r}.")
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise EncoderLoadError(f"Model folder {str(path)!r} has no config.json: is it a transformers checkpoint?")
    elif not HUB_ID.match(name) or name.startswith((".", "~")):
        raise EncoderLoadError(f"Model path {name!r} does not exist (and is not a Hub repo id of the form org/name).")


# Models whose embeddings number positions from padding_idx + 1 (XLM-R's scheme).
OFFSET_POSITIONS = ("mol", "xlm-roberta", "roberta", "camembert")


def position_limit(config):
    """The longest input (special tokens included) the model's position table allows: XLM-R-style embeddings lose
    pad_token_id + 1 rows of max_position_embeddings (514 -> 512), BERT-style ones use every row."""
    limit = getattr(config, "max_position_embeddings", None)
    if limit is not None and getattr(config, "model_type", None) in OFFSET_POSITIONS:
        return limit - config.pad_token_id - 1
    return limit


def routes_by_language(config):
    """A MoL model with group-specific blocks needs each text's language; a dense MoL and other encoders do not."""
    return (getattr(config, "model_type", None) == "mol" and getattr(config, "routing", "language") == "language"
            and bool(config.group_layers) and config.num_groups > 1)


class SentenceEncoder:
    """Mean-pooled sentence embeddings of a transformers encoder, each text routed by its language.

    Args:
        model_name_or_path: a MoL bundle folder, a Hub repo id, or any transformers encoder.
        device: `cuda` when available, else `cpu`, unless given.
        dtype: `auto` (bf16 on CUDA, fp32 on CPU), `float32`, `bfloat16` or `float16`.
        batch_size: texts per forward pass.
        max_length: tokens per text, special tokens included; at most (and by default) what the model's position
            table allows (and at most 512).
        revision: Hub revision of the model.
        show_progress_bar: a progress bar over the batches of each `encode` call.
        random_routing_seed: a MoE baseline only: route to uniformly random experts drawn from this seed instead of
            the learned router (the paper's Appendix A comparison); None (the default) keeps the learned routing.
        identifier_fallback: with `languages="auto"`, where texts go that the model's language identifier cannot
            place (a code of the model's, or "error"); None keeps the checkpoint's setting.
    """

    def __init__(self, model_name_or_path, *, device=None, dtype="auto", batch_size=32, max_length=None,
                 revision=None, show_progress_bar=True, trust_remote_code=True, random_routing_seed=None,
                 identifier_fallback=None):
        from transformers import AutoConfig

        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        check_model_source(model_name_or_path)
        self.name, self.revision = model_name_or_path, revision
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = resolve_dtype(dtype, self.device)
        self.batch_size, self.show_progress_bar = batch_size, show_progress_bar
        self._trust = trust_remote_code
        try:
            self.config = AutoConfig.from_pretrained(model_name_or_path, revision=revision,
                                                     trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as error:
            raise EncoderLoadError(f"Cannot load model {model_name_or_path!r}: {error}") from None
        self.routes = routes_by_language(self.config)
        if random_routing_seed is not None:
            if getattr(self.config, "routing", "language") == "language":
                raise ValueError(f"random_routing_seed={random_routing_seed!r}: {model_name_or_path!r} has no learned "
                                 "router (random routing is the MoE baselines' comparison).")
            if isinstance(random_routing_seed, bool) or not isinstance(random_routing_seed, int):
                raise ValueError(f"random_routing_seed must be an integer, got {random_routing_seed!r}.")
        self.random_routing_seed = random_routing_seed
        self.languages = list(getattr(self.config, "languages", None) or []) if self.routes else None
        self.identifies = self.routes and getattr(self.config, "language_identifier", None) is not None
        if identifier_fallback not in (None, "error") and identifier_fallback not in (self.languages or []):
            raise ValueError(f"identifier_fallback {identifier_fallback!r} is not one of {model_name_or_path!r}'s "
                             f"languages {self.languages} (or 'error').")
        self.identifier_fallback = identifier_fallback
        self.last_identified = None  # with languages="auto": the language each text of the last call was routed by
        limit = position_limit(self.config)
        self.max_length_limit = min(limit, 512) if limit else 512
        if max_length is None:
            max_length = self.max_length_limit
        if isinstance(max_length, bool) or not isinstance(max_length, int) or not 2 <= max_length <= self.max_length_limit:
            raise ValueError(
                f"max_length={max_length!r} is out of range for {model_name_or_path!r}: its position table allows "
                f"2..{self.max_length_limit} tokens."
            )
        self.max_length = max_length
        self._model = self._tokenizer = None

    # -- loading, on first use: a plan can be made from the config alone ----------------------------------------
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            try:
                self._tokenizer = AutoTokenizer.from_pretrained(self.name, revision=self.revision,
                                                                trust_remote_code=self._trust)
            except (OSError, ValueError) as error:
                raise EncoderLoadError(f"Cannot load the tokenizer of {self.name!r}: {error}") from None
        return self._tokenizer

    @property
    def model(self):
        if self._model is None:
            from transformers import AutoModel

            kwargs = dict(revision=self.revision, trust_remote_code=self._trust, dtype=self.dtype)
            try:  # the pooler is never used: the papers pool the last layer's token outputs
                model = AutoModel.from_pretrained(self.name, add_pooling_layer=False, **kwargs)
            except TypeError:
                model = AutoModel.from_pretrained(self.name, **kwargs)
            self._model = model.to(self.device).eval()
            if self.random_routing_seed is not None:
                self._model.set_random_routing(self.random_routing_seed)
            if self.identifier_fallback is not None:
                self._model.config.language_identifier_fallback = self.identifier_fallback
        return self._model

    @property
    def embedding_dim(self):
        return self.config.hidden_size

    # -- languages ----------------------------------------------------------------------------------------------
    def language_index(self, code):
        """Index into config.languages of a code (any form the language table resolves), or a ValueError."""
        from mol_toolkit.languages import resolve_language_code

        resolved = resolve_language_code(code, self.languages)
        if resolved is None:
            raise ValueError(f"Language {code!r} is not one of this model's languages {self.languages}.")
        return self.languages.index(resolved)

    def identify(self, encoded):
        """Indices into config.languages of tokenized texts, by the checkpoint's language identifier."""
        if not self.identifies:
            raise ValueError(f"languages='auto' needs a language identifier, and {self.name!r} has none: fit one with "
                             "`python train_mlm.py fit-language-id --model ...`.")
        from mol_toolkit.training.language_identification import padded_batches

        found = []
        for input_ids, mask in padded_batches(encoded, self.tokenizer.pad_token_id, self.batch_size * 8):
            found += self.model.identify_languages(input_ids.to(self.device), mask.to(self.device)).lang_ids.tolist()
        self.last_identified = [self.languages[i] for i in found]
        return found

    def _lang_ids(self, languages, count):
        if not self.routes or languages == "auto":
            return None  # "auto": identified after tokenization
        if languages is None:
            default = getattr(self.config, "default_language", None)
            if default is None:
                raise ValueError(
                    f"{self.name!r} routes every text by its language: pass `languages` (one code, or one per text)."
                )
            languages = default
        if isinstance(languages, str):
            return [self.language_index(languages)] * count
        languages = list(languages)
        if len(languages) != count:
            raise ValueError(f"`languages` has {len(languages)} codes for {count} texts: give one per text, or one code.")
        index = {code: self.language_index(code) for code in set(languages)}
        return [index[code] for code in languages]

    # -- encoding -----------------------------------------------------------------------------------------------
    def batches(self, lengths, lang_ids):
        """Batches of text indices: ordered by language group, then by decreasing length."""
        groups = [0] * len(lengths)
        if lang_ids is not None:
            group_of = self.config.language_to_group() if hasattr(self.config, "language_to_group") else None
            groups = [group_of[i] for i in lang_ids] if group_of else list(lang_ids)
        order = sorted(range(len(lengths)), key=lambda i: (groups[i], -lengths[i], i))
        return [order[start:start + self.batch_size] for start in range(0, len(order), self.batch_size)]

    def encode(self, texts, languages=None):
        """(len(texts), hidden) float32 embeddings, in the order of `texts`."""
        return self._encode(texts, languages, all_layers=False)

    def encode_layers(self, texts, languages=None):
        """(layer outputs, len(texts), hidden) float32: the mean-pooled output of the embeddings and of every block,
        the embeddings first, from one forward pass per batch for all layers together."""
        return self._encode(texts, languages, all_layers=True)

    @torch.inference_mode()
    def _encode(self, texts, languages, all_layers):
        from tqdm.auto import tqdm

        if isinstance(texts, str):
            raise ValueError("encode takes a list of texts; wrap a single text in a list.")
        texts = list(texts)
        bad = [i for i, text in enumerate(texts) if not isinstance(text, str)]
        if bad:
            raise ValueError(f"Texts must be strings: item {bad[0]} is {type(texts[bad[0]]).__name__}.")
        lang_ids = self._lang_ids(languages, len(texts))
        shape = (len(texts), self.embedding_dim)
        output = np.zeros((self.config.num_hidden_layers + 1, *shape) if all_layers else shape, dtype=np.float32)
        if not texts:
            return output
        encoded = self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]
        if self.routes and languages == "auto":
            lang_ids = self.identify(encoded)
        pad = self.tokenizer.pad_token_id
        for batch in tqdm(self.batches([len(ids) for ids in encoded], lang_ids), desc=f"Encoding {len(texts)} texts",
                          disable=not self.show_progress_bar, leave=False):
            width = max(len(encoded[i]) for i in batch)
            input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                input_ids[row, :len(encoded[i])] = torch.tensor(encoded[i])
                mask[row, :len(encoded[i])] = 1
            inputs = dict(input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device))
            if lang_ids is not None:
                inputs["lang_ids"] = torch.tensor([lang_ids[i] for i in batch], device=self.device)
            if all_layers:
                layers = self.model(**inputs, output_hidden_states=True).hidden_states
                for index, hidden in enumerate(layers):
                    output[index, batch] = mean_pool(hidden.float(), inputs["attention_mask"]).cpu().numpy()
            else:
                hidden = self.model(**inputs).last_hidden_state.float()
                output[batch] = mean_pool(hidden, inputs["attention_mask"]).cpu().numpy()
        return output


def mean_pool(hidden, attention_mask):
    """The mean of the token outputs over real tokens (attention_mask 1)."""
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)


def resolve_dtype(dtype, device):
    names = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype) and dtype in names.values():
        return dtype
    if dtype not in names:
        raise ValueError(f"dtype {dtype!r} is unknown: use 'auto' (bf16 on CUDA, fp32 on CPU) or one of {list(names)}.")
    return names[dtype]
