"""The encoder mteb 2.x evaluates: `mteb.evaluate(mteb_encoder("org/mol"), tasks=[...])`.

mteb tells `encode` the task and the subset (`hf_subset`) of every call; the subset's languages
(`task_metadata.eval_langs[hf_subset]`, e.g. `fra-Latn`) are resolved to the model's FLORES codes through the
language table, and every text of the call is routed by that language.

Cross-lingual subsets (STS17 `en-de`): mteb's STS and pair-classification evaluators encode the first column in one
`encode` call and then the second column in another, with the same task, split and subset, and nothing in the call
says which column it holds (the column is renamed to `text`). So the encoder counts the calls of each (task, split,
subset): the first is routed by the subset's first language, the second by its second language, and so on
alternately. Every call's routing is recorded in `routing_log`, which `evaluate_mol.py` writes into its results.
"""

import hashlib
import json
from collections import Counter
from pathlib import Path

from .encoder import SentenceEncoder


ROUTINGS = ("subset", "auto")


class SubsetSkipped(ValueError):
    """A subset whose language the model does not know (and no default language was asked for)."""


def subset_languages(task_metadata, hf_subset):
    """The mteb language codes (`eng-Latn`) of one subset of a task, in the subset's order."""
    eval_langs = task_metadata.eval_langs
    if isinstance(eval_langs, dict):
        if hf_subset not in eval_langs:
            raise ValueError(f"Task {task_metadata.name} has no subset {hf_subset!r}: its subsets are {list(eval_langs)}.")
        return list(eval_langs[hf_subset])
    return list(eval_langs)


class MoLMTEBEncoder:
    """mteb 2.x's encoder protocol over `SentenceEncoder`, with each subset routed by its language.

    Args:
        model_name: a MoL bundle, a Hub repo id or any transformers encoder.
        revision: its Hub revision.
        default_language: route subsets in languages the model does not know to this language (recorded), instead of
            refusing them. None (the default) refuses them: `plan` lists them as skipped with the reason. With
            routing "auto", it is also where texts go that the identifier cannot place.
        routing: "subset" (the papers' way: every text by its subset's language) or "auto" (every text by the
            language the model's identifier finds, to measure what identification costs; the same subsets are
            evaluated, so the two are comparable).
        **options: `SentenceEncoder`'s (device, dtype, batch_size, max_length, show_progress_bar).
    """

    def __init__(self, model_name, revision=None, *, device=None, default_language=None, routing="subset", **options):
        if routing not in ROUTINGS:
            raise ValueError(f"routing {routing!r} is unknown: use one of {list(ROUTINGS)}.")
        self.encoder = SentenceEncoder(model_name, revision=revision, device=device, **options)
        self.default_language = None
        if default_language is not None:
            if not self.encoder.routes:
                raise ValueError(f"default_language={default_language!r}: {model_name!r} does not route by language.")
            self.default_language = self.encoder.languages[self.encoder.language_index(default_language)]
        self.routing = routing if self.encoder.routes else "subset"  # an encoder without routing has nothing to find
        if self.routing == "auto":
            self._check_auto_routing(model_name)
        self.mteb_model_meta = model_meta(self.encoder)
        self.routing_log = []
        self._calls = Counter()

    def _check_auto_routing(self, model_name):
        if not self.encoder.identifies:
            raise ValueError(f"--routing auto: {model_name!r} has no language identifier; fit one with "
                             "`python train_mlm.py fit-language-id --model ...`.")
        config = self.encoder.config
        fallback = self.default_language or config.language_identifier_fallback or (
            config.default_language if config.default_language not in (None, "auto") else None)
        if fallback in (None, "error"):
            raise ValueError(f"--routing auto: texts the identifier of {model_name!r} cannot place need a language to "
                             "go to: pass --default-language CODE (one of its languages).")
        self.encoder.identifier_fallback = fallback

    def set_max_length(self, max_length):
        """Cut every text at `max_length` tokens (a comparison uses one length for all its models)."""
        if isinstance(max_length, bool) or not isinstance(max_length, int) or \
                not 2 <= max_length <= self.encoder.max_length_limit:
            raise ValueError(f"max_length={max_length} is out of range for {self.encoder.name!r}: its position table "
                             f"allows 2..{self.encoder.max_length_limit} tokens.")
        self.encoder.max_length = max_length
        self.mteb_model_meta = model_meta(self.encoder)

    # -- routing ------------------------------------------------------------------------------------------------
    def route_subset(self, task_metadata, hf_subset):
        """The FLORES code of each language of a subset (None for an encoder that needs no routing), or
        SubsetSkipped naming the languages the model lacks."""
        from mol_toolkit.languages import resolve_language_code

        codes = subset_languages(task_metadata, hf_subset)
        if not self.encoder.routes:
            return [None] * len(codes)
        from mol_toolkit.languages import unresolved_reason

        routed = [resolve_language_code(code, self.encoder.languages, macrolanguage="standard") for code in codes]
        unknown = [code for code, flores in zip(codes, routed) if flores is None]
        if unknown and self.default_language is None:
            why = "; ".join(unresolved_reason(code, self.encoder.languages) for code in unknown)
            raise SubsetSkipped(
                f"{task_metadata.name} subset {hf_subset!r} is in {unknown}, which the model does not know ({why}; "
                f"its languages: {self.encoder.languages}); pass a default language to route it there."
            )
        return [flores or self.default_language for flores in routed]

    def plan(self, task):
        """(subsets to evaluate with their routing, {skipped subset: reason}) of an mteb task."""
        kept, skipped = {}, {}
        for hf_subset in task.hf_subsets:
            try:
                kept[hf_subset] = self.route_subset(task.metadata, hf_subset)
            except SubsetSkipped as reason:
                skipped[hf_subset] = str(reason)
        return kept, skipped

    # -- mteb's encoder protocol --------------------------------------------------------------------------------
    def encode(self, inputs, *, task_metadata, hf_split, hf_subset, prompt_type=None, **kwargs):
        texts = [text for batch in inputs for text in batch["text"]]
        routes = self.route_subset(task_metadata, hf_subset)
        key = (task_metadata.name, hf_split, hf_subset)
        side = self._calls[key] % len(routes) if len(set(routes)) > 1 else 0
        self._calls[key] += 1
        code = subset_languages(task_metadata, hf_subset)[side]
        entry = {
            "task": task_metadata.name, "split": hf_split, "subset": hf_subset, "call": self._calls[key],
            "side": side, "subset_language": code, "routed_to": routes[side], "texts": len(texts),
            "default_language_used": self.encoder.routes and not self._knows(code),
        }
        if self.routing == "auto":
            embeddings = self.encoder.encode(texts, "auto")
            found = Counter(self.encoder.last_identified or [])
            entry.update(routed_to="auto", identified=dict(found),
                         identified_as_subset_language=found.get(routes[side], 0) / len(texts) if texts else None)
            self.routing_log.append(entry)
            return embeddings
        self.routing_log.append(entry)
        return self.encoder.encode(texts, routes[side])

    def _knows(self, code):
        from mol_toolkit.languages import resolve_language_code

        return resolve_language_code(code, self.encoder.languages, macrolanguage="standard") is not None

    def similarity(self, embeddings1, embeddings2):
        from mteb.similarity_functions import cos_sim

        return cos_sim(embeddings1, embeddings2)

    def similarity_pairwise(self, embeddings1, embeddings2):
        from mteb.similarity_functions import pairwise_cos_sim

        return pairwise_cos_sim(embeddings1, embeddings2)


def model_revision(encoder):
    """The Hub commit of a Hub model; for a local folder, a digest of its config and weight files (name, size,
    modification time), so a retrained bundle in the same folder is a new revision."""
    if encoder.revision:
        return encoder.revision
    commit = getattr(encoder.config, "_commit_hash", None)
    if commit:
        return commit
    folder = Path(encoder.name).expanduser()
    digest = hashlib.sha256()
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if path.suffix in (".json", ".safetensors", ".bin"):
            stat = path.stat()
            digest.update(json.dumps([path.name, stat.st_size, stat.st_mtime_ns]).encode())
    return digest.hexdigest()[:16]


def model_label(name):
    """mteb's model name: the Hub id, or `local/<folder>` for a folder."""
    path = Path(name).expanduser()
    if path.exists():
        resolved = path.resolve()
        return f"local/{resolved.parent.name}-{resolved.name}" if resolved.name == "model" else f"local/{resolved.name}"
    return name


def model_meta(encoder):
    from mteb.models.model_meta import ModelMeta, ScoringFunction

    config = encoder.config
    languages = [code.replace("_", "-") for code in encoder.languages] if encoder.languages else None
    return ModelMeta.create_empty({
        "name": model_label(encoder.name),
        "revision": model_revision(encoder),
        "languages": languages,
        "max_tokens": encoder.max_length,
        "embed_dim": config.hidden_size,
        "framework": ["PyTorch"],
        "similarity_fn_name": ScoringFunction.COSINE,
        "use_instructions": False,
        "open_weights": True,
        "reference": None,
        "experiment_kwargs": {"pooling": "mean", "max_length": encoder.max_length,
                              "dtype": str(encoder.dtype).removeprefix("torch.")},
    })


def mteb_encoder(model_name_or_path, **options):
    """An encoder that `mteb.evaluate(encoder, tasks=[...])` accepts: mean-pooled last-layer outputs, each subset
    routed by its language. Options: revision, device, dtype, batch_size, max_length, default_language,
    show_progress_bar."""
    return MoLMTEBEncoder(model_name_or_path, **options)
