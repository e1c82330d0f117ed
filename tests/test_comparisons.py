"""One language set per comparison (Mixture of Languages, Section 3.2, Tables 4, 5 and 12): models evaluated together
are scored on the same (task, subset) pairs and cut at the same length; MoL-90 on Table 11's tasks is scored on
Table 12's 47 languages; macrolanguage subsets are never scored as another member."""

import json

import pytest
import torch
from conftest import tiny_config_kwargs
from mteb_tasks import UDHRClassification, tiny_tasks
from transformers import AutoTokenizer

from configuration_mol import MoLConfig
from modeling_mol import MoLForMaskedLM
from mol_toolkit.evaluation.mteb_encoder import MoLMTEBEncoder, SubsetSkipped
from mol_toolkit.evaluation.run import evaluate_models, plan_models
from mol_toolkit.evaluation.tasks import resolve_tasks
from mol_toolkit.languages import MOL_90, PAPER_GROUPS_90, TABLE_12, resolve_language_code


def save(model, tokenizer, folder):
    model.eval().save_pretrained(folder, tokenizer=tokenizer)
    return str(folder)


@pytest.fixture(scope="module")
def trio(tiny_tokenizer_dir, tmp_path_factory):
    """Tiny dense, MoL and token-MoE models on the same six languages; the dense one has a longer position table."""
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    root = tmp_path_factory.mktemp("trio")
    vocab = len(tokenizer)
    dense = MoLForMaskedLM(MoLConfig(**tiny_config_kwargs(vocab_size=vocab, group_layers="dense",
                                                         max_position_embeddings=130)))
    mol = MoLForMaskedLM(MoLConfig(**tiny_config_kwargs(vocab_size=vocab)))
    moe = MoLForMaskedLM(MoLConfig(**tiny_config_kwargs(vocab_size=vocab, language_groups=None, routing="token",
                                                       num_experts=3)))
    return {name: save(model, tokenizer, root / name) for name, model in
            (("dense", dense), ("mol", mol), ("moe", moe))}


def scored(model_summary):
    return {(row["task"], row["subset"]) for row in model_summary["scores"]}


def test_models_evaluated_together_are_scored_on_the_same_subsets(trio, tmp_path):
    out = tmp_path / "eval"
    summary = evaluate_models(list(trio.values()), tiny_tasks(), out, show_progress=False, log=lambda _: None)
    sets = [scored(model) for model in summary["models"].values()]
    assert sets[0] == sets[1] == sets[2]
    assert ("UDHRClassification", "ja") not in sets[0]  # the MoL models decide: they do not know Japanese
    comparison = summary["comparison"]
    assert comparison["language_set"] == "common" and comparison["same_languages"]
    assert comparison["subsets"]["UDHRClassification"] == ["de", "en", "fr"]
    assert comparison["max_length"] == 62  # the MoL's position table, not the dense model's 128
    assert {model["settings"]["max_length"] for model in summary["models"].values()} == {62}
    dense = next(m for m in summary["models"].values() if m["source"] == trio["dense"])
    assert "not scored by every model" in dense["skipped"]["UDHRClassification"]["ja"]
    written = json.loads((out / "summary.json").read_text())
    assert written["comparison"]["subsets"] == comparison["subsets"]
    report = (out / "results.md").read_text()
    assert "Language set: common" in report and "- UDHRClassification: de, en, fr" in report
    assert "62 tokens" in report and "DIFFERENT" not in report


def test_different_language_sets_only_when_allowed_and_then_marked(trio, tmp_path):
    out = tmp_path / "eval"
    models = [trio["dense"], trio["mol"]]
    summary = evaluate_models(models, [UDHRClassification()], out, allow_different_languages=True,
                              show_progress=False, log=lambda _: None)
    dense, mol = summary["models"].values()
    assert ("UDHRClassification", "ja") in scored(dense) and ("UDHRClassification", "ja") not in scored(mol)
    assert not summary["comparison"]["same_languages"]
    report = (out / "results.md").read_text()
    assert "DIFFERENT subsets" in report and "(own language set)" in report
    assert "(own language set)" in (out / "results.csv").read_text()
    assert "(own language set)" in (out / "languages.csv").read_text()


def test_a_model_evaluated_alone_is_reaggregated_on_the_common_set(trio, tmp_path):
    out = tmp_path / "eval"
    alone = evaluate_models([trio["dense"]], [UDHRClassification()], out, max_length=62, show_progress=False,
                            log=lambda _: None)
    [dense_alone] = alone["models"].values()
    assert ("UDHRClassification", "ja") in scored(dense_alone)
    log = []
    together = evaluate_models([trio["dense"], trio["mol"]], [UDHRClassification()], out, show_progress=False,
                               log=log.append)
    dense = next(m for m in together["models"].values() if m["source"] == trio["dense"])
    assert scored(dense) == {("UDHRClassification", code) for code in ("de", "en", "fr")}
    assert "ja" not in dense["languages"] and "jpn_Jpan" not in dense["languages"]
    assert any("results exist, not rerun" in line for line in log)  # the dense scores are reused, not recomputed
    by_subset = {row["subset"]: row["score"] for row in dense_alone["scores"]}
    assert all(row["score"] == by_subset[row["subset"]] for row in dense["scores"])


def test_requested_languages_every_model_must_know(trio, tmp_path):
    with pytest.raises(ValueError, match=r"--languages has 'jpn_Jpan'.*allow-different-languages"):
        plan_models([trio["dense"], trio["mol"]], [UDHRClassification()], tmp_path / "out",
                    languages="eng_Latn,jpn_Jpan")
    with pytest.raises(ValueError, match=r"--languages has 'afr_Latn'.*41 requested languages are missing"):
        plan_models([trio["mol"]], [UDHRClassification()], tmp_path / "out", languages="table12")
    with pytest.raises(ValueError, match=r"--languages has 'qqq'.*language table"):
        plan_models([trio["mol"]], [UDHRClassification()], tmp_path / "out", languages="qqq")
    plans = plan_models([trio["dense"], trio["mol"]], [UDHRClassification()], tmp_path / "out", languages="en,fr,de")
    assert plans.summary["language_set"] == "requested"
    assert sorted(plans[0].plans[0].routes) == sorted(plans[1].plans[0].routes) == ["de", "en", "fr"]


def test_one_max_length_for_every_model(trio, tmp_path):
    plans = plan_models([trio["dense"], trio["mol"]], [UDHRClassification()], tmp_path / "out")
    assert [plan.encoder.encoder.max_length for plan in plans] == [62, 62]
    with pytest.raises(ValueError, match=r"max_length=100 is out of range.*2\.\.62"):
        plan_models([trio["dense"], trio["mol"]], [UDHRClassification()], tmp_path / "out", max_length=100)


# -- MoL-90 on Table 11's tasks: the task metadata mteb ships, planned for a model with the 90 languages ----------

@pytest.fixture(scope="module")
def mol90(tiny_tokenizer_dir, tmp_path_factory):
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    config = MoLConfig(**tiny_config_kwargs(vocab_size=len(tokenizer), languages=MOL_90,
                                            language_groups=PAPER_GROUPS_90, num_hidden_layers=1))
    return save(MoLForMaskedLM(config), tokenizer, tmp_path_factory.mktemp("mol90") / "model")


def planned_languages(plans):
    from mol_toolkit.evaluation.aggregate import language_key
    from mol_toolkit.evaluation.mteb_encoder import subset_languages

    return {language_key(code) for plan in plans[0].plans for subset in plan.routes
            for code in subset_languages(plan.task.metadata, subset)}


def test_mol90_on_table11_tasks_is_scored_on_table12s_47_languages(mol90, tmp_path):
    plans = plan_models([mol90], "mol-table11", tmp_path / "out")
    assert plans.summary["language_set"] == "table12"
    assert planned_languages(plans) == set(TABLE_12) and len(TABLE_12) == 47
    assert len(plans.summary["languages"]) == 47
    # Without the paper's set: every subset MoL-90 can be routed on, and no macrolanguage substituted.
    plans = plan_models([mol90], "mol-table11", tmp_path / "out", languages="mol-90")
    languages = planned_languages(plans)
    assert "prs_Arab" not in languages and "pes_Arab" not in languages
    assert "kor_Hang" in languages  # MASSIVE's kor-Kore is Korean in Hangul
    massive = next(p for p in plans[0].plans if p.name == "MassiveIntentClassification")
    assert "ko" in massive.routes and massive.routes["ko"] == ["kor_Hang"]
    assert "fa" not in massive.routes and "Dari" not in massive.skipped["fa"]
    assert "prs_Arab" in massive.skipped["fa"] and "not substituted" in massive.skipped["fa"]
    assert set(TABLE_12) < languages


def test_iranian_persian_is_never_scored_as_dari(mol90):
    encoder = MoLMTEBEncoder(mol90, show_progress_bar=False)
    [massive] = resolve_tasks("MassiveIntentClassification")
    with pytest.raises(SubsetSkipped, match=r"pes_Arab.*prs_Arab.*not substituted"):
        encoder.route_subset(massive.metadata, "fa")
    assert encoder.route_subset(massive.metadata, "sw") == ["swh_Latn"]  # the standard member
    assert resolve_language_code("fas-Arab", ["prs_Arab"], macrolanguage="standard") is None
    assert resolve_language_code("fas-Arab", ["prs_Arab"]) == "prs_Arab"  # the general resolver is unchanged
    assert resolve_language_code("kor-Kore") == "kor_Hang"
