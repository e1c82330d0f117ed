"""MLM data: per-language sources, caps and deduplication, tokenization cached once per language, language sampling,
group-ordered batches with a fixed number of sentences, and 15% (80/10/10) masking.

Everything random here is a pure function of (seed, step, rank) or of the language and a fixed evaluation seed, so a
resumed run draws exactly the batches and masks the uninterrupted run would have drawn, and every model of a sweep
is evaluated on the same masked devtest batches.
"""

import glob
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


logger = logging.getLogger(__name__)

LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".txt": "text", ".parquet": "parquet", ".csv": "csv"}
SOURCE_KEYS = ("path", "dataset", "name", "split", "text_field", "language_field", "split_field", "streaming",
               "data_files", "revision", "pairs")
CACHE_FORMAT = 1  # bump when the cached layout changes
EVAL_SEED = 20250  # the same masked devtest batches for every model, whatever its seed
TOKENIZATIONS = []  # (language, split) of every tokenization done by this process: the sweep's once-per-language check


# -- sources


def resolve_source(spec, lang, role):
    """A source spec with '{lang}' filled in, as a dict of SOURCE_KEYS; errors name the language and the role."""
    if spec is None:
        raise ValueError(f"No {role} source for {lang}: set {role} (or a per-language override) in the run config.")
    if isinstance(spec, str):
        spec = {"path": spec}
    if not isinstance(spec, dict):
        raise ValueError(f"The {role} source for {lang} must be a path or a mapping, got {spec!r}.")
    unknown = sorted(set(spec) - set(SOURCE_KEYS))
    if unknown:
        raise ValueError(f"The {role} source for {lang} has unknown keys {unknown}: valid keys are {list(SOURCE_KEYS)}.")
    if ("path" in spec) == ("dataset" in spec):
        raise ValueError(f"The {role} source for {lang} needs exactly one of 'path' (local files) or 'dataset' "
                         f"(a Hub dataset id), got {spec!r}.")
    pairs = spec.get("pairs")
    if pairs is not None and (not isinstance(pairs, (list, tuple)) or not pairs or not all(
            isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(f, str) for f in pair) for pair in pairs)):
        raise ValueError(f"The {role} source for {lang} has pairs={pairs!r}: give [language field, text field] pairs, "
                         "e.g. [[lang1, text1], [lang2, text2]] for bitext rows (NLLB).")
    from .languages import flores_plus_name

    filled = {k: v.replace("{lang}", lang).replace("{flores_plus}", flores_plus_name(lang)) if isinstance(v, str) else v
              for k, v in spec.items()}
    filled.setdefault("text_field", "text")
    return filled


def hub_access_error(dataset, role, error):
    """A clear ValueError for a Hub dataset the token cannot read (gated: 401/403, or missing), else None."""
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    chain, seen = [], error
    while seen is not None and len(chain) < 8:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    status = next((getattr(getattr(e, "response", None), "status_code", None) for e in chain
                   if isinstance(e, HfHubHTTPError) and getattr(e, "response", None) is not None), None)
    if any(isinstance(e, GatedRepoError) for e in chain) or status in (401, 403):
        return ValueError(
            f"The {role} dataset {dataset!r} is gated on the Hub (HTTP {status or '401/403'}): open "
            f"https://huggingface.co/datasets/{dataset} while logged in, accept its conditions, then log in here with "
            "that account (`hf auth login`, or set HF_TOKEN to one of its tokens) and run again.")
    if any(isinstance(e, RepositoryNotFoundError) for e in chain):
        return ValueError(f"The {role} dataset {dataset!r} does not exist on the Hub (or is private to another "
                          "account): check the name, or log in with an account that can read it.")
    return None


def check_hub_dataset(source, role):
    """Before any work: the Hub dataset of a source exists and this token may read it (gated datasets included).
    Returns the commit it resolves to (the version the run reads), or None for a local source."""
    from huggingface_hub import HfApi, constants

    if "dataset" not in source or constants.HF_HUB_OFFLINE:  # offline: the cached copy is what will be read
        return None

    api = HfApi()
    try:
        api.auth_check(source["dataset"], repo_type="dataset")  # a gated dataset's files need accepted conditions
        return api.dataset_info(source["dataset"], revision=source.get("revision")).sha
    except Exception as error:
        raise hub_access_error(source["dataset"], role, error) or ValueError(
            f"The {role} dataset {source['dataset']!r} cannot be reached: {error}") from None


def _local_files(source, lang, role):
    pattern = os.path.expanduser(source["path"])
    files = sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]
    files = [f for f in files if os.path.isfile(f)]
    if not files:
        raise ValueError(f"The {role} source for {lang} names {source['path']!r}, which matches no file.")
    suffixes = {Path(f).suffix for f in files}
    if len(suffixes) != 1 or next(iter(suffixes)) not in LOCAL_FORMATS:
        raise ValueError(f"The {role} files for {lang} have suffixes {sorted(suffixes)}: use one of "
                         f"{sorted(LOCAL_FORMATS)}.")
    return LOCAL_FORMATS[suffixes.pop()], files


def iter_texts(source, lang, role):
    """The source's texts for `lang`, in source order (streamed where the source streams)."""
    from datasets import load_dataset

    streaming = bool(source.get("streaming", False))
    if "path" in source:
        builder, files = _local_files(source, lang, role)
        if builder in ("json", "text"):
            rows = _read_lines(files, builder, role, lang)
        else:
            rows = load_dataset(builder, data_files=files, split="train", streaming=streaming)
    else:
        try:
            rows = load_dataset(source["dataset"], source.get("name"), split=source.get("split", "train"),
                                data_files=source.get("data_files"), streaming=streaming, revision=source.get("revision"))
        except Exception as error:
            raise hub_access_error(source["dataset"], role, error) or ValueError(
                f"The {role} dataset {source['dataset']!r} for {lang} cannot be loaded: {error}") from error
    if source.get("pairs"):
        yield from _paired_texts(rows, source["pairs"], lang, role)
        return
    text_field, language_field, split_field = source["text_field"], source.get("language_field"), source.get("split_field")
    for row in rows:
        where = row.pop("__where__", None) if isinstance(row, dict) else None
        if not isinstance(row, dict) or text_field not in row:
            fields = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise ValueError(f"The {role} source for {lang}{f' ({where})' if where else ''} has no field "
                             f"{text_field!r}; its fields are {fields}.")
        if language_field and row.get(language_field) != lang:
            continue
        if split_field and "path" in source and row.get(split_field) != source.get("split"):
            continue
        text = row[text_field]
        if isinstance(text, str) and text.strip():
            yield text.strip()


def _paired_texts(rows, pairs, lang, role):
    """Bitext rows (NLLB's lang1/text1/lang2/text2): every side whose language field is `lang`."""
    for row in rows:
        row.pop("__where__", None)
        for language_field, text_field in pairs:
            if language_field not in row or text_field not in row:
                raise ValueError(f"The {role} source for {lang} has pairs {pairs}, but a row has the fields "
                                 f"{sorted(row)}.")
            text = row[text_field]
            if row[language_field] == lang and isinstance(text, str) and text.strip():
                yield text.strip()


def _read_lines(files, builder, role, lang):
    """Rows of local .jsonl/.json (one JSON object per line, or one JSON array) and .txt (one text per line) files,
    each with `__where__` (file and line) for errors that name the place: bytes that are not UTF-8, a line that is
    not JSON."""
    for file in files:
        with open(file, "rb") as handle:
            data = handle.read()
        try:
            content = data.decode("utf-8")
        except UnicodeDecodeError as error:
            line = data[: error.start].count(b"\n") + 1
            raise ValueError(f"The {role} file {file} (for {lang}) is not UTF-8 text: line {line} has the byte "
                             f"{data[error.start]:#04x}.") from None
        if builder == "text":
            for number, line in enumerate(content.splitlines(), start=1):
                yield {"text": line, "__where__": f"{file}, line {number}"}
            continue
        if file.endswith(".json") and content.lstrip().startswith("["):
            try:
                records = json.loads(content)
            except json.JSONDecodeError as error:
                raise ValueError(f"The {role} file {file} (for {lang}) is not valid JSON: line {error.lineno}, "
                                 f"column {error.colno}: {error.msg}.") from None
            for number, record in enumerate(records, start=1):
                yield {**record, "__where__": f"{file}, record {number}"} if isinstance(record, dict) else record
            continue
        for number, line in enumerate(content.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"The {role} file {file} (for {lang}) has a line that is not JSON: line {number}, "
                                 f"column {error.colno}: {error.msg}.") from None
            yield {**record, "__where__": f"{file}, line {number}"} if isinstance(record, dict) else record


def collect_texts(lang, sources, max_sentences, min_sentences, deduplicate, role, stats=None, progress=None):
    """Up to max_sentences texts of `lang` from the primary source; languages under min_sentences are topped up
    from the supplementary source. Exact repeats are dropped (first occurrence kept). `stats` (a dict) receives
    the counts: from the primary source, from the supplementary one, duplicates dropped, and whether the cap cut
    the primary source short; `progress` (a tqdm bar) is advanced per kept text."""
    primary, supplementary = sources
    seen, texts = set(), []
    counts = {"primary": 0, "supplementary": 0, "duplicates_dropped": 0, "capped": False}

    def take(source, limit, what, part):
        for text in iter_texts(source, lang, what):
            if limit is not None and len(texts) >= limit:
                counts["capped"] = counts["capped"] or part == "primary"
                return
            if deduplicate:
                digest = hashlib.blake2b(text.encode(), digest_size=12).digest()
                if digest in seen:
                    counts["duplicates_dropped"] += 1
                    continue
                seen.add(digest)
            texts.append(text)
            counts[part] += 1
            if progress is not None:
                progress.update(1)

    take(primary, max_sentences, role, "primary")
    if supplementary is not None and min_sentences and len(texts) < min_sentences:
        take(supplementary, min(min_sentences, max_sentences or min_sentences), "supplementary_data", "supplementary")
    if stats is not None:
        stats.update(counts)
    if not texts:
        raise ValueError(f"The {role} source for {lang} ({_describe(primary)}) holds no text for {lang}.")
    return texts


def _describe(source):
    return source.get("path") or source.get("dataset")


def describe_source(source, cap=None):
    """A source for a dry run: where it is, and its size where it is known without reading it (local files)."""
    if "dataset" in source:
        return {"dataset": source["dataset"], "name": source.get("name"), "split": source.get("split", "train"),
                "sentences": "unknown (a Hub dataset; read when the run starts)"}
    pattern = os.path.expanduser(source["path"])
    files = sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]
    files = [f for f in files if os.path.isfile(f)]
    size = sum(os.path.getsize(f) for f in files)
    filtered = source.get("language_field") or source.get("split_field")
    return {"path": source["path"], "files": len(files), "bytes": size, "cap": cap,
            "sentences": "unknown (filtered by language/split when read)" if filtered else
            ("no such file" if not files else "read when the run starts")}


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
