"""Run in a clean interpreter (`python -I`, another working directory, the project not importable): MoL bundles
with a language identifier serve mixed-language texts with no language given, through transformers' pipelines
(fill-mask, feature-extraction, text-classification, token-classification, each loaded with
`default_language="auto"`) and sentence-transformers; every text's output equals the same text routed by its true
language, wherever the identifier found that language. Prints a JSON report. Usage: python -I clean_auto_check.py
EXPECTED.json
"""

import importlib.util
import json
import sys

import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from transformers import AutoModel, AutoTokenizer, pipeline


def pipe(task, folder, language):
    return pipeline(task, model=folder, tokenizer=folder, device="cpu", trust_remote_code=True,
                    model_kwargs={"default_language": language})


def close(a, b):
    np.testing.assert_allclose(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64), atol=1e-5)


def main(expected_path):
    for module in ("modeling_mol", "configuration_mol", "mol_toolkit"):
        assert importlib.util.find_spec(module) is None, f"{module} is importable: the environment is not clean"
    expected = json.loads(open(expected_path).read())
    folders, texts, codes = expected["folders"], expected["texts"], expected["codes"]
    tokenizer = AutoTokenizer.from_pretrained(folders["mlm"])
    # What the identifier finds, for inspection: the model's own method.
    base = AutoModel.from_pretrained(folders["mlm"], trust_remote_code=True).eval()
    encoded = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    identified = base.identify_languages(encoded["input_ids"], encoded["attention_mask"]).codes
    right = [i for i, (found, code) in enumerate(zip(identified, codes)) if found == code]
    checked = []

    masked = [text.replace(text.split()[1], tokenizer.mask_token, 1) for text in texts]
    auto = pipe("fill-mask", folders["mlm"], "auto")(masked, top_k=3)
    for i in right:
        alone = pipe("fill-mask", folders["mlm"], codes[i])(masked[i], top_k=3)
        assert [p["token"] for p in auto[i]] == [p["token"] for p in alone], (i, auto[i], alone)
        close([p["score"] for p in auto[i]], [p["score"] for p in alone])
    checked.append("fill-mask")

    features = pipe("feature-extraction", folders["mlm"], "auto")(texts)
    for i in right:
        close(features[i], pipe("feature-extraction", folders["mlm"], codes[i])(texts[i]))
    checked.append("feature-extraction")

    scores = pipe("text-classification", folders["seq"], "auto")(texts, top_k=None)
    for i in right:
        alone = pipe("text-classification", folders["seq"], codes[i])(texts[i], top_k=None)
        assert [s["label"] for s in scores[i]] == [s["label"] for s in alone]
        close([s["score"] for s in scores[i]], [s["score"] for s in alone])
    checked.append("text-classification")

    tags = pipe("token-classification", folders["tok"], "auto")(texts)
    for i in right:
        alone = pipe("token-classification", folders["tok"], codes[i])(texts[i])
        assert [(t["word"], t["entity"]) for t in tags[i]] == [(t["word"], t["entity"]) for t in alone]
        close([t["score"] for t in tags[i]], [t["score"] for t in alone])
    checked.append("token-classification")

    # sentence-transformers: the model's default "auto" (config_kwargs: ST passes the config it loaded), and
    # languages="auto" per call.
    model = SentenceTransformer(folders["mlm"], trust_remote_code=True, device="cpu",
                                config_kwargs={"default_language": "auto"})
    by_default = model.encode(texts, batch_size=4)
    per_call = SentenceTransformer(folders["mlm"], trust_remote_code=True, device="cpu").encode(
        texts, batch_size=4, languages="auto")
    truth = model.encode([{"text": text, "language": code} for text, code in zip(texts, codes)], batch_size=4)
    close(by_default[right], truth[right])
    close(per_call[right], truth[right])
    inspected = model.encode(texts, batch_size=4, output_value=None)
    routed = [base.config.languages[int(item["lang_ids"])] for item in inspected]
    assert [routed[i] for i in right] == [codes[i] for i in right], routed
    checked.append("sentence-transformers")
    print(json.dumps({"identified": identified, "checked": checked}))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1])
