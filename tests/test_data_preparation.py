"""train_mlm.py prepare-data on the loopback Hub, with tiny datasets in the layouts of the real repositories:
slone/nllb-200-10M-sample (bitext rows: laser_score, lang1, text1, lang2, text2, blaser_sim; default config,
data/train-*.parquet) and openlanguagedata/flores_plus (gated; one config per FLORES+ name, dev/NAME.parquet and
devtest/NAME.parquet, renamed codes such as cmn_Hans for zho_Hans)."""

import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import PROJECT

LANGUAGES = ["eng_Latn", "fra_Latn", "deu_Latn", "zho_Hans"]
NLLB, SYNTHETIC, FLORES = "slone/nllb-200-10M-sample", "mol-tests/nllb-synthetic", "openlanguagedata/flores_plus"
FLORES_COLUMNS = ["id", "iso_639_3", "iso_15924", "glottocode", "text", "url", "domain", "topic", "has_image",
                  "has_hyperlink", "last_updated"]


def udhr_split(split):
    by_language = {}
    for line in (PROJECT / "data" / "udhr" / "udhr46_articles.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if row["split"] == split:
            by_language.setdefault(row["lang"], []).append(row["text"])
    return by_language


def parquet_bytes(columns):
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.table(columns), buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def corpora(hub):
    """The three datasets, uploaded once; FLORES+ ungated (tests that gate it restore it)."""
    from datasets import Dataset
    from huggingface_hub import HfApi

    train, devtest = udhr_split("train"), udhr_split("devtest")
    rows = [(train["eng_Latn"][i], "eng_Latn", train["fra_Latn"][i], "fra_Latn") for i in range(24)]
    rows += [(train["deu_Latn"][i], "deu_Latn", train["eng_Latn"][i], "eng_Latn") for i in range(12)]
    rows += [(train["deu_Latn"][0], "deu_Latn", train["eng_Latn"][0], "eng_Latn")] * 2  # exact repeats
    rows += [(train["zho_Hans"][i], "zho_Hans", train["fra_Latn"][i], "fra_Latn") for i in range(5)]
    Dataset.from_dict({
        "laser_score": [1.2] * len(rows), "lang1": [r[1] for r in rows], "text1": [r[0] for r in rows],
        "lang2": [r[3] for r in rows], "text2": [r[2] for r in rows], "blaser_sim": [3.9] * len(rows),
    }).push_to_hub(NLLB)  # the default config, data/train-*.parquet, as the real sample
    synthetic = [{"text": f"{text} (synthetic)", "lang": "zho_Hans"} for text in train["zho_Hans"][5:]]
    Dataset.from_list(synthetic).push_to_hub(SYNTHETIC)

    api = HfApi()
    api.create_repo(FLORES, repo_type="dataset", exist_ok=True)
    names = {"eng_Latn": "eng_Latn", "fra_Latn": "fra_Latn", "deu_Latn": "deu_Latn", "zho_Hans": "cmn_Hans"}
    card = ["---", "configs:"]
    for code, name in names.items():
        iso, script = name.split("_")
        for split, texts in (("dev", train[code][:6]), ("devtest", devtest[code])):
            columns = {"id": list(range(len(texts))), "iso_639_3": [iso] * len(texts), "iso_15924": [script] * len(texts),
                       "glottocode": ["xxxx1234"] * len(texts), "text": texts, "url": [""] * len(texts),
                       "domain": ["wikinews"] * len(texts), "topic": [""] * len(texts), "has_image": [False] * len(texts),
                       "has_hyperlink": [False] * len(texts), "last_updated": ["2.1"] * len(texts)}
            api.upload_file(path_or_fileobj=parquet_bytes(columns), path_in_repo=f"{split}/{name}.parquet",
                            repo_id=FLORES, repo_type="dataset")
        card += [f"- config_name: {name}", "  data_files:", "  - split: dev", f"    path: dev/{name}.parquet",
                 "  - split: devtest", f"    path: devtest/{name}.parquet"]
    card += ["extra_gated_prompt: Protecting the integrity of FLORES+ for evaluation", "---", "# FLORES+ (tiny)"]
    api.upload_file(path_or_fileobj="\n".join(card).encode(), path_in_repo="README.md", repo_id=FLORES,
                    repo_type="dataset")
    return {"train": train, "devtest": devtest}


def run_config(tmp_path, **overrides):
    from mol_toolkit.run_config import load_run_config

    values = {
        "languages": LANGUAGES, "language_groups": "single", "group_layers": "dense",
        "train_data": str(tmp_path / "data" / "nllb" / "{lang}.jsonl"),
        "devtest_data": str(tmp_path / "data" / "flores" / "{lang}.devtest.jsonl"),
        "train_corpus": {"dataset": NLLB, "pairs": [["lang1", "text1"], ["lang2", "text2"]]},
        "supplementary_corpus": {"dataset": SYNTHETIC, "language_field": "lang"},
        "devtest_corpus": {"dataset": FLORES, "name": "{flores_plus}", "split": "devtest"},
        "supplementary_data": None, "max_sentences": 20, "min_sentences": 10, "deduplicate": True,
        "output_dir": str(tmp_path / "run"), "cache_dir": str(tmp_path / "cache"), "trackers": [],
        "tokenizer": str(PROJECT / "data" / "udhr-tokenizer"),
    }
    values.update(overrides)
    return load_run_config(PROJECT / "configs" / "tiny_udhr.yaml", values)


def read_jsonl(path):
    return [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines()]


def test_prepare_data_writes_capped_topped_up_deduplicated_files_and_a_manifest(corpora, tmp_path):
    from mol_toolkit.training.data_preparation import prepare
    from mol_toolkit.training.mlm_data import RunData
    from mol_toolkit.training.trainer import load_tokenizer

    train, devtest = corpora["train"], corpora["devtest"]
    config = run_config(tmp_path)
    parallel = tmp_path / "flores-devtest.jsonl"
    manifests = prepare(config, parallel=str(parallel), show_progress=False, log=lambda *_: None)

    folder = tmp_path / "data" / "nllb"
    assert read_jsonl(folder / "eng_Latn.jsonl") == train["eng_Latn"][:20]  # capped at max_sentences
    assert read_jsonl(folder / "deu_Latn.jsonl") == train["deu_Latn"][:12]  # the two repeats dropped
    zho = read_jsonl(folder / "zho_Hans.jsonl")  # 5 from the bitext, topped up to min_sentences from the synthetic set
    assert zho == train["zho_Hans"][:5] + [f"{t} (synthetic)" for t in train["zho_Hans"][5:10]]
    entries = json.loads((folder / "manifest.json").read_text())["languages"]
    assert entries["eng_Latn"] | {"sha256": None, "file": None} == {
        "file": None, "sentences": 20, "from_corpus": 20, "from_supplementary": 0, "duplicates_dropped": 0,
        "capped": True, "sha256": None}
    assert (entries["deu_Latn"]["sentences"], entries["deu_Latn"]["duplicates_dropped"], entries["deu_Latn"]["capped"]) \
        == (12, 2, False)
    assert (entries["zho_Hans"]["from_corpus"], entries["zho_Hans"]["from_supplementary"]) == (5, 5)
    assert json.loads((folder / "counts.json").read_text()) == {"eng_Latn": 20, "fra_Latn": 20, "deu_Latn": 12,
                                                               "zho_Hans": 10}
    datasets = manifests["train"]["datasets"]
    assert set(datasets) == {NLLB, SYNTHETIC} and all(len(sha) == 40 for sha in datasets.values())
    assert manifests["devtest"]["datasets"].keys() == {FLORES}

    # FLORES+: zho_Hans is read from its renamed config cmn_Hans.
    flores = tmp_path / "data" / "flores"
    assert read_jsonl(flores / "zho_Hans.devtest.jsonl") == devtest["zho_Hans"]
    rows = [json.loads(line) for line in parallel.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 4 * 6 and {row["lang"] for row in rows} == set(LANGUAGES)
    assert [r["text"] for r in rows if r["lang"] == "fra_Latn"] == devtest["fra_Latn"]

    # The run reads exactly what was written.
    data = RunData(config, load_tokenizer(config), LANGUAGES)
    assert data.sizes() == [20, 20, 12, 10]

    # The same settings again: nothing rewritten. Other settings: refused, unless --overwrite.
    before = {path: path.stat().st_mtime_ns for path in folder.glob("*.jsonl")}
    prepare(config, show_progress=False, log=lambda *_: None)
    assert {path: path.stat().st_mtime_ns for path in folder.glob("*.jsonl")} == before
    with pytest.raises(ValueError, match=r"prepared under other settings \(differing: \['max_sentences'\]\)"):
        prepare(run_config(tmp_path, max_sentences=15), show_progress=False, log=lambda *_: None)
    prepare(run_config(tmp_path, max_sentences=15), overwrite=True, show_progress=False, log=lambda *_: None)
    assert len(read_jsonl(folder / "eng_Latn.jsonl")) == 15


def test_a_gated_dataset_is_a_clear_error_before_anything_is_written(corpora, hub, tmp_path):
    from mol_toolkit.training.data_preparation import prepare

    hub.state.gated.add(("dataset", FLORES))
    try:
        with pytest.raises(ValueError, match=r"The devtest_corpus dataset 'openlanguagedata/flores_plus' is gated on "
                                             r"the Hub \(HTTP 403\).*accept its conditions.*hf auth login"):
            prepare(run_config(tmp_path), show_progress=False, log=lambda *_: None)
        # A run that reads its devtest from the Hub says the same, before any training (and before a cached copy
        # from an earlier, authorised download could hide the missing access).
        from mol_toolkit.training.trainer import MLMTrainer

        flores = {"dataset": FLORES, "name": "{flores_plus}", "split": "devtest"}
        with pytest.raises(ValueError, match="The devtest_data dataset 'openlanguagedata/flores_plus' is gated"):
            udhr = {"path": str(PROJECT / "data/udhr/udhr46_articles.jsonl"), "language_field": "lang"}
            MLMTrainer(run_config(tmp_path, devtest_data=flores, train_data=udhr), show_progress=False)
    finally:
        hub.state.gated.discard(("dataset", FLORES))
    assert not (tmp_path / "data").exists()


@pytest.mark.slow
def test_prepare_data_resumes_after_a_kill(corpora, tmp_path):
    """A run killed after its first language: the rerun keeps that file as it is and writes the rest."""
    folder = tmp_path / "data" / "nllb"
    flags = ["--languages", json.dumps(LANGUAGES), "--language-groups", "single", "--group-layers", "dense",
             "--train-data", str(folder / "{lang}.jsonl"), "--devtest-data", str(tmp_path / "flores/{lang}.jsonl"),
             "--train-corpus", json.dumps({"dataset": NLLB, "pairs": [["lang1", "text1"], ["lang2", "text2"]]}),
             "--supplementary-corpus", json.dumps({"dataset": SYNTHETIC, "language_field": "lang"}),
             "--supplementary-data", "null", "--max-sentences", "20", "--min-sentences", "10"]
    command = [sys.executable, str(PROJECT / "train_mlm.py"), "prepare-data", "--config",
               str(PROJECT / "configs" / "tiny_udhr.yaml"), "--no-progress", *flags]
    env = dict(os.environ, PYTHONPATH=str(PROJECT))
    process = subprocess.Popen(command, env=env, cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    manifest = folder / "manifest.json"
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if manifest.is_file() and json.loads(manifest.read_text() or "{}").get("languages"):
            break
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = json.loads(manifest.read_text())["languages"]
    assert process.returncode == -signal.SIGKILL and 0 < len(done) < len(LANGUAGES), (process.returncode, done)
    kept = {code: (folder / f"{code}.jsonl").stat().st_mtime_ns for code in done}
    rerun = subprocess.run(command, env=env, cwd=PROJECT, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert {code: (folder / f"{code}.jsonl").stat().st_mtime_ns for code in done} == kept
    entries = json.loads(manifest.read_text())["languages"]
    assert set(entries) == set(LANGUAGES) and entries["zho_Hans"]["sentences"] == 10
    assert not list(folder.glob("*.partial"))


@pytest.mark.parametrize("overrides, message", [
    ({"train_corpus": None, "devtest_corpus": None}, "set train_corpus in the run config"),
    ({"train_data": {"dataset": "x/y"}}, "prepare-data writes train_data as local files"),
    ({"train_data": "data/nllb/all.jsonl"}, "must be a local path template ending in .jsonl with {lang}"),
    ({"train_corpus": {"dataset": NLLB, "pairs": [["lang1"]]}}, "give \\[language field, text field\\] pairs"),
    ({"train_corpus": {"dataset": "mol-tests/no-such-corpus"}}, "does not exist on the Hub"),
])
def test_bad_preparations_are_refused_before_any_work(corpora, tmp_path, overrides, message):
    from mol_toolkit.training.data_preparation import prepare

    with pytest.raises(ValueError, match=message):
        prepare(run_config(tmp_path, **overrides), show_progress=False, log=lambda *_: None)
    assert not (tmp_path / "data" / "nllb" / "eng_Latn.jsonl").exists()
