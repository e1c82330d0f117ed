"""`train_mlm.py prepare-data`: the per-language sentence files a run config reads, written from its corpora.

A run config names where its text comes from (`train_corpus`, `supplementary_corpus`, `devtest_corpus`: Hub
datasets or local files, `{lang}` / `{flores_plus}` filled in per language) and where the run reads it
(`train_data`, `devtest_data`: local `.jsonl` templates with `{lang}`). This command reads the first into the
second with the config's caps, synthetic top-up and deduplication (`max_sentences`, `min_sentences`,
`deduplicate`), one language at a time:

- every Hub dataset is checked first (it exists, and a gated one such as FLORES+ is readable with this token),
  before anything is read or written; the commit each resolves to is recorded;
- each language's file is written whole or not at all (`.partial`, then renamed), and the manifest is updated
  after each language, so a killed run resumes at the first language not yet done; a folder prepared under other
  settings is refused unless `--overwrite`;
- `manifest.json` (settings, dataset commits, and per language: sentences, from the corpus, from the top-up,
  duplicates dropped, whether the cap cut it, the file's SHA-256) and `counts.json` (`{code: sentences}`, what
  `group_languages.py --strategy balanced-data --counts` reads) go beside the training files;
- `--parallel FILE` also writes the devtest sentences as the n-way parallel jsonl (`lang`, `id`, `text`, `split`)
  that `group_languages.py --parallel` reads for token-overlap and embedding grouping (FLORES is aligned by row).
"""

import json
import os
from pathlib import Path

from mol_toolkit import text_sources
from mol_toolkit.languages import resolve_languages
from mol_toolkit.training.checkpointing import file_digest as sha256
from mol_toolkit.files import write_json, write_jsonl


MANIFEST = "manifest.json"
COUNTS = "counts.json"


def output_template(template, key):
    """A local `.jsonl` path template with `{lang}` (what the run reads): prepare-data writes there."""
    if isinstance(template, dict):
        if set(template) - {"path"}:
            raise ValueError(f"prepare-data writes {key} as local files: give it as a path template such as "
                             f"data/nllb/{{lang}}.jsonl, not {template!r}.")
        template = template["path"]
    if not isinstance(template, str) or "{lang}" not in template or not template.endswith(".jsonl") or \
            any(c in template for c in "*?["):
        raise ValueError(f"prepare-data writes {key} per language: it must be a local path template ending in .jsonl "
                         f"with {{lang}} in it (e.g. data/nllb/{{lang}}.jsonl), got {template!r}.")
    return template


def manifest_folder(template):
    """The folder holding every language's file: where the manifest goes."""
    return Path(os.path.dirname(template.split("{lang}")[0]) or ".")


class Preparation:
    """One kind of file (training or devtest) for every language: its sources, its output, its manifest entries."""

    def __init__(self, kind, corpus, supplementary, template, caps):
        self.kind, self.corpus, self.supplementary, self.template, self.caps = kind, corpus, supplementary, template, caps

    def settings(self):
        return {"corpus": self.corpus, "supplementary_corpus": self.supplementary, "output": self.template, **self.caps}

    def sources(self, code):
        primary = text_sources.resolve_source(self.corpus, code, f"{self.kind}_corpus")
        extra = text_sources.resolve_source(self.supplementary, code, "supplementary_corpus") if self.supplementary else None
        return primary, extra

    def path(self, code):
        return Path(os.path.expanduser(self.template.replace("{lang}", code)))


def plan(config, codes):
    """The preparations a run config asks for, checked: corpora set, outputs local jsonl templates."""
    if config.train_corpus is None and config.devtest_corpus is None:
        raise ValueError("prepare-data reads train_corpus (and devtest_corpus) and writes train_data (and "
                         "devtest_data): set train_corpus in the run config, e.g. {dataset: "
                         "slone/nllb-200-10M-sample, pairs: [[lang1, text1], [lang2, text2]]}.")
    preparations = []
    if config.train_corpus is not None:
        caps = {"max_sentences": config.max_sentences, "min_sentences": config.min_sentences,
                "deduplicate": config.deduplicate}
        preparations.append(Preparation("train", config.train_corpus, config.supplementary_corpus,
                                        output_template(config.train_data, "train_data"), caps))
    if config.devtest_corpus is not None:
        preparations.append(Preparation("devtest", config.devtest_corpus, None,
                                        output_template(config.devtest_data, "devtest_data"),
                                        {"max_sentences": config.eval_sentences, "min_sentences": None,
                                         "deduplicate": False}))
    for preparation in preparations:
        for code in codes:
            preparation.sources(code)  # every language's spec resolves, before any work
    return preparations


def check_access(preparation, codes, checked):
    """Every Hub dataset a preparation reads exists and is readable: {dataset: commit}. `checked` (shared by the
    preparations) keeps a dataset from being asked twice."""
    commits = {}
    for code in codes:
        for source, role in zip(preparation.sources(code), (f"{preparation.kind}_corpus", "supplementary_corpus")):
            if source is not None and "dataset" in source and source["dataset"] not in commits:
                if source["dataset"] not in checked:
                    checked[source["dataset"]] = text_sources.check_hub_dataset(source, role)
                commits[source["dataset"]] = checked[source["dataset"]]
    return commits


def read_manifest(folder, settings, overwrite):
    path = folder / MANIFEST
    if not path.is_file():
        return {"settings": settings, "datasets": {}, "languages": {}}
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("settings") != settings:
        if not overwrite:
            changed = sorted(k for k in settings if manifest.get("settings", {}).get(k) != settings[k])
            raise ValueError(f"{folder} was prepared under other settings (differing: {changed}): pass --overwrite to "
                             "prepare it again, or write the files elsewhere (train_data / devtest_data).")
        return {"settings": settings, "datasets": {}, "languages": {}}
    return manifest


def is_done(entry, path):
    return entry is not None and path.is_file() and sha256(path) == entry.get("sha256")


def prepare(config, languages=None, overwrite=False, parallel=None, show_progress=True, log=print):
    """Write every language's files; returns {kind: manifest}."""
    from tqdm.auto import tqdm

    codes = resolve_languages(languages or config.languages)
    preparations = plan(config, codes)
    if parallel is not None:
        parallel = Path(parallel)
        if not any(p.kind == "devtest" for p in preparations):
            raise ValueError("--parallel writes the devtest sentences: set devtest_corpus in the run config.")
        if parallel.is_dir() or parallel.suffix != ".jsonl":
            raise ValueError(f"--parallel {str(parallel)!r} must be a .jsonl file path.")
    manifests = {}
    for preparation in preparations:  # refuse a folder of other settings before any dataset is read
        folder = manifest_folder(preparation.template)
        manifests[preparation.kind] = (folder, read_manifest(folder, preparation.settings(), overwrite))
    checked = {}
    commits = {p.kind: check_access(p, codes, checked) for p in preparations}  # all of them before any reading
    for preparation in preparations:
        folder, manifest = manifests[preparation.kind]
        manifest["datasets"].update(commits[preparation.kind])
        bar = tqdm(codes, desc=f"prepare {preparation.kind}", unit="language", disable=not show_progress)
        for code in bar:
            path = preparation.path(code)
            if is_done(manifest["languages"].get(code), path):
                continue  # prepared by an earlier (killed or finished) run with these settings
            stats = {}
            with tqdm(desc=code, unit=" sentences", leave=False, disable=not show_progress) as sentences:
                texts = text_sources.collect_texts(code, preparation.sources(code), preparation.caps["max_sentences"],
                                               preparation.caps["min_sentences"], preparation.caps["deduplicate"],
                                               f"{preparation.kind}_corpus", stats, sentences)
            write_jsonl(path, ({"text": text} for text in texts))
            manifest["languages"][code] = {"file": str(path), "sentences": len(texts), "from_corpus": stats["primary"],
                                           "from_supplementary": stats["supplementary"],
                                           "duplicates_dropped": stats["duplicates_dropped"],
                                           "capped": stats["capped"], "sha256": sha256(path)}
            write_json(folder / MANIFEST, manifest)
            bar.set_postfix(language=code, sentences=len(texts))
        write_json(folder / MANIFEST, manifest)
        write_json(folder / COUNTS, {code: manifest["languages"][code]["sentences"] for code in codes})
        log(f"{preparation.kind}: {len(codes)} languages in {folder} "
            f"({sum(manifest['languages'][c]['sentences'] for c in codes):,} sentences); {folder / MANIFEST}")
    if parallel is not None:
        write_parallel(parallel, manifests["devtest"][1], codes)
        log(f"n-way parallel devtest set: {parallel}")
    return {kind: manifest for kind, (_, manifest) in manifests.items()}


def write_parallel(path, manifest, codes):
    """The devtest files as one n-way parallel jsonl, aligned by row (every language must have the same rows)."""
    sizes = {code: manifest["languages"][code]["sentences"] for code in codes}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"--parallel needs the same number of devtest sentences in every language (FLORES is "
                         f"n-way parallel); got {sizes}.")
    rows = []
    for code in codes:
        with open(manifest["languages"][code]["file"], encoding="utf-8") as handle:
            rows += [{"lang": code, "id": i, "text": json.loads(line)["text"], "split": "devtest"}
                     for i, line in enumerate(handle)]
    write_jsonl(path, rows)
