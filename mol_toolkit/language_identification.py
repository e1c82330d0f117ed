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
    for start in range(0, len(sequences), batch_size):
        chunk = [list(ids) for ids in sequences[start:start + batch_size]]
        width = max(1, max(len(ids) for ids in chunk))
        input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, ids in enumerate(chunk):
            input_ids[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[row, :len(ids)] = 1
        yield input_ids, mask


@torch.no_grad()
def sentence_features(model, sequences, ignored_ids):
    """(sentences, hidden) float64: the identifier's features of token-id lists."""
    from modeling_mol.modeling_mol import mean_input_embeddings

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


def sample_sentences(sequences, count, seed):
    """`count` of a language's sentences (all when fewer), drawn without replacement with `seed`: the same sample
    for the same data whatever process asks."""
    indices = list(range(len(sequences)))
    if len(indices) > count:
        indices = sorted(random.Random(seed).sample(indices, count))
    return [list(sequences[i]) for i in indices]


def special_token_ids(tokenizer):
    return sorted(set(tokenizer.all_special_ids))
