"""The language identifier a MoL checkpoint carries, so that `languages="auto"` routes text of unknown language.

The identifier (`config.language_identifier = "input-embedding-linear"`) is a multinomial logistic regression over
the mean of a text's input (word) embeddings, special tokens left out (`modeling_mol.mean_input_embeddings`, the
same features at fitting and at prediction). It is fitted with scikit-learn on standardised features; the scaling
is folded into the weights, so the checkpoint holds one (labels, hidden) matrix and a bias, and predicting needs
torch only. `train_mlm.py` fits it at export on a sample of the sentences it already tokenized (no extra pass over
the data); `train_mlm.py fit-language-id` fits it for any MoL bundle, a converted XLM-R included.
"""

import random

import numpy as np
import torch


DEFAULT_SENTENCES = 200  # training sentences per language the identifier is fitted on
BATCH_SIZE = 256


def padded_batches(sequences, pad_id, batch_size=BATCH_SIZE):
    """(input_ids, attention_mask) batches of token-id lists, in order."""
    from mol_toolkit.training.mlm_data import pad_batch

    for start in range(0, len(sequences), batch_size):
        yield pad_batch([list(ids) for ids in sequences[start:start + batch_size]], pad_id)


@torch.no_grad()
def sentence_features(model, sequences, ignored_ids):
    """(sentences, hidden) float64: the identifier's features of token-id lists."""
    from modeling_mol.mol_routing import mean_input_embeddings

    embeddings = model.get_input_embeddings()
    device = embeddings.weight.device
    ignored = torch.tensor(sorted(ignored_ids), dtype=torch.long, device=device)
    parts = [mean_input_embeddings(embeddings, ids.to(device), mask.to(device), ignored).cpu().double()
             for ids, mask in padded_batches(sequences, model.config.pad_token_id)]
    return torch.cat(parts).numpy() if parts else np.zeros((0, model.config.hidden_size))


def fit_language_identifier(model, train, ignored_ids, threshold=0.5, fitted_on=None, regularisation=1.0):
    """Fit the identifier on `train` (code -> token-id lists) and install it in `model`; returns its labels."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    empty = sorted(code for code, sequences in train.items() if not sequences)
    if len(train) < 2 or empty:
        raise ValueError(f"The language identifier needs sentences of at least 2 languages; got {sorted(train)}"
                         + (f", none for {empty}" if empty else "") + ".")
    labels = list(train)
    features = np.concatenate([sentence_features(model, train[code], ignored_ids) for code in labels])
    targets = np.concatenate([np.full(len(train[code]), index) for index, code in enumerate(labels)])
    scaler = StandardScaler().fit(features)
    classifier = LogisticRegression(C=regularisation, max_iter=3000).fit(scaler.transform(features), targets)
    coef, intercept = classifier.coef_, classifier.intercept_
    if coef.shape[0] == 1:  # two classes: scikit-learn keeps one logit z; softmax([-z/2, z/2]) = sigmoid(z)
        coef, intercept = np.concatenate([-coef / 2, coef / 2]), np.concatenate([-intercept / 2, intercept / 2])
    scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
    weight = coef / scale
    bias = intercept - (coef * scaler.mean_ / scale).sum(1)
    ordered = [labels[int(c)] for c in classifier.classes_]
    model.add_language_identifier(ordered, weight, bias, ignored_ids, threshold, fitted_on)
    return ordered


def score_language_identifier(model, devtest):
    """Accuracy of the installed identifier's predictions on `devtest` (code -> token-id lists): overall and per
    language, with the confusions (true -> predicted -> count)."""
    correct, total, per_language, confusions = 0, 0, {}, {}
    for code, sequences in devtest.items():
        hits = 0
        for input_ids, mask in padded_batches(sequences, model.config.pad_token_id):
            device = model.get_input_embeddings().weight.device
            found = identify(model, input_ids.to(device), mask.to(device))
            for predicted in found:
                hits += predicted == code
                if predicted != code:
                    confusions.setdefault(code, {}).setdefault(predicted, 0)
                    confusions[code][predicted] += 1
        per_language[code] = hits / len(sequences) if sequences else None
        correct, total = correct + hits, total + len(sequences)
    return {"accuracy": correct / total if total else None, "sentences": total, "per_language": per_language,
            "confusions": confusions}


def identify(model, input_ids, attention_mask):
    """The identifier's raw predictions (codes), whatever the fallback: scoring must not raise on unknown texts."""
    saved = model.config.language_identifier_fallback
    model.config.language_identifier_fallback = model.config.languages[0] if model.config.languages else None
    try:
        return model.identify_languages(input_ids, attention_mask).codes
    finally:
        model.config.language_identifier_fallback = saved


def sample_indices(size, count, seed):
    """`count` of `size` sentence indices (all when fewer), drawn without replacement with `seed`, sorted: the same
    sample for the same data whatever process asks."""
    if size <= count:
        return list(range(size))
    return sorted(random.Random(seed).sample(range(size), count))


def special_token_ids(tokenizer):
    return sorted(set(tokenizer.all_special_ids))


# ---- `train_mlm.py fit-language-id`: an identifier for any MoL bundle (a converted XLM-R included) ---------------

HEAD_CLASSES = {  # architecture -> the transformers auto class that loads it with its head
    "MoLModel": "AutoModel", "MoLForMaskedLM": "AutoModelForMaskedLM",
    "MoLForSequenceClassification": "AutoModelForSequenceClassification",
    "MoLForTokenClassification": "AutoModelForTokenClassification",
    "MoLForQuestionAnswering": "AutoModelForQuestionAnswering", "MoLForMultipleChoice": "AutoModelForMultipleChoice",
}


def parse_text_source(given, flag):
    """A path, or a YAML mapping as train_mlm.py's data sources."""
    import yaml

    try:
        return yaml.safe_load(given)
    except yaml.YAMLError as error:
        raise ValueError(f"{flag} {given!r} is not a path or a YAML mapping: {error}") from None


def check_fit_options(sentences, threshold, fallback):
    if isinstance(sentences, bool) or not isinstance(sentences, int) or sentences < 1:
        raise ValueError(f"--sentences must be a positive integer (sentences per language), got {sentences!r}.")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
        raise ValueError(f"--threshold must be a probability in [0, 1], got {threshold!r}.")
    if fallback is not None and not isinstance(fallback, str):
        raise ValueError(f"--fallback must be a language code or 'error', got {fallback!r}.")


def local_bundle(source):
    """A local folder holding the bundle `source` (a folder, or a Hub repo id downloaded once)."""
    from pathlib import Path

    if Path(source).expanduser().is_dir():
        return Path(source).expanduser()
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source))
    except Exception as error:  # not a folder, and the Hub has no such repo (or cannot be reached)
        raise ValueError(f"--model {source!r} is neither a folder nor a Hub model repo that can be downloaded "
                         f"({type(error).__name__}: {error}).") from None


def fit_bundle(source, output_dir, train_spec, devtest_spec, languages=None, sentences=DEFAULT_SENTENCES,
               threshold=0.5, fallback=None, overwrite=False):
    """Fit and install the identifier of the bundle `source`, write the bundle with it to `output_dir`, and return
    its scores (devtest accuracy overall and per language). Every input is checked before anything is read."""
    import json
    import shutil
    from pathlib import Path

    import transformers

    from mol_toolkit.text_sources import read_probe_texts
    from mol_toolkit.languages import resolve_languages
    from mol_toolkit.training.metrics import atomic_write_text

    check_fit_options(sentences, threshold, fallback)
    output_dir = Path(output_dir).expanduser()
    folder = local_bundle(source)
    if output_dir.resolve() == folder.resolve():
        raise ValueError(f"--output-dir {str(output_dir)!r} is the model's own folder: write the bundle with its "
                         "identifier to a new folder.")
    if output_dir.exists() and any(output_dir.iterdir()) and not overwrite:
        raise ValueError(f"--output-dir {str(output_dir)!r} is not empty: choose a new folder, or pass --overwrite.")
    config = transformers.AutoConfig.from_pretrained(folder, trust_remote_code=True)
    if getattr(config, "model_type", None) != "mol":
        raise ValueError(f"--model {source!r} is a {getattr(config, 'model_type', None)!r} model, not a MoL bundle.")
    codes = resolve_languages(languages) if languages else list(config.languages)
    if fallback not in (None, "error") and fallback not in config.languages:
        raise ValueError(f"--fallback {fallback!r} is not one of the model's languages {config.languages} (or 'error').")
    architecture = (config.architectures or ["MoLModel"])[0]
    auto_class = getattr(transformers, HEAD_CLASSES.get(architecture, "AutoModel"))
    train_texts = read_probe_texts(train_spec, codes, "train_data", sentences)
    devtest_texts = read_probe_texts(devtest_spec, codes, "devtest_data")

    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    model = auto_class.from_pretrained(folder, trust_remote_code=True).eval()
    limit = min(512, config.max_position_embeddings - config.pad_token_id - 1)

    def tokenized(texts):
        return {code: tokenizer(list(items), truncation=True, max_length=limit)["input_ids"]
                for code, items in texts.items()}

    described = train_spec if isinstance(train_spec, str) else json.dumps(train_spec)
    fitted_on = f"`{described}` ({sentences} sentences per language at most)"
    fit_language_identifier(model, tokenized(train_texts), special_token_ids(tokenizer), threshold, fitted_on)
    model.config.language_identifier_fallback = fallback
    scores = score_language_identifier(model, tokenized(devtest_texts))

    if output_dir.exists():
        shutil.rmtree(output_dir)
    shutil.copytree(folder, output_dir, ignore=shutil.ignore_patterns("*.safetensors", "*.bin", ".git*", "__pycache__"))
    model.save_pretrained(output_dir)
    result = {"source": str(source), "languages": codes, "fitted_on": fitted_on, "threshold": threshold,
              "fallback": fallback, **scores}
    atomic_write_text(output_dir / "language_identifier.json", json.dumps(result, indent=2))
    return result
