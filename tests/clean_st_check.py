"""Run in a clean interpreter (`python -I`, another working directory, the project not importable): load a MoL
bundle with `SentenceTransformer(source, trust_remote_code=True)` from a folder or a Hub repo id, and compare its
embeddings with those the project computed. Usage: python -I clean_st_check.py EXPECTED.pt
"""

import importlib.util
import sys

import numpy as np
import torch
from sentence_transformers import SentenceTransformer


def main(expected_path):
    for module in ("modeling_mol", "configuration_mol", "mol_toolkit"):
        assert importlib.util.find_spec(module) is None, f"{module} is importable: the environment is not clean"
    expected = torch.load(expected_path, weights_only=False)
    source, texts, codes = expected["source"], expected["texts"], expected["codes"]
    model = SentenceTransformer(source, trust_remote_code=True, device="cpu")
    assert type(model[0]).__name__ == "MoLSentenceTransformer", type(model[0])
    assert model.max_seq_length == 62, model.max_seq_length
    inputs = [{"text": text, "language": code} for text, code in zip(texts, codes)]
    # Mixed languages and lengths, in batches of 4 that sentence-transformers sorts by length: each text keeps its
    # language, so the result equals the project's encoder and each text encoded alone.
    batched = model.encode(inputs, batch_size=4)
    np.testing.assert_allclose(batched, expected["embeddings"], atol=1e-5)
    alone = np.stack([model.encode([item])[0] for item in inputs])
    np.testing.assert_allclose(batched, alone, atol=1e-5)
    np.testing.assert_allclose(model.encode(texts[:3], languages="fra_Latn"), expected["french"], atol=1e-5)
    try:
        model.encode(texts, languages=codes)
    except ValueError as error:
        assert "cannot stay aligned" in str(error), error
    else:
        raise AssertionError("a per-text languages list was accepted")
    print(f"sentence-transformers OK from {source}: {len(texts)} texts")


if __name__ == "__main__":
    main(sys.argv[1])
