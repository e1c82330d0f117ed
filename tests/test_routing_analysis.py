"""`evaluate_mol.py routing` on a tiny MoE trained here: the expert histogram (table, CSV, PNG), learned vs random
routing (devtest MLM loss, MTEB), and the errors for bad input."""

import csv
import json

import pytest
import torch

import evaluate_mol
from conftest import PROJECT
from mol_toolkit.training.trainer import MLMTrainer
from mol_toolkit.run_config import load_run_config

LANGUAGES = ["eng_Latn", "deu_Latn", "fra_Latn", "spa_Latn", "rus_Cyrl", "arb_Arab"]


@pytest.fixture(scope="module")
def trained_moe(tmp_path_factory):
    """A tiny token-routed MoE trained for 30 steps on the UDHR sample and exported: (bundle, results.json)."""
    run = tmp_path_factory.mktemp("moe") / "run"
    config = load_run_config(PROJECT / "configs" / "tiny_udhr.yaml", {
        "output_dir": str(run), "cache_dir": str(tmp_path_factory.mktemp("cache")), "trackers": [],
        "max_steps": 30, "checkpoint_every": 0, "eval_every": 0, "checkpoint_at_end": False,
        "tokenizer": str(PROJECT / "data" / "udhr-tokenizer"), "routing": "token", "num_experts": 3,
        "train_data": {"path": str(PROJECT / "data/udhr/udhr46_articles.jsonl"), "language_field": "lang",
                       "split_field": "split", "split": "train"},
        "devtest_data": {"path": str(PROJECT / "data/udhr/udhr46_articles.jsonl"), "language_field": "lang",
                         "split_field": "split", "split": "devtest"}})
    result = MLMTrainer(config, show_progress=False).train()
    return run / "model", result


def routing(*arguments):
    return evaluate_mol.main(["routing", "--no-progress", *map(str, arguments)])


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_the_analysis_writes_the_histogram_and_the_learned_vs_random_tables(trained_moe, tmp_path, monkeypatch):
    bundle, training = trained_moe
    monkeypatch.chdir(PROJECT)  # the udhr preset names the shipped sample relative to the project
    out = tmp_path / "routing"
    assert routing("--model", bundle, "--output-dir", out, "--batches", 4, "--batch-size", 16,
                   "--figure-languages", "eng_Latn,fra_Latn,arb_Arab") == 0
    result = json.loads((out / "routing.json").read_text())
    assert result["routing"] == "token" and result["num_experts"] == 3 and result["routed_blocks"] == [0, 1]

    rows = read_csv(out / "expert_histogram.csv")
    assert [(r["language"], r["block"]) for r in rows] == [(code, block) for code in LANGUAGES for block in ("0", "1", "all")]
    for row in rows:
        shares = [float(row[f"expert{e}"]) for e in range(3)]
        assert sum(shares) == pytest.approx(1.0, abs=1e-5) and int(row["tokens"]) > 0
    table = (out / "expert_histogram.md").read_text()
    assert all(f"| {code} |" in table for code in LANGUAGES) and "| expert 0 | expert 1 | expert 2 |" in table
    assert (out / "expert_histogram.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    losses = {row["language"]: row for row in read_csv(out / "learned_vs_random.csv")}
    assert set(losses) == set(LANGUAGES)
    # The learned router's devtest loss is what train_mlm.py measured at the end of training: the same sentences,
    # the same masking (a generator per language code), the same batches of 16.
    for code in LANGUAGES:
        assert float(losses[code]["learned_mlm_loss"]) == pytest.approx(training["devtest_loss"][code], rel=1e-4)
    assert any(losses[c]["random_mlm_loss"] != losses[c]["learned_mlm_loss"] for c in LANGUAGES)
    assert "| learned |" in (out / "learned_vs_random.md").read_text()
    # A second run into the same folder is refused, --overwrite replaces it.
    assert routing("--model", bundle, "--output-dir", out, "--batches", 1) == 2
    assert routing("--model", bundle, "--output-dir", out, "--batches", 1, "--overwrite") == 0


def test_the_histogram_counts_every_token_of_the_chosen_batches(trained_moe, tmp_path, monkeypatch):
    """With a batch larger than a language's devtest split, every batch is the whole split: the shares equal those
    of one forward pass over it, counted here from the model's router logits."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from mol_toolkit.text_sources import read_probe_texts, udhr_sources

    bundle, _ = trained_moe
    monkeypatch.chdir(PROJECT)
    out = tmp_path / "routing"
    assert routing("--model", bundle, "--output-dir", out, "--batches", 3, "--batch-size", 64,
                   "--languages", "eng_Latn,rus_Cyrl") == 0
    rows = {(r["language"], r["block"]): r for r in read_csv(out / "expert_histogram.csv")}
    model = AutoModelForMaskedLM.from_pretrained(bundle, trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(bundle)
    texts = read_probe_texts(udhr_sources("devtest"), ["eng_Latn", "rus_Cyrl"], "devtest")
    for code in ("eng_Latn", "rus_Cyrl"):
        batch = tokenizer(texts[code], padding=True, truncation=True, max_length=128, return_tensors="pt")
        with torch.no_grad():
            logits = model(**batch, output_router_logits=True).router_logits
        real = batch["attention_mask"].reshape(-1).bool()
        for block, block_logits in zip(("0", "1"), logits):
            counts = torch.bincount(block_logits[real].argmax(-1), minlength=3).double()
            assert int(rows[(code, block)]["tokens"]) == 3 * int(real.sum())
            expected = (counts / counts.sum()).tolist()
            assert [float(rows[(code, block)][f"expert{e}"]) for e in range(3)] == pytest.approx(expected, abs=1e-6)


def test_mteb_scores_with_learned_and_random_routing(trained_moe, tmp_path, monkeypatch):
    from mol_toolkit.evaluation.routing_analysis import analyse
    from mteb_tasks import UDHRClassification

    bundle, _ = trained_moe
    monkeypatch.chdir(PROJECT)
    result = analyse(str(bundle), tmp_path / "routing", batches=1, mteb_tasks=[UDHRClassification()],
                     show_progress=False, log=lambda *_: None)
    assert set(result["mteb"]) == {"learned", "random"}
    assert all(0 <= score <= 100 for score in result["mteb"].values())
    for routing_name in ("learned", "random"):
        settings = json.loads((tmp_path / "routing" / f"mteb-{routing_name}" / "evaluation.json").read_text())
        (model_settings,) = settings["models"].values()
        assert model_settings["expert_routing"] == (None if routing_name == "learned" else "random (seed 0)")
    assert "MTEB average" in (tmp_path / "routing" / "learned_vs_random.md").read_text()


def test_bad_input_is_refused_before_the_model_runs(trained_moe, tmp_path, capsys, monkeypatch):
    from mol_toolkit.evaluation.encoder import SentenceEncoder

    bundle, _ = trained_moe
    monkeypatch.chdir(PROJECT)
    dense = PROJECT / "data" / "udhr-tokenizer"  # a folder without config.json
    cases = [
        (["--model", dense], "has no config.json"),
        (["--model", bundle, "--batches", 0], "batches must be an integer >= 1"),
        (["--model", bundle, "--languages", "jpn_Jpan"], "was not trained on ['jpn_Jpan']"),
        (["--model", bundle, "--figure-languages", "khm_Khmr"], "--figure-languages ['khm_Khmr'] are not among"),
        (["--model", bundle, "--mteb-tasks", "NoSuchTask"], "Unknown task or preset 'NoSuchTask'"),
        (["--model", bundle, "--max-length", 4000], "max_length must be an integer in 3..128"),
    ]
    for arguments, message in cases:
        assert routing(*arguments, "--output-dir", tmp_path / "never") == 2
        assert message in capsys.readouterr().err, arguments
    assert not (tmp_path / "never").exists()
    # A language-routed MoL has no router to analyse, and no random routing.
    from configuration_mol import MoLConfig
    from conftest import tiny_config_kwargs
    from modeling_mol import MoLForMaskedLM

    mol = tmp_path / "mol"
    MoLForMaskedLM(MoLConfig(**tiny_config_kwargs())).save_pretrained(mol)
    assert routing("--model", mol, "--output-dir", tmp_path / "never") == 2
    assert "is not a MoE (routing='language')" in capsys.readouterr().err
    with pytest.raises(ValueError, match="has no learned router"):
        SentenceEncoder(str(mol), random_routing_seed=0)


@pytest.mark.slow
def test_the_paper_preset_is_section_5_1s_setting(trained_moe, tmp_path, hub, monkeypatch):
    """Figure 4's histogram from MassiveIntent test sentences in English and French (Khmer is not among the model's
    languages: said), Table 7's loss on the devtest text and its accuracy on English MassiveIntent."""
    from test_evaluation import push_massive_intent

    from mol_toolkit.text_sources import udhr_sources
    from mol_toolkit.evaluation.routing_analysis import analyse

    bundle, _ = trained_moe
    monkeypatch.chdir(PROJECT)
    push_massive_intent(hub)
    before = len(hub.state.requests)
    out = tmp_path / "routing"
    result = analyse(str(bundle), out, preset="paper", data=udhr_sources("devtest"), batches=2, batch_size=8,
                     show_progress=False, log=lambda _: None)
    assert result["histogram_data"] == {"mteb_task": "MassiveIntentClassification", "split": "test"}
    assert result["histogram_languages"] == ["eng_Latn", "fra_Latn"]
    assert {row["language"] for row in result["histogram"]} == {"eng_Latn", "fra_Latn"}
    assert set(result["learned_vs_random"]) == set(LANGUAGES)  # the loss: every language of the model
    assert any(note.startswith("khm_Khmr") for note in result["notes"])
    assert "khm_Khmr" in (out / "learned_vs_random.md").read_text()
    assert any("amazon_massive_intent" in path for _, path in hub.state.requests[before:])
    assert result["mteb_languages"] == "eng_Latn"
    for routing_name in ("learned", "random"):
        summary = json.loads((out / f"mteb-{routing_name}" / "summary.json").read_text())
        [model] = summary["models"].values()
        assert {(row["task"], row["subset"]) for row in model["scores"]} == {("MassiveIntentClassification", "en")}
