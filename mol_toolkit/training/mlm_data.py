"""MLM data: per-language sources, caps and deduplication, tokenization cached once per language, language sampling,
group-ordered batches with a fixed number of sentences, and 15% (80/10/10) masking.

Everything random here is a pure function of (seed, step, rank) or of the language and a fixed evaluation seed, so a
resumed run draws exactly the batches and masks the uninterrupted run would have drawn, and every model of a sweep
is evaluated on the same masked devtest batches.
"""

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mol_toolkit import text_sources
from mol_toolkit.text_sources import collect_texts, per_language_sources


logger = logging.getLogger(__name__)

CACHE_FORMAT = 1  # bump when the cached layout changes
EVAL_SEED = 20250  # the same masked devtest batches for every model, whatever its seed
TOKENIZATIONS = []  # (language, split) of every tokenization done by this process: the sweep's once-per-language check


# -- tokenization, cached once per language


def tokenizer_fingerprint(tokenizer):
    """A hash of what decides the token ids: the vocabulary and the special tokens."""
    vocab = sorted(tokenizer.get_vocab().items())
    blob = json.dumps([vocab, tokenizer.all_special_tokens, type(tokenizer).__name__], ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


_PARTIAL = re.compile(r"^\..+-pid(\d+)-[^/]+$")


def remove_dead_partials(cache_dir):
    """Temporary tokenization folders whose writer process is gone (a killed run); a live writer's are kept."""
    folder = Path(os.path.expanduser(cache_dir))
    if not folder.is_dir():
        return []
    removed = []
    for entry in folder.iterdir():
        match = _PARTIAL.match(entry.name)
        if match and entry.is_dir() and not _alive(int(match.group(1))):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def tokenized_language(lang, split, sources, tokenizer, max_length, cache_dir, max_sentences=None,
                       min_sentences=None, deduplicate=True):
    """The tokenized sentences of one language and split (a datasets.Dataset with `input_ids`), built once and kept
    under cache_dir; later runs with the same sources, caps, tokenizer and length reuse it."""
    from datasets import Dataset, load_from_disk
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()  # the run's own progress bar is the one to watch
    key = json.dumps([CACHE_FORMAT, lang, split, sources, max_sentences, min_sentences, deduplicate, max_length,
                      tokenizer_fingerprint(tokenizer)], sort_keys=True, default=str)
    folder = Path(os.path.expanduser(cache_dir)) / f"{lang}-{split}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    if folder.is_dir():
        return load_from_disk(str(folder))
    texts = collect_texts(lang, sources, max_sentences, min_sentences, deduplicate, role=f"{split} data")
    TOKENIZATIONS.append((lang, split))
    logger.info(f"Tokenizing {len(texts)} {split} sentences of {lang} (cached in {folder}).")
    encoded = tokenizer(texts, truncation=True, max_length=max_length, add_special_tokens=True,
                        return_attention_mask=False)["input_ids"]
    dataset = Dataset.from_dict({"input_ids": encoded})
    # Written beside the final folder and renamed: a killed run never leaves a half-written cache behind.
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{folder.name}-pid{os.getpid()}-", dir=folder.parent))
    dataset.save_to_disk(str(partial))
    try:
        partial.rename(folder)
    except OSError:  # another process finished the same language first: keep its copy
        shutil.rmtree(partial, ignore_errors=True)
    return load_from_disk(str(folder))


# -- sampling and batches


def language_probabilities(sizes, sampling, temperature):
    """p_l proportional to n_l (proportional) or to n_l^(1/T) (temperature), as in XLM-R."""
    counts = np.asarray(sizes, dtype=np.float64)
    weights = counts if sampling == "proportional" else counts ** (1.0 / temperature)
    return weights / weights.sum()


class LanguageBatchSampler:
    """Global batches of `world_size x sentences_per_device` (language, index) pairs.

    The languages of step s are drawn from a generator seeded by (seed, s); each language is read through an endless
    series of shuffled epochs, and how far each one has been read (its cursor) is the only state, saved in
    checkpoints. Each rank takes its slice and orders it by language group, so the model's group sort is free.
    """

    def __init__(self, sizes, probabilities, sentences_per_device, world_size, seed, group_of_language):
        self.sizes = list(sizes)
        self.probabilities = np.asarray(probabilities)
        self.sentences_per_device = sentences_per_device
        self.world_size = world_size
        self.seed = seed
        self.group_of_language = list(group_of_language)
        self.cursors = [0] * len(self.sizes)
        self._epochs = {}
        self._drawn = None  # (step, the step's global batch): the micro-batches of one step share one draw

    def state_dict(self):
        return {"cursors": list(self.cursors)}

    def load_state_dict(self, state):
        if len(state["cursors"]) != len(self.sizes):
            raise ValueError(f"The checkpoint's sampler covers {len(state['cursors'])} languages, this run "
                             f"{len(self.sizes)}: resume with the same languages.")
        self.cursors = list(state["cursors"])
        self._drawn = None

    def _order(self, language, epoch):
        key = (language, epoch)
        if key not in self._epochs:
            self._epochs = {k: v for k, v in self._epochs.items() if k[0] != language}
            rng = np.random.default_rng([self.seed, language, epoch])
            self._epochs[key] = rng.permutation(self.sizes[language])
        return self._epochs[key]

    def _draw(self, step):
        total = self.sentences_per_device * self.world_size
        rng = np.random.default_rng([self.seed, 7, step])
        languages = rng.choice(len(self.sizes), size=total, p=self.probabilities)
        picked = [None] * total
        for language in np.unique(languages):
            where = np.flatnonzero(languages == language)
            for slot, index in zip(where, self._take(int(language), len(where))):
                picked[slot] = (int(language), index)
        return picked

    def _take(self, language, count):
        indices = []
        for _ in range(count):
            epoch, position = divmod(self.cursors[language], self.sizes[language])
            indices.append(int(self._order(language, epoch)[position]))
            self.cursors[language] += 1
        return indices

    def next_batch(self, step, rank):
        """Slot `rank`'s (language, index) pairs of step `step`, ordered by group then language. The first call for
        a step draws the step's global batch and advances all cursors; other slots of the same step (a process's
        accumulation micro-batches) take their part of that draw."""
        if self._drawn is None or self._drawn[0] != step:
            self._drawn = (step, self._draw(step))
        picked = self._drawn[1]
        mine = picked[rank * self.sentences_per_device:(rank + 1) * self.sentences_per_device]
        return sorted(mine, key=lambda pair: (self.group_of_language[pair[0]], pair[0]))


# -- masking and collation


@dataclass
class MaskingSpec:
    mask_token_id: int
    pad_token_id: int
    vocab_size: int
    special_token_ids: tuple
    probability: float = 0.15

    @classmethod
    def from_tokenizer(cls, tokenizer, probability=0.15):
        """The tokenizer's mask and pad ids, its size, and its special tokens (never masked) but padding."""
        return cls(mask_token_id=tokenizer.mask_token_id, pad_token_id=tokenizer.pad_token_id,
                   vocab_size=len(tokenizer),
                   special_token_ids=tuple(sorted(set(tokenizer.all_special_ids) - {tokenizer.pad_token_id})),
                   probability=probability)


def mask_tokens(input_ids, spec, generator):
    """BERT masking: `probability` of the real, non-special tokens are selected; of those 80% become <mask>, 10% a
    random token, 10% stay. Returns (input_ids, labels) with -100 where nothing is predicted."""
    eligible = ~torch.isin(input_ids, torch.tensor(spec.special_token_ids + (spec.pad_token_id,)))
    selected = (torch.rand(input_ids.shape, generator=generator) < spec.probability) & eligible
    if not selected.any() and eligible.any():
        # A batch with nothing to predict would give a NaN loss: predict its first real token instead.
        selected.view(-1)[eligible.view(-1).nonzero()[0]] = True
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, -100))
    roll = torch.rand(input_ids.shape, generator=generator)
    random_tokens = torch.randint(spec.vocab_size, input_ids.shape, generator=generator)
    masked = input_ids.clone()
    masked[selected & (roll < 0.8)] = spec.mask_token_id
    swap = selected & (roll >= 0.8) & (roll < 0.9)
    masked[swap] = random_tokens[swap]
    return masked, labels


def pad_batch(sequences, pad_token_id):
    """Right-padded input_ids and attention_mask for a list of token-id lists."""
    longest = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), longest), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        input_ids[row, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
        attention_mask[row, : len(sequence)] = 1
    return input_ids, attention_mask


def mlm_batch(sequences, lang_ids, spec, generator):
    """A masked batch: input_ids, attention_mask, labels and lang_ids (one language index per sentence)."""
    input_ids, attention_mask = pad_batch(sequences, spec.pad_token_id)
    input_ids, labels = mask_tokens(input_ids, spec, generator)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
            "lang_ids": torch.tensor(lang_ids, dtype=torch.long)}


def step_generator(seed, step, rank):
    """The masking generator of one training step on one rank: resumable without saving any RNG state."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, 11, step, rank]).generate_state(1)[0]))


def eval_batches(lang, lang_id, sequences, spec, batch_size):
    """The devtest batches of one language, masked with a generator fixed by the language code alone."""
    generator = torch.Generator().manual_seed(EVAL_SEED + zlib.crc32(lang.encode()))
    return [mlm_batch(sequences[start:start + batch_size], [lang_id] * len(sequences[start:start + batch_size]),
                      spec, generator) for start in range(0, len(sequences), batch_size)]


# -- a run's data


class RunData:
    """The tokenized training and devtest sentences of every language, and the masking spec."""

    def __init__(self, config, tokenizer, codes):
        train_sources = per_language_sources(config.train_data, codes, "train_data", config.train_data_overrides)
        devtest_sources = per_language_sources(config.devtest_data, codes, "devtest_data")
        supplementary = config.supplementary_data
        checked = set()  # a gated or missing Hub dataset fails here, with its own message, before any reading
        for role, sources in (("train_data", train_sources), ("devtest_data", devtest_sources)):
            for source in sources.values():
                if "dataset" in source and source["dataset"] not in checked:
                    checked.add(source["dataset"])
                    text_sources.check_hub_dataset(source, role)
        self.codes = codes
        self.train, self.devtest = [], []
        for code in codes:
            extra = text_sources.resolve_source(supplementary, code, "supplementary_data") if supplementary else None
            self.train.append(tokenized_language(
                code, "train", [train_sources[code], extra], tokenizer, config.max_length, config.cache_dir,
                config.max_sentences, config.min_sentences, config.deduplicate))
            self.devtest.append(tokenized_language(
                code, "devtest", [devtest_sources[code], None], tokenizer, config.max_length, config.cache_dir,
                config.eval_sentences, None, False)["input_ids"][:])  # small: held as lists
        self.masking = MaskingSpec.from_tokenizer(tokenizer, config.mlm_probability)

    def sizes(self):
        return [len(sentences) for sentences in self.train]

    def amounts(self, config):
        """Every language's training sentences against the floor and the cap (results.json, the card)."""
        return data_amounts(config, self.codes, self.sizes())

    def train_sequences(self, pairs):
        """Token ids of (language, index) pairs, in order: one Arrow read per language, not one per sentence."""
        by_language = {}
        for position, (lang, index) in enumerate(pairs):
            by_language.setdefault(lang, []).append((position, index))
        sequences = [None] * len(pairs)
        for lang, wanted in by_language.items():
            rows = self.train[lang][[index for _, index in wanted]]["input_ids"]
            for (position, _), ids in zip(wanted, rows):
                sequences[position] = ids
        return sequences


def data_amounts(config, codes, sizes):
    """Every language's training sentences against the floor (min_sentences) and the cap (max_sentences): what
    results.json and the card list."""
    return {code: {"sentences": int(n), "min_sentences": config.min_sentences, "max_sentences": config.max_sentences,
                   "below_floor": config.min_sentences is not None and n < config.min_sentences,
                   "capped": config.max_sentences is not None and n >= config.max_sentences}
            for code, n in zip(codes, sizes)}


def check_data_amounts(config, amounts):
    """The papers' data rules, refused unless the config says otherwise: the Mixture of Languages paper's floor
    (Section 3.1: at least 5M sentences, topped up from NLLB's synthetic data) and the Interference Matrix paper's
    equal amount per language."""
    below = {code: row["sentences"] for code, row in amounts.items() if row["below_floor"]}
    if below and not config.allow_below_min_sentences:
        raise ValueError(
            f"{len(below)} language(s) have fewer training sentences than min_sentences={config.min_sentences} after "
            f"any top-up: {below}. The paper tops languages under its floor up with NLLB's synthetic data: give "
            "supplementary_data (supplementary_corpus for prepare-data), lower min_sentences, or set "
            "allow_below_min_sentences: true (the run is then not the paper's; results.json and the card say so)."
        )
    if config.equal_sentences:
        unequal = {code: row["sentences"] for code, row in amounts.items() if row["sentences"] != config.max_sentences}
        if unequal:
            raise ValueError(
                f"equal_sentences: every language must have max_sentences={config.max_sentences} training sentences "
                f"(the Interference Matrix paper's equal data), and {unequal} differ: give more data, lower "
                "max_sentences, or set equal_sentences: false."
            )
