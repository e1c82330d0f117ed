"""The papers' data rules, honoured or refused before training: the Mixture of Languages floor (min_sentences, topped
up from a supplementary corpus), the Interference Matrix's equal data per language; every language's sentences
against its floor and cap in results.json and the card."""

import json

import pytest

from conftest import PROJECT
from mol_toolkit.training.trainer import MLMTrainer
from mol_toolkit.run_config import load_run_config

TINY = PROJECT / "configs" / "tiny_udhr.yaml"
UDHR = str(PROJECT / "data" / "udhr" / "udhr46_articles.jsonl")


def tiny(tmp_path, **overrides):
    return load_run_config(TINY, {"output_dir": str(tmp_path / "run"), "cache_dir": str(tmp_path / "cache"),
                                  "trackers": [], "max_steps": 2, "checkpoint_every": 0, "eval_every": 0,
                                  "language_identifier": False, "export": False, **overrides})


def test_a_language_under_the_floor_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match=r"fewer training sentences than min_sentences=1000 after any top-up: "
                                         r"\{'eng_Latn': \d+.*supplementary_data.*allow_below_min_sentences"):
        MLMTrainer(tiny(tmp_path, min_sentences=1000), show_progress=False)
    assert not (tmp_path / "run").exists()


def test_a_supplementary_corpus_tops_a_language_up_to_the_floor(tmp_path):
    # The UDHR train split alone has 24 articles per language; the devtest split as the top-up source gives 30.
    supplementary = {"path": UDHR, "language_field": "lang", "split_field": "split", "split": "devtest"}
    config = tiny(tmp_path, min_sentences=28, supplementary_data=supplementary, deduplicate=False)
    trainer = MLMTrainer(config, show_progress=False)
    assert all(row["sentences"] >= 28 and not row["below_floor"] for row in trainer.data_amounts.values())


def test_allowed_below_the_floor_is_trained(tmp_path):
    trainer = MLMTrainer(tiny(tmp_path, min_sentences=1000, allow_below_min_sentences=True), show_progress=False)
    assert all(row["below_floor"] for row in trainer.data_amounts.values())


def test_every_languages_sentences_against_floor_and_cap_in_results_and_card(tmp_path):
    config = tiny(tmp_path, min_sentences=15, allow_below_min_sentences=True, max_sentences=20, export=True)
    result = MLMTrainer(config, show_progress=False).train()
    written = json.loads((tmp_path / "run" / "results.json").read_text())
    for code in config.languages if isinstance(config.languages, list) else result["languages"]:
        row = written["data"][code]
        assert row["min_sentences"] == 15 and row["max_sentences"] == 20
        assert row["capped"] and row["sentences"] == 20
    card = (tmp_path / "run" / "model" / "README.md").read_text()
    assert "| floor (min_sentences) | cap (max_sentences) |" in card
    assert "| 15 | 20 (capped) |" in card
    assert "global batch (sentences per step) | 16 (16 per device x 1 process(es) x 1 accumulation step(s))" in card


def test_equal_data_per_language_is_refused_when_unequal(tmp_path):
    with pytest.raises(ValueError, match=r"equal_sentences: every language must have max_sentences=1000000.*differ"):
        MLMTrainer(tiny(tmp_path, max_sentences=1_000_000, equal_sentences=True), show_progress=False)
    with pytest.raises(ValueError, match="equal_sentences=true needs max_sentences"):
        tiny(tmp_path, max_sentences=None, equal_sentences=True)
    trainer = MLMTrainer(tiny(tmp_path, max_sentences=10, equal_sentences=True), show_progress=False)
    assert {row["sentences"] for row in trainer.data_amounts.values()} == {10}


def test_the_interference_presets_pin_equal_data():
    for name, amount in (("paper", 1_000_000), ("section5", 20_000_000)):
        text = (PROJECT / "configs" / "interference" / f"{name}.yaml").read_text()
        assert "equal_sentences: true" in text and f"max_sentences: {amount}" in text
