"""evaluate_mol.py and mol_toolkit.evaluation: sentence embeddings routed by language, mteb's own evaluation path
(real task classes, a real Table 11 task served by the loopback Hub at its pinned revision), the papers' aggregation,
sentence-transformers loading, and bad inputs refused before any model runs."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import LANGUAGES, PROJECT, tiny_config_kwargs
from mteb_tasks import UDHRClassification, UDHRJapaneseClassification, halves, tiny_tasks, udhr_articles
from scipy.stats import spearmanr
from sklearn.metrics import average_precision_score
from transformers import AutoTokenizer

from configuration_mol import MoLConfig
from modeling_mol import MoLForMaskedLM
from mol_toolkit.evaluation import SentenceEncoder, mteb_encoder
from mol_toolkit.evaluation.aggregate import aggregate
from mol_toolkit.evaluation.run import evaluate_models
from mol_toolkit.languages import resolve_language_code


CLEAN_ST_CHECK = Path(__file__).parent / "clean_st_check.py"
MASSIVE_REVISION = "4672e20407010da34463acc759c162ca9734bca6"  # what mteb's MassiveIntentClassification pins


@pytest.fixture(scope="module")
def bundle(tiny_tokenizer_dir, tmp_path_factory):
    """A tiny MoL bundle whose three groups differ (random weights), every block group-specific. Weights drawn wider
    than usual spread its sentence embeddings apart, so no two cosines are within float32 noise of each other and
    rank statistics computed here and in mteb cannot differ by ties broken differently."""
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    config = MoLConfig(**tiny_config_kwargs(vocab_size=len(tokenizer), initializer_range=0.3))
    model = MoLForMaskedLM(config).eval()
    folder = tmp_path_factory.mktemp("bundle") / "model"
    model.save_pretrained(folder, tokenizer=tokenizer)
    return folder


@pytest.fixture(scope="module")
def evaluated(bundle, tmp_path_factory):
    """The bundle evaluated on the small UDHR tasks (classification, pair classification, STS) through mteb."""
    out = tmp_path_factory.mktemp("evaluation")
    log = []
    summary = evaluate_models([str(bundle)], tiny_tasks(), out, show_progress=False, log=log.append)
    [model] = summary["models"].values()
    return out, model, log


def mixed_texts():
    articles = udhr_articles()
    pairs = [(text, code) for code in LANGUAGES for text in articles[code][:5]]
    pairs += [(text[:20], code) for text, code in pairs[::3]]  # short ones too
    random.Random(0).shuffle(pairs)
    return [t for t, _ in pairs], [c for _, c in pairs]


# -- language codes ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("code, expected", [("fra-Latn", "fra_Latn"), ("fr", "fra_Latn"), ("fra", "fra_Latn"),
                                            ("de", "deu_Latn"), ("ara-Arab", "arb_Arab"), ("zh-TW", "zho_Hant"),
                                            ("cmo-Hans", "zho_Hans"), ("swa-Latn", "swh_Latn"), ("en-US", "eng_Latn")])
def test_language_codes_of_every_form_resolve(code, expected):
    assert resolve_language_code(code) == expected


def test_ambiguous_and_unknown_language_codes():
    with pytest.raises(ValueError, match=r"ambiguous.*zho_Hans.*zho_Hant"):
        resolve_language_code("zho")
    with pytest.raises(ValueError, match=r"ambiguous.*ary_Arab.*acm_Arab"):
        resolve_language_code("ara", ["ary_Arab", "acm_Arab"])
    assert resolve_language_code("jpn-Jpan", LANGUAGES) is None
    with pytest.raises(ValueError, match="not an ISO 639-1 code"):
        resolve_language_code("qq")


# -- the sentence encoder ------------------------------------------------------------------------------------------

def test_encoder_routes_each_text_and_restores_the_callers_order(bundle):
    texts, codes = mixed_texts()
    encoder = SentenceEncoder(str(bundle), batch_size=4, show_progress_bar=False)
    batched = encoder.encode(texts, codes)
    alone = np.stack([encoder.encode([text], code)[0] for text, code in zip(texts, codes)])
    np.testing.assert_allclose(batched, alone, atol=1e-5)
    # The papers' pooling: the mean of the last layer's outputs over real tokens, routed by the text's language.
    model = MoLForMaskedLM.from_pretrained(bundle).eval()
    ids = encoder.tokenizer(texts[0], truncation=True, max_length=encoder.max_length, return_tensors="pt")
    with torch.no_grad():
        hidden = model.mol(**ids, languages=[codes[0]]).last_hidden_state
    np.testing.assert_allclose(batched[0], hidden[0].mean(0).numpy(), atol=1e-5)
    other = "rus_Cyrl" if codes[0] != "rus_Cyrl" else "eng_Latn"
    assert not np.allclose(encoder.encode(texts[:1], other)[0], batched[0], atol=1e-4), "groups should differ"
    # Batches follow language groups, then length.
    lengths = [len(ids) for ids in encoder.tokenizer(texts)["input_ids"]]
    order = [i for batch in encoder.batches(lengths, [LANGUAGES.index(c) for c in codes]) for i in batch]
    group = dict(zip(LANGUAGES, encoder.config.language_to_group()))
    assert [group[codes[i]] for i in order] == sorted(group[c] for c in codes)


def test_encoder_max_length_follows_the_position_table(bundle):
    encoder = SentenceEncoder(str(bundle), show_progress_bar=False)
    assert encoder.max_length == 62  # 64 positions, XLM-R numbering from padding_idx + 1
    with pytest.raises(ValueError, match=r"max_length=100.*allows 2\.\.62"):
        SentenceEncoder(str(bundle), max_length=100)
    long = " ".join(udhr_articles()["eng_Latn"] * 3)
    assert encoder.encode([long], "eng_Latn").shape == (1, 32)


def test_encoder_needs_a_language_and_refuses_bad_ones(bundle):
    encoder = SentenceEncoder(str(bundle), show_progress_bar=False)
    with pytest.raises(ValueError, match="routes every text by its language"):
        encoder.encode(["Hello"])
    with pytest.raises(ValueError, match=r"'jpn_Jpan' is not one of this model's languages"):
        encoder.encode(["Hello"], "jpn_Jpan")
    with pytest.raises(ValueError, match="2 codes for 1 texts"):
        encoder.encode(["Hello"], ["eng_Latn", "fra_Latn"])
    assert np.allclose(encoder.encode(["Bonjour"], "fr"), encoder.encode(["Bonjour"], "fra_Latn"))


# -- mteb -----------------------------------------------------------------------------------------------------------

def mteb_scores(out, task):
    [path] = (out / "mteb").rglob(f"{task}.json")
    result = json.loads(path.read_text())
    return {score["hf_subset"]: score for score in result["scores"]["test"]}


def cosines(a, b):
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_sts_and_pair_scores_equal_an_independent_computation(evaluated, bundle):
    out, model, _ = evaluated
    encoder = SentenceEncoder(str(bundle), show_progress_bar=False)
    task = tiny_tasks()[2]
    task.load_data()

    def sts(subset, first, second):
        data = task.dataset[subset]["test"]
        a, b = encoder.encode(data["sentence1"], first), encoder.encode(data["sentence2"], second)
        return spearmanr(cosines(a, b), data["score"]).statistic

    sts_scores = mteb_scores(out, "UDHRSTS")
    assert sts_scores["en-en"]["cosine_spearman"] == pytest.approx(sts("en-en", "eng_Latn", "eng_Latn"), abs=1e-6)
    # Cross-lingual: the first column routed as English, the second as French.
    assert sts_scores["en-fr"]["cosine_spearman"] == pytest.approx(sts("en-fr", "eng_Latn", "fra_Latn"), abs=1e-6)
    assert sts_scores["en-fr"]["cosine_spearman"] != pytest.approx(sts("en-fr", "eng_Latn", "eng_Latn"), abs=1e-6)
    routing = json.loads(next((out / "routing").rglob("UDHRSTS.json")).read_text())
    assert [(r["subset"], r["side"], r["routed_to"]) for r in routing if r["subset"] == "en-fr"] == [
        ("en-fr", 0, "eng_Latn"), ("en-fr", 1, "fra_Latn")]

    pairs = tiny_tasks()[1]
    pairs.load_data()
    data = pairs.dataset["ru"]["test"]
    cosine = cosines(encoder.encode(data["sentence1"], "rus_Cyrl"), encoder.encode(data["sentence2"], "rus_Cyrl"))
    pair_scores = mteb_scores(out, "UDHRPairClassification")
    assert pair_scores["ru"]["cosine_ap"] == pytest.approx(average_precision_score(data["labels"], cosine), abs=1e-6)
    assert pair_scores["ru"]["main_score"] >= pair_scores["ru"]["cosine_ap"]
    # A wrong routing gives another score: the routing reaches the model.
    wrong = cosines(encoder.encode(data["sentence1"], "eng_Latn"), encoder.encode(data["sentence2"], "eng_Latn"))
    assert average_precision_score(data["labels"], wrong) != pytest.approx(pair_scores["ru"]["cosine_ap"], abs=1e-6)


def test_subsets_are_routed_by_their_language_and_unknown_ones_skipped(evaluated):
    out, model, _ = evaluated
    routing = [json.loads(path.read_text()) for path in (out / "routing").rglob("*.json")]
    routed = {(r["task"], r["subset"], r["side"]): r["routed_to"] for calls in routing for r in calls}
    assert routed[("UDHRClassification", "fr", 0)] == "fra_Latn"
    assert routed[("UDHRPairClassification", "ru", 0)] == "rus_Cyrl"
    assert routed[("UDHRSTS", "de-de", 0)] == "deu_Latn"
    assert "ja" in model["skipped"]["UDHRClassification"]
    assert "jpn-Jpan" in model["skipped"]["UDHRClassification"]["ja"]
    assert "ja" not in mteb_scores(out, "UDHRClassification")
    assert {row["subset"] for row in model["scores"] if row["task"] == "UDHRClassification"} == {"en", "fr", "de"}


def test_default_language_routes_unknown_subsets_there(bundle, tmp_path):
    summary = evaluate_models([str(bundle)], [UDHRClassification()], tmp_path, default_language="eng_Latn",
                              show_progress=False, log=lambda _: None)
    [model] = summary["models"].values()
    assert {row["subset"]: row["routed_to"] for row in model["scores"]}["ja"] == ["eng_Latn"]
    routing = json.loads(next((tmp_path / "routing").rglob("*.json")).read_text())
    assert any(r["subset"] == "ja" and r["default_language_used"] for r in routing)


def test_mteb_accepts_the_encoder_directly(bundle, tmp_path):
    import mteb

    encoder = mteb_encoder(str(bundle), show_progress_bar=False)
    task = UDHRClassification().filter_languages(None, hf_subsets=["de"])
    result = mteb.evaluate(encoder, [task], cache=None, show_progress_bar=False)
    assert result.task_results[0].scores["test"][0]["hf_subset"] == "de"
    assert encoder.mteb_model_meta.name == f"local/{bundle.parent.name}-model"
    assert encoder.mteb_model_meta.embed_dim == 32


def test_results_files_tables_and_plots(evaluated):
    out, model, _ = evaluated
    for name in ("summary.json", "results.md", "results.csv", "languages.csv", "families.png", "languages.png"):
        assert (out / name).is_file(), name
    assert set(model["families"]) == {"classification", "pair_classification", "sts"}
    assert model["average"] == pytest.approx(np.mean(list(model["families"].values())))
    assert "| local/bundle" in (out / "results.md").read_text()


def test_rerun_skips_finished_pairs_and_refuses_other_settings(evaluated, bundle):
    out, _, _ = evaluated
    stamps = {path: path.stat().st_mtime_ns for path in (out / "mteb").rglob("*.json")}
    log = []
    evaluate_models([str(bundle)], tiny_tasks(), out, show_progress=False, log=log.append)
    assert sum("results exist, not rerun" in line for line in log) == 3, log
    assert stamps == {path: path.stat().st_mtime_ns for path in (out / "mteb").rglob("*.json")}
    with pytest.raises(ValueError, match="under other settings.*max_length"):
        evaluate_models([str(bundle)], tiny_tasks(), out, max_length=32, show_progress=False)


def test_update_card_writes_model_index_results(bundle, tmp_path):
    import shutil

    from huggingface_hub import ModelCard

    folder = tmp_path / "model"
    shutil.copytree(bundle, folder)
    evaluate_models([str(folder)], [UDHRClassification()], tmp_path / "eval", update_card=True,
                    show_progress=False, log=lambda _: None)
    card = ModelCard.load(folder / "README.md")
    results = {(r.task_name, r.dataset_config): r.metric_value for r in card.data.eval_results}
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    [model] = summary["models"].values()
    expected = {(row["task"], row["subset"]): round(100 * row["score"], 4) for row in model["scores"]}
    assert results == expected and len(results) == 3


# -- aggregation ------------------------------------------------------------------------------------------------------

def test_aggregation_follows_the_papers_rule():
    rows = [  # scores 0-1; per language the mean over a family's datasets, then over languages, then families
        {"task": "C1", "family": "classification", "subset": "en", "languages": ["eng_Latn"], "score": 0.50},
        {"task": "C1", "family": "classification", "subset": "am", "languages": ["amh_Ethi"], "score": 0.30},
        {"task": "C2", "family": "classification", "subset": "en", "languages": ["eng_Latn"], "score": 0.70},
        {"task": "C2", "family": "classification", "subset": "en-ext", "languages": ["eng_Latn"], "score": 0.90},
        {"task": "P", "family": "pair_classification", "subset": "en", "languages": ["eng_Latn"], "score": 0.60},
        {"task": "S", "family": "sts", "subset": "en-am", "languages": ["eng_Latn", "amh_Ethi"], "score": 0.40},
        {"task": "S", "family": "sts", "subset": "en-en", "languages": ["eng_Latn"], "score": 0.80},
    ]
    result = aggregate(rows)
    # classification: eng = mean(C1 50, C2 mean(70, 90) = 80) = 65; amh = 30 -> 47.5
    assert result["families"]["classification"] == pytest.approx(47.5)
    assert result["families"]["pair_classification"] == pytest.approx(60.0)
    # sts: eng = mean(40, 80) = 60; amh = 40 -> 50
    assert result["families"]["sts"] == pytest.approx(50.0)
    assert result["average"] == pytest.approx((47.5 + 60 + 50) / 3)
    assert result["languages"] == pytest.approx({"eng_Latn": (65 + 60 + 60) / 3, "amh_Ethi": (30 + 40) / 2})
    assert result["resource"] == pytest.approx({"low": 35.0, "high": (65 + 60 + 60) / 3})  # amh Low, eng High


# -- sentence-transformers ------------------------------------------------------------------------------------------

def st_expected(bundle, source, tmp_path):
    texts, codes = mixed_texts()
    encoder = SentenceEncoder(str(bundle), show_progress_bar=False)
    expected = {"source": str(source), "texts": texts, "codes": codes, "embeddings": encoder.encode(texts, codes),
                "french": encoder.encode(texts[:3], "fra_Latn")}
    path = tmp_path / "st_expected.pt"
    torch.save(expected, path)
    return path


def run_clean_st(path, tmp_path, env=None):
    clean_env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    clean_env.update(HF_HOME=str(tmp_path / "fresh-hf-home"), **(env or {}))
    result = subprocess.run([sys.executable, "-I", str(CLEAN_ST_CHECK), str(path)], cwd=tmp_path, env=clean_env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    return result.stdout


@pytest.mark.slow
def test_sentence_transformers_loads_a_bundle_in_a_clean_interpreter(bundle, tmp_path):
    for name in ("modules.json", "sentence_bert_config.json", "1_Pooling/config.json", "mol_sentence_transformers.py"):
        assert (bundle / name).is_file(), name
    assert "sentence-transformers OK" in run_clean_st(st_expected(bundle, bundle, tmp_path), tmp_path)


@pytest.mark.slow
def test_sentence_transformers_loads_a_bundle_from_the_hub(bundle, tmp_path, hub):
    from huggingface_hub import HfApi

    HfApi().create_repo("mol-org/tiny-mol-st", exist_ok=True)
    HfApi().upload_folder(repo_id="mol-org/tiny-mol-st", folder_path=str(bundle))
    out = run_clean_st(st_expected(bundle, "mol-org/tiny-mol-st", tmp_path), tmp_path, env={"HF_ENDPOINT": hub.endpoint})
    assert "sentence-transformers OK from mol-org/tiny-mol-st" in out


# -- bad inputs, each refused before any model runs ------------------------------------------------------------------

@pytest.mark.parametrize("tasks, message", [
    ("mol-table12", r"Unknown task or preset 'mol-table12'.*did you mean.*mol-table11"),
    ("MassiveIntentClasification", r"Unknown task or preset.*did you mean.*MassiveIntentClassification"),
])
def test_unknown_tasks_and_presets_are_refused(bundle, tmp_path, tasks, message):
    with pytest.raises(ValueError, match=message):
        evaluate_models([str(bundle)], tasks, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bad_models_languages_and_folders_are_refused(bundle, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="does not exist"):
        evaluate_models([str(tmp_path / "missing-model")], tiny_tasks(), out)
    with pytest.raises(ValueError, match=r"UDHRJapaneseClassification has no language.*\['jpn-Jpan'\].*eng_Latn"):
        evaluate_models([str(bundle)], [UDHRJapaneseClassification()], out)
    with pytest.raises(ValueError, match=r"--languages has 'jpn_Jpan'.*eng_Latn"):
        evaluate_models([str(bundle)], tiny_tasks(), out, languages="eng_Latn,jpn_Jpan")
    assert not out.exists()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not an evaluation")
    with pytest.raises(ValueError, match="not an evaluation folder"):
        evaluate_models([str(bundle)], tiny_tasks(), foreign)


def test_languages_restrict_the_subsets(bundle, tmp_path):
    summary = evaluate_models([str(bundle)], tiny_tasks()[:1], tmp_path, languages="de", show_progress=False,
                              log=lambda _: None)
    [model] = summary["models"].values()
    assert {row["subset"] for row in model["scores"]} == {"de"}
    assert "requested languages" in model["skipped"]["UDHRClassification"]["en"]


# -- the command line, on the model configs/tiny_udhr.yaml trains, against a Table 11 task on the loopback Hub ----

def push_massive_intent(hub):
    """MassiveIntentClassification's dataset in its real layout (a default config with a `lang` column; train,
    validation, test), at the revision mteb pins, made from the UDHR sample."""
    from datasets import Dataset, DatasetDict

    articles = udhr_articles()
    # One content for every test of a session: datasets caches the pinned revision once.
    subsets = {"en": "eng_Latn", "de": "deu_Latn", "fr": "fra_Latn", "es": "spa_Latn", "ru": "rus_Cyrl",
               "ar": "arb_Arab", "ja": "jpn_Jpan", "hi": "hin_Deva"}
    columns = ("id", "lang", "text", "label", "label_text")
    splits = {split: {column: [] for column in columns} for split in ("train", "validation", "test")}
    for subset, code in subsets.items():
        for i, text in enumerate(articles[code]):
            for j, part in enumerate(halves(text)):
                split = splits["train" if i < 16 else "validation" if i < 20 else "test"]
                for column, value in zip(columns, (f"{i}-{j}", subset, part, i % 3, f"intent_{i % 3}")):
                    split[column].append(value)
    DatasetDict({split: Dataset.from_dict(data) for split, data in splits.items()}).push_to_hub(
        "mteb/amazon_massive_intent")
    hub.state.pin_revision("dataset", "mteb/amazon_massive_intent", MASSIVE_REVISION)


@pytest.mark.slow
def test_evaluate_mol_command_on_the_tiny_udhr_model(tmp_path, hub):
    env = dict(os.environ, PYTHONPATH=str(PROJECT), OMP_NUM_THREADS="1", HF_ENDPOINT=hub.endpoint)
    train = subprocess.run(
        [sys.executable, str(PROJECT / "train_mlm.py"), "--config", str(PROJECT / "configs" / "tiny_udhr.yaml"),
         "--output-dir", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache"), "--trackers", "[]",
         "--max-steps", "30", "--checkpoint-every", "30", "--eval-every", "0"],
        cwd=PROJECT, env=env, capture_output=True, text=True, timeout=600)
    assert train.returncode == 0, train.stderr[-3000:]
    push_massive_intent(hub)
    command = [sys.executable, str(PROJECT / "evaluate_mol.py"), "mteb", "--model", str(tmp_path / "run" / "model"),
               "--tasks", "MassiveIntentClassification", "--output-dir", str(tmp_path / "eval"), "--threads", "1",
               "--no-progress"]
    run = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    [model] = summary["models"].values()
    assert {row["subset"]: row["routed_to"] for row in model["scores"]} == {
        "en": ["eng_Latn"], "de": ["deu_Latn"], "fr": ["fra_Latn"], "es": ["spa_Latn"], "ru": ["rus_Cyrl"],
        "ar": ["arb_Arab"]}  # mteb's `ar` is ara-Arab, the macrolanguage: its standard member is arb_Arab
    assert set(model["skipped"]["MassiveIntentClassification"]) >= {"ja", "zh-CN"}
    assert 0 <= model["families"]["classification"] <= 100
    assert any(path.endswith(f"/resolve/{MASSIVE_REVISION}/data/test-00000-of-00001.parquet")
               for _, path in hub.state.requests), "mteb did not load the task's data from the loopback Hub"
    again = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "results exist, not rerun" in again.stdout, again.stdout + again.stderr[-2000:]
    bad = subprocess.run(command + ["--max-length", "40"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "under other settings" in bad.stderr, bad.stderr[-2000:]


# -- routing by language identification (--routing auto) -------------------------------------------------------------

@pytest.fixture(scope="module")
def identifying_bundle(bundle, tiny_tokenizer_dir, tmp_path_factory):
    """The bundle with a language identifier fitted on the UDHR sample's six languages."""
    from mol_toolkit.training import language_identification as lid

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    model = MoLForMaskedLM.from_pretrained(bundle).eval()
    articles = udhr_articles()
    lid.fit_language_identifier(model, {code: tokenizer(articles[code][:24])["input_ids"] for code in LANGUAGES},
                                lid.special_token_ids(tokenizer))
    folder = tmp_path_factory.mktemp("identifying") / "model"
    model.save_pretrained(folder, tokenizer=tokenizer)
    return folder


def test_routing_auto_identifies_every_text_and_records_what_it_found(identifying_bundle, tmp_path):
    summary = evaluate_models([str(identifying_bundle)], [UDHRClassification()], tmp_path, routing="auto",
                              default_language="eng_Latn", show_progress=False, log=lambda _: None)
    [model] = summary["models"].values()
    assert {row["subset"] for row in model["scores"]} == {"en", "fr", "de", "ja"}  # the same subsets as by subset
    calls = json.loads(next((tmp_path / "routing").rglob("*.json")).read_text())
    assert all(call["routed_to"] == "auto" and sum(call["identified"].values()) == call["texts"] for call in calls)
    # What was identified is recorded; its accuracy on this tiny random model is not the point (see
    # test_language_identification): the subset's language is the one most often found.
    known = [call for call in calls if call["subset"] in ("en", "fr", "de")]
    assert len(known) == 6 and all(max(call["identified"], key=call["identified"].get) == call["subset_language"]
                                   .replace("-", "_") for call in known), known
    assert all(0.5 < call["identified_as_subset_language"] <= 1 for call in known), known
    settings = json.loads((tmp_path / "evaluation.json").read_text())["models"]
    assert [s["routing"] for s in settings.values()] == ["auto"]
    # The same folder refuses the other routing: results of the two are never mixed.
    with pytest.raises(ValueError, match="routing"):
        evaluate_models([str(identifying_bundle)], [UDHRClassification()], tmp_path, default_language="eng_Latn",
                        show_progress=False, log=lambda _: None)


def test_routing_auto_needs_an_identifier_and_a_fallback(bundle, identifying_bundle, tmp_path):
    with pytest.raises(ValueError, match="--routing auto: .* has no language identifier"):
        evaluate_models([str(bundle)], [UDHRClassification()], tmp_path / "a", routing="auto", show_progress=False)
    with pytest.raises(ValueError, match="need a language to go to: pass --default-language"):
        evaluate_models([str(identifying_bundle)], [UDHRClassification()], tmp_path / "b", routing="auto",
                        show_progress=False)
    with pytest.raises(ValueError, match="routing 'lid' is unknown"):
        mteb_encoder(str(identifying_bundle), routing="lid")
    encoder = SentenceEncoder(str(identifying_bundle), show_progress_bar=False)
    texts = [udhr_articles()[code][25] for code in ("fra_Latn", "rus_Cyrl", "deu_Latn")]
    np.testing.assert_allclose(encoder.encode(texts, "auto"), encoder.encode(texts, ["fra_Latn", "rus_Cyrl", "deu_Latn"]),
                               atol=1e-6)
    assert encoder.last_identified == ["fra_Latn", "rus_Cyrl", "deu_Latn"]
