"""languages="auto": the checkpoint's language identifier picks each text's language, then the model routes it.

The identifier is fitted here on the shipped UDHR sample (articles 1-24 of 46 languages) over the input embeddings
of small random-weight MoL models with the shipped UDHR tokenizer, and scored on articles 25-30.
"""

import json
import os
import re
import subprocess
import sys

import pytest
import torch
from conftest import PROJECT, UDHR
from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer

from configuration_mol import MoLConfig
from modeling_mol import MoLForMaskedLM, MoLForSequenceClassification, MoLForTokenClassification, MoLModel
from mol_toolkit.training import language_identification as lid


TOKENIZER = PROJECT / "data" / "udhr-tokenizer"
ACCURACY_FLOOR = 0.95  # README: the identifier on the UDHR sample's devtest split, 46 languages
MODEL_LANGUAGES = ["deu_Latn", "eng_Latn", "fra_Latn", "rus_Cyrl"]
GROUPS = {"a": ["deu_Latn", "eng_Latn"], "b": ["fra_Latn", "rus_Cyrl"]}
CLEAN_CHECK = PROJECT / "tests" / "clean_auto_check.py"


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(TOKENIZER)


@pytest.fixture(scope="module")
def udhr(tokenizer):
    """split -> code -> (texts, token ids) of the shipped sample."""
    rows = [json.loads(line) for line in UDHR.read_text(encoding="utf-8").splitlines()]
    by_split = {}
    for row in rows:
        texts, ids = by_split.setdefault(row["split"], {}).setdefault(row["lang"], ([], []))
        texts.append(row["text"])
        ids.append(tokenizer(row["text"], truncation=True, max_length=128)["input_ids"])
    return by_split


def ids_of(udhr, split, codes=None):
    return {code: ids for code, (_, ids) in udhr[split].items() if codes is None or code in codes}


def tiny_config(tokenizer, **overrides):
    values = dict(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64, max_position_embeddings=130, hidden_dropout_prob=0.0,
                  attention_probs_dropout_prob=0.0, languages=MODEL_LANGUAGES, language_groups=GROUPS,
                  group_layers="all")
    values.update(overrides)
    return MoLConfig(**values)


@pytest.fixture(scope="module")
def auto_model(tokenizer, udhr):
    """A 4-language MoL whose identifier tells apart all 46 UDHR languages (so it can find languages the model
    lacks), falling back to English."""
    torch.manual_seed(0)
    model = MoLForMaskedLM(tiny_config(tokenizer, default_language="eng_Latn")).eval()
    lid.fit_language_identifier(model, ids_of(udhr, "train"), lid.special_token_ids(tokenizer), fitted_on="UDHR 1-24")
    return model


def devtest_batch(tokenizer, udhr, codes, article=2, max_length=128):
    texts = [udhr["devtest"][code][0][article] for code in codes]
    encoded = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return texts, encoded


# ---- the identifier ---------------------------------------------------------------------------------------------

def test_identifier_fitted_on_udhr_reaches_the_stated_accuracy(auto_model, udhr):
    scores = lid.score_language_identifier(auto_model, ids_of(udhr, "devtest"))
    print(f"\nlanguage identifier, UDHR devtest, 46 languages: accuracy {scores['accuracy']:.4f} over "
          f"{scores['sentences']} articles; confusions {scores['confusions']}")
    assert scores["sentences"] == 46 * 6 and len(scores["per_language"]) == 46
    assert scores["accuracy"] >= ACCURACY_FLOOR, scores


def test_identifier_weights_fold_the_scaling_and_match_scikit_learn(tokenizer, udhr):
    """The installed (labels, hidden) matrix gives scikit-learn's own predictions on standardised features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    torch.manual_seed(1)
    model = MoLModel(tiny_config(tokenizer)).eval()
    codes = ["eng_Latn", "fra_Latn", "deu_Latn"]
    train, ignored = ids_of(udhr, "train", codes), lid.special_token_ids(tokenizer)
    labels = lid.fit_language_identifier(model, train, ignored)
    features = {code: lid.sentence_features(model, ids_of(udhr, "devtest", codes)[code], ignored) for code in codes}
    import numpy as np

    x = np.concatenate([lid.sentence_features(model, train[c], ignored) for c in train])
    y = np.concatenate([[i] * len(train[c]) for i, c in enumerate(train)])
    scaler = StandardScaler().fit(x)
    reference = LogisticRegression(max_iter=3000).fit(scaler.transform(x), y)
    for code in codes:
        expected = reference.predict_proba(scaler.transform(features[code]))
        logits = torch.tensor(features[code]) @ model.language_identifier.weight.double().T
        got = (logits + model.language_identifier.bias.double()).softmax(-1).numpy()
        order = [list(train).index(label) for label in labels]
        np.testing.assert_allclose(got, expected[:, order], atol=1e-4)
    assert model.config.language_identifier_labels == labels


def test_two_languages_and_bad_fits(tokenizer, udhr):
    torch.manual_seed(2)
    model = MoLModel(tiny_config(tokenizer)).eval()
    ignored = lid.special_token_ids(tokenizer)
    lid.fit_language_identifier(model, ids_of(udhr, "train", ["eng_Latn", "rus_Cyrl"]), ignored)
    assert lid.score_language_identifier(model, ids_of(udhr, "devtest", ["eng_Latn", "rus_Cyrl"]))["accuracy"] == 1.0
    with pytest.raises(ValueError, match="at least 2 languages"):
        lid.fit_language_identifier(model, ids_of(udhr, "train", ["eng_Latn"]), ignored)
    with pytest.raises(ValueError, match="none for \\['fra_Latn'\\]"):
        lid.fit_language_identifier(model, {"eng_Latn": [[5, 6]], "fra_Latn": []}, ignored)


# ---- routing by identification -----------------------------------------------------------------------------------

def test_auto_routing_equals_routing_by_the_true_codes_where_identification_is_right(auto_model, tokenizer, udhr):
    codes = ["fra_Latn", "eng_Latn", "rus_Cyrl", "deu_Latn", "eng_Latn", "fra_Latn"]
    texts = [udhr["devtest"][code][0][i] for i, code in enumerate(codes)]
    encoded = tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    found = auto_model.identify_languages(encoded["input_ids"], encoded["attention_mask"])
    right = [i for i, code in enumerate(codes) if found.codes[i] == code]
    assert len(right) >= 5, (found.codes, codes)
    with torch.no_grad():
        auto = auto_model(**encoded, languages="auto")
        true = auto_model(**encoded, languages=codes)
        mixed = auto_model(**encoded, languages=["auto" if i % 2 else code for i, code in enumerate(codes)])
    assert auto.language_ids.tolist() == found.lang_ids.tolist() and true.language_ids is None
    torch.testing.assert_close(auto.logits[right], true.logits[right], atol=0, rtol=0)
    torch.testing.assert_close(mixed.logits[right], true.logits[right], atol=0, rtol=0)
    # The base model and the default language "auto" route the same way.
    auto_model.set_default_language("auto")
    try:
        with torch.no_grad():
            by_default = auto_model.mol(**encoded)
            explicit = auto_model.mol(**encoded, languages=codes)
    finally:
        auto_model.set_default_language("eng_Latn")
    torch.testing.assert_close(by_default.last_hidden_state[right], explicit.last_hidden_state[right], atol=0, rtol=0)
    assert by_default.language_ids.tolist() == found.lang_ids.tolist()


def test_unknown_languages_go_to_the_fallback_or_are_an_error_naming_the_text(auto_model, tokenizer, udhr):
    texts, encoded = devtest_batch(tokenizer, udhr, ["fra_Latn", "jpn_Jpan", "rus_Cyrl", "hin_Deva"])
    found = auto_model.identify_languages(encoded["input_ids"], encoded["attention_mask"])
    assert found.codes == ["fra_Latn", "jpn_Jpan", "rus_Cyrl", "hin_Deva"]
    assert found.fell_back.tolist() == [False, True, False, True]
    assert found.routed_codes == ["fra_Latn", "eng_Latn", "rus_Cyrl", "eng_Latn"]  # the default language
    with torch.no_grad():
        out = auto_model(**encoded, languages="auto")
        english = auto_model(**encoded, languages=["fra_Latn", "eng_Latn", "rus_Cyrl", "eng_Latn"])
    torch.testing.assert_close(out.logits, english.logits, atol=0, rtol=0)
    auto_model.set_default_language("eng_Latn", fallback="rus_Cyrl")
    try:
        assert auto_model.identify_languages(encoded["input_ids"]).routed_codes[1] == "rus_Cyrl"
        auto_model.set_default_language("eng_Latn", fallback="error")
        with pytest.raises(ValueError, match=r"text 1 was identified as 'jpn_Jpan' \(confidence 0\.\d\d\), which this "
                                             r"model does not know; text 3 was identified as 'hin_Deva'"):
            auto_model(**encoded, languages="auto")
        # A confidence threshold nothing reaches: every text is unidentified, each named.
        auto_model.config.language_identifier_threshold = 1.0
        with pytest.raises(ValueError, match="text 0 was identified as 'fra_Latn' with confidence 0.*under the threshold 1.0"):
            auto_model(**encoded, languages="auto")
    finally:
        auto_model.config.language_identifier_threshold = 0.5
        auto_model.set_default_language("eng_Latn", fallback=None)
    # Without a default language and without a fallback, an unknown language is an error too.
    auto_model.set_default_language(None)
    try:
        with pytest.raises(ValueError, match="text 1 was identified as 'jpn_Jpan'"):
            auto_model.identify_languages(encoded["input_ids"], encoded["attention_mask"])
    finally:
        auto_model.set_default_language("eng_Latn")


def test_auto_needs_an_identifier_and_valid_settings(tokenizer):
    model = MoLForMaskedLM(tiny_config(tokenizer)).eval()
    ids = torch.tensor([[0, 5, 6, 2]])
    with pytest.raises(ValueError, match="needs a language identifier, and this model has none: fit one with"):
        model(input_ids=ids, languages="auto")
    with pytest.raises(ValueError, match="needs a language identifier"):
        model.set_default_language("auto")
    with pytest.raises(ValueError, match="default_language='auto' needs a language identifier"):
        tiny_config(tokenizer, default_language="auto")
    identifier = dict(language_identifier="input-embedding-linear", language_identifier_labels=MODEL_LANGUAGES)
    for bad, message in [
        (dict(language_identifier="fasttext", language_identifier_labels=["eng_Latn"]), "language_identifier 'fasttext' is unknown"),
        (dict(language_identifier="input-embedding-linear"), "needs language_identifier_labels"),
        (dict(identifier, language_identifier_threshold=1.5), "probability in \\[0, 1\\], got 1.5"),
        (dict(identifier, language_identifier_fallback="jpn_Jpan"), "language_identifier_fallback 'jpn_Jpan' is not in"),
        (dict(identifier, language_identifier_labels=["eng_Latn", "eng_Latn"]), "distinct language codes"),
        (dict(identifier, language_identifier_ignored_ids=[10**9]), "token ids in 0.."),
        (dict(default_language="xxx_Latn"), "default_language 'xxx_Latn' is not in languages"),
    ]:
        with pytest.raises(ValueError, match=message):
            tiny_config(tokenizer, **bad)


def test_inputs_embeds_cannot_be_identified(auto_model):
    with pytest.raises(ValueError, match="identifies texts from their input_ids; with inputs_embeds, name the"):
        auto_model(inputs_embeds=torch.zeros(1, 3, 64), languages="auto")


def test_identifier_is_saved_with_the_checkpoint_and_records_what_it_is(auto_model, tokenizer, udhr, tmp_path):
    auto_model.save_pretrained(tmp_path / "bundle", tokenizer=tokenizer)
    config = json.loads((tmp_path / "bundle" / "config.json").read_text())
    assert config["language_identifier"] == "input-embedding-linear" and config["language_identifier_fitted_on"]
    assert len(config["language_identifier_labels"]) == 46
    loaded = AutoModelForMaskedLM.from_pretrained(tmp_path / "bundle", trust_remote_code=True).eval()
    assert type(loaded).__module__.startswith("transformers_modules")  # the remote code, not this project's
    torch.testing.assert_close(loaded.mol.language_identifier.weight, auto_model.mol.language_identifier.weight)
    _, encoded = devtest_batch(tokenizer, udhr, ["rus_Cyrl", "deu_Latn"])
    with torch.no_grad():
        torch.testing.assert_close(loaded(**encoded, languages="auto").logits,
                                   auto_model(**encoded, languages="auto").logits)
    # `default_language="auto"` as a loading argument, as pipelines and sentence-transformers pass it.
    base = AutoModel.from_pretrained(tmp_path / "bundle", trust_remote_code=True, default_language="auto")
    assert base.config.default_language == "auto"


# ---- pipelines and sentence-transformers, mixed languages, no language given ---------------------------------------

def bundle_with_heads(tokenizer, udhr, root):
    """MLM, sequence- and token-classification bundles (each with its identifier), saved to folders."""
    folders = {}
    train = ids_of(udhr, "train", MODEL_LANGUAGES + ["jpn_Jpan", "hin_Deva"])
    for name, cls, extra in (("mlm", MoLForMaskedLM, {}), ("seq", MoLForSequenceClassification, {"num_labels": 3}),
                             ("tok", MoLForTokenClassification, {"num_labels": 4})):
        torch.manual_seed(0)
        model = cls(tiny_config(tokenizer, default_language="eng_Latn", **extra)).eval()
        lid.fit_language_identifier(model, train, lid.special_token_ids(tokenizer))
        model.save_pretrained(root / name, tokenizer=tokenizer)
        folders[name] = str(root / name)
    return folders


@pytest.mark.slow
def test_pipelines_and_sentence_transformers_route_mixed_languages_with_auto_in_a_clean_interpreter(
        tokenizer, udhr, tmp_path):
    folders = bundle_with_heads(tokenizer, udhr, tmp_path)
    codes = ["fra_Latn", "rus_Cyrl", "eng_Latn", "deu_Latn", "rus_Cyrl", "fra_Latn"]
    texts = [udhr["devtest"][code][0][i][:200] for i, code in enumerate(codes)]
    expected = {"folders": folders, "texts": texts, "codes": codes}
    path = tmp_path / "expected.json"
    path.write_text(json.dumps(expected))
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["HF_HOME"] = str(tmp_path / "hf-home")
    done = subprocess.run([sys.executable, "-I", str(CLEAN_CHECK), str(path)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-4000:]
    found = re.search(r'\{"identified".*\}', done.stdout)
    assert found, done.stdout[-3000:]
    report = json.loads(found.group(0))
    assert report["identified"] == codes, report  # every text found, so every output was compared
    assert set(report["checked"]) == {"fill-mask", "feature-extraction", "text-classification",
                                      "token-classification", "sentence-transformers"}


# ---- the command for converted models ----------------------------------------------------------------------------

def run_fit(*arguments):
    env = dict(os.environ, PYTHONPATH=str(PROJECT), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(PROJECT / "train_mlm.py"), "fit-language-id", *arguments],
                          cwd=PROJECT, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_fit_language_id_gives_a_converted_model_an_identifier(tokenizer, tmp_path):
    from transformers import XLMRobertaConfig, XLMRobertaForMaskedLM

    torch.manual_seed(3)
    xlmr = XLMRobertaForMaskedLM(XLMRobertaConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2,
                                                  num_attention_heads=4, intermediate_size=64,
                                                  max_position_embeddings=130))
    mol = MoLForMaskedLM.from_xlm_roberta(xlmr, languages=MODEL_LANGUAGES, language_groups=GROUPS,
                                          group_layers="all").eval()
    mol.save_pretrained(tmp_path / "converted", tokenizer=tokenizer)
    done = run_fit("--model", str(tmp_path / "converted"), "--output-dir", str(tmp_path / "with-lid"),
                   "--fallback", "eng_Latn")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "devtest accuracy" in done.stdout
    scores = json.loads((tmp_path / "with-lid" / "language_identifier.json").read_text())
    assert scores["accuracy"] >= 0.9 and scores["sentences"] == 4 * 6 and scores["fallback"] == "eng_Latn"
    fitted = AutoModelForMaskedLM.from_pretrained(tmp_path / "with-lid", trust_remote_code=True,
                                                  default_language="auto").eval()
    assert sorted(fitted.config.language_identifier_labels) == sorted(MODEL_LANGUAGES)
    assert (tmp_path / "with-lid" / "modules.json").is_file() and (tmp_path / "with-lid" / "tokenizer.json").is_file()
    encoded = tokenizer(["Toute personne a droit à l'éducation.", "Everyone has the right to education."],
                        padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(fitted(**encoded).logits, fitted(**encoded, languages=["fra_Latn", "eng_Latn"]).logits)
    # Bad inputs: named before anything is read or written.
    for arguments, message in [
        (["--output-dir", str(tmp_path / "with-lid")], "is not empty: choose a new folder, or pass --overwrite"),
        (["--output-dir", str(tmp_path / "converted")], "is the model's own folder"),
        (["--output-dir", str(tmp_path / "x"), "--sentences", "0"], "--sentences must be a positive integer"),
        (["--output-dir", str(tmp_path / "x"), "--fallback", "jpn_Jpan"], "--fallback 'jpn_Jpan' is not one of"),
        (["--output-dir", str(tmp_path / "x"), "--languages", "eng_Latn,xxx_Latn"], "Unknown language code 'xxx_Latn'"),
    ]:
        done = run_fit("--model", str(tmp_path / "converted"), *arguments)
        assert done.returncode == 2 and message in done.stderr, done.stderr[-2000:]
    assert not (tmp_path / "x").exists()


def test_texts_with_no_real_token_go_to_the_fallback_or_are_an_error_naming_them(auto_model, tokenizer):
    encoded = tokenizer(["", "Bonjour à tous, le monde entier", "\U0001F600"], padding=True, return_tensors="pt")
    found = auto_model.identify_languages(encoded["input_ids"], encoded["attention_mask"])
    real = (encoded["attention_mask"].bool() & ~torch.isin(
        encoded["input_ids"], torch.tensor(auto_model.config.language_identifier_ignored_ids))).sum(-1)
    for index in (0, 2):
        if real[index] == 0:  # the emoji may be one <unk> token, which is a special token too
            assert bool(found.fell_back[index]) and float(found.confidences[index]) == 0.0
            assert found.routed_codes[index] == "eng_Latn"  # the default language
    assert real[0] == 0
    auto_model.set_default_language("eng_Latn", fallback="error")
    try:
        with pytest.raises(ValueError, match=r"text 0 has no real token"):
            auto_model.identify_languages(encoded["input_ids"], encoded["attention_mask"])
    finally:
        auto_model.set_default_language("eng_Latn", fallback=None)
