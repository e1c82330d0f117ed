"""sentence-transformers' input module for MoL bundles: `SentenceTransformer(bundle, trust_remote_code=True)`.

Every MoL bundle names this module in its `modules.json` (then mean pooling), so sentence-transformers loads it from
the bundle as remote code. What it adds to sentence-transformers' own `Transformer` module is the language of each
text, which MoL routes by:

    model.encode([{"text": "Bonjour", "language": "fra_Latn"}, {"text": "Hello", "language": "eng_Latn"}])
    model.encode(["Bonjour", "Salut"], languages="fra_Latn")   # one code for every text
    model.encode(["Bonjour"])                                  # the model's default_language
    model.encode(["Bonjour", "Hello"], languages="auto")       # each text's language identified, then routed
    model.encode([{"text": "Bonjour", "language": "auto"}])    # the same, text by text

With "auto" (given, or as the model's default_language) the checkpoint's language identifier picks each text's
language; `model.encode(texts, output_value=None)` returns each text's `lang_ids` (index into config.languages)
beside its embedding, for inspection.

sentence-transformers sorts the texts by length before batching and passes `encode`'s keyword arguments unchanged to
every batch, so a separate per-text list of codes cannot stay aligned with its texts: a list that names more than
one language is refused. Texts that carry their own language stay with it through the sort.

Flat remote-code file: copied beside modeling_mol.py into every exported checkpoint; only sentence-transformers
imports it.
"""

import torch


AUTO = "auto"  # configuration_mol's AUTO_LANGUAGE; this file imports no sibling (only sentence-transformers loads it)

try:
    from sentence_transformers.base.modules import Transformer
except ImportError:  # sentence-transformers 5.x
    from sentence_transformers.models import Transformer


def texts_and_languages(inputs, languages=None):
    """(texts, one code per text or None) from plain texts plus `languages`, or from {"text", "language"} dicts."""
    dicts = [isinstance(item, dict) for item in inputs]
    if any(dicts):
        if not all(dicts):
            raise ValueError("Mix of texts and {'text', 'language'} dicts in one call: use one form for every input.")
        if languages is not None:
            raise ValueError("Inputs carry their own languages: do not pass `languages` as well.")
        for index, item in enumerate(inputs):
            if set(item) != {"text", "language"}:
                raise ValueError(
                    f"Input {index} has keys {sorted(item)}: a MoL input dict is {{'text': ..., 'language': code}}."
                )
        return [item["text"] for item in inputs], [item["language"] for item in inputs]
    if languages is None:
        return list(inputs), None
    if isinstance(languages, str):
        return list(inputs), [languages] * len(inputs)
    codes = set(languages)
    if len(codes) > 1:
        raise ValueError(
            "A per-text `languages` list cannot stay aligned with its texts: sentence-transformers sorts the texts "
            "by length before batching. Pass each text with its language instead: "
            "model.encode([{'text': ..., 'language': 'fra_Latn'}, ...]), or one code for all texts."
        )
    return list(inputs), [codes.pop()] * len(inputs) if codes else None


class MoLSentenceTransformer(Transformer):
    """sentence-transformers' Transformer module, with each text's language turned into MoL's `lang_ids`."""

    def language_ids(self, codes, features=None):
        """Indices into config.languages of `codes`; "auto" ones identified from the tokenized `features`."""
        known = list(self.model.config.languages)
        for code in codes:
            if code not in known and code != AUTO:
                raise ValueError(f"Unknown language {code!r}: this MoL model knows {known} (or {AUTO!r}).")
        ids = torch.tensor([known.index(code) if code != AUTO else -1 for code in codes], dtype=torch.long)
        auto = [i for i, code in enumerate(codes) if code == AUTO]
        if auto:
            device = self.model.get_input_embeddings().weight.device
            found = self.model.identify_languages(features["input_ids"][auto].to(device),
                                                  features["attention_mask"][auto].to(device))
            ids[auto] = found.lang_ids.cpu()
        return ids

    def preprocess(self, inputs, prompt=None, languages=None, **kwargs):
        texts, codes = texts_and_languages(inputs, languages)
        features = super().preprocess(texts, prompt=prompt, **kwargs)
        if codes is None and getattr(self.model.config, "default_language", None) == AUTO:
            codes = [AUTO] * len(texts)  # identified here, so that the features show what each text was routed by
        if codes is not None and texts:
            features["lang_ids"] = self.language_ids(codes, features)
        return features

    def forward(self, features, languages=None, **kwargs):
        # The codes were turned into features["lang_ids"] by preprocess, batch by batch.
        return super().forward(features, **kwargs)
