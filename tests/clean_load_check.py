"""Run in a clean interpreter (`python -I`, another working directory, the project not importable): load a MoL
checkpoint through the Auto classes with trust_remote_code from a folder or a Hub repo id, and compare its outputs
with those the project computed before export. Usage: python -I clean_load_check.py EXPECTED.pt
"""

import importlib.util
import sys

import torch
import transformers
from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, AutoTokenizer, pipeline


def main(expected_path):
    for module in ("modeling_mol", "configuration_mol"):
        assert importlib.util.find_spec(module) is None, f"{module} is importable: the environment is not clean"
    expected = torch.load(expected_path)
    source, inputs = expected["source"], expected["inputs"]

    config = AutoConfig.from_pretrained(source, trust_remote_code=True)
    assert type(config).__name__ == "MoLConfig", type(config)
    assert config.language_groups == expected["language_groups"], config.language_groups

    mlm = AutoModelForMaskedLM.from_pretrained(source, trust_remote_code=True).eval()
    assert type(mlm).__name__ == "MoLForMaskedLM" and type(mlm).__module__.startswith("transformers_modules"), type(mlm)
    assert mlm.lm_head.decoder.weight is mlm.mol.embeddings.word_embeddings.weight, "decoder not tied after loading"
    with torch.no_grad():
        logits = mlm(**inputs).logits
    assert torch.equal(logits, expected["logits"]), (logits - expected["logits"]).abs().max()

    base = AutoModel.from_pretrained(source, trust_remote_code=True).eval()
    assert type(base).__name__ == "MoLModel", type(base)
    with torch.no_grad():
        hidden = base(**inputs).last_hidden_state
    assert torch.equal(hidden, expected["hidden"]), (hidden - expected["hidden"]).abs().max()

    # Every head: its Auto class, the class it must load as, its inputs and the output it must reproduce exactly.
    for head in expected["heads"]:
        auto_class = getattr(transformers, head["auto_class"])
        model = auto_class.from_pretrained(head["source"], trust_remote_code=True).eval()
        assert type(model).__name__ == head["class_name"], (type(model), head["class_name"])
        with torch.no_grad():
            output = getattr(model(**head["inputs"]), head["output"])
        # Not bitwise: a head's small matmuls may take another kernel in a fresh process (seen: 9e-10 apart).
        difference = (output - head["expected"]).abs().max()
        assert output.shape == head["expected"].shape and difference <= 1e-6, (head["class_name"], difference)

    tokenizer = AutoTokenizer.from_pretrained(source)
    mlm.set_default_language(expected["fill_language"])
    fill = pipeline("fill-mask", model=mlm, tokenizer=tokenizer, device="cpu")
    predictions = fill(expected["fill_text"].replace("<mask>", tokenizer.mask_token))
    token_ids = [p["token"] for p in predictions]
    assert token_ids == expected["fill_tokens"], (token_ids, expected["fill_tokens"])
    print(f"clean load OK from {source}: {len(predictions)} fill-mask predictions")


if __name__ == "__main__":
    main(sys.argv[1])
