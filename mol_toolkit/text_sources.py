"""Where text comes from, for every pipeline: a source spec (a local file or glob, or a Hub dataset; `{lang}` filled
in per language, `{flores_plus}` with its FLORES+ name), resolved per language, checked for Hub access before any
reading, read with caps, a supplementary top-up and deduplication; and the shipped UDHR sample and FLORES+ as sources.
"""

import glob
import hashlib
import json
import logging
import os
from pathlib import Path


logger = logging.getLogger(__name__)

LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".txt": "text", ".parquet": "parquet", ".csv": "csv"}
SOURCE_KEYS = ("path", "dataset", "name", "split", "text_field", "language_field", "split_field", "streaming",
               "data_files", "revision", "pairs")

UDHR_SAMPLE = "data/udhr/udhr46_articles.jsonl"
FLORES_PLUS = "openlanguagedata/flores_plus"


def udhr_sources(split):
    return {"path": UDHR_SAMPLE, "language_field": "lang", "split_field": "split", "split": split}


def flores_plus_source(split):
    """FLORES+ (gated on the Hub: accept its terms, then log in) in the papers' codes: `{lang}` is renamed per code."""
    return {"dataset": FLORES_PLUS, "name": "{flores_plus}", "split": split}


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


def per_language_sources(spec, codes, role, overrides=None):
    """language -> source spec: one spec for all ('{lang}' filled in) or a mapping language -> spec."""
    is_mapping_by_language = isinstance(spec, dict) and spec and not set(spec) & set(SOURCE_KEYS)
    by_language = dict(spec) if is_mapping_by_language else {}
    by_language.update(overrides or {})
    stray = sorted(set(by_language) - set(codes))
    if stray:
        raise ValueError(f"{role} names languages {stray} that are not among the model's languages {codes}: add them "
                         "to `languages` or remove their data.")
    sources = {}
    for code in codes:
        chosen = by_language.get(code, None if is_mapping_by_language else spec)
        if chosen is None:
            raise ValueError(f"{role} has no source for {code}: every language of the model needs {role}.")
        sources[code] = resolve_source(chosen, code, role)
    return sources


def read_probe_texts(spec, codes, role, max_sentences=None):
    """code -> texts of `spec` (a path or mapping as train_mlm.py's sources; `{lang}` is the code, `{flores_plus}`
    its FLORES+ config name); a language without text is an error naming it."""
    texts = {}
    for code in codes:
        source = resolve_source(spec, code, role)
        try:
            texts[code] = collect_texts(code, [source, None], max_sentences, None, False, role)
        except ValueError as error:
            raise ValueError(f"No {role} for {code}: {error}") from None
    return texts
