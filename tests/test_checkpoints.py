"""Hub-native checkpoints: flat remote-code bundles that load through the Auto classes where the project is not
importable, from a folder and from the loopback Hub."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_config_kwargs
from safetensors import safe_open
from transformers import AutoTokenizer, pipeline
from transformers.dynamic_module_utils import get_imports, get_relative_imports

from configuration_mol import MoLConfig
from modeling_mol import (
    MoLForMaskedLM,
    MoLForMultipleChoice,
    MoLForQuestionAnswering,
    MoLForSequenceClassification,
    MoLForTokenClassification,
)


CLEAN_CHECK = Path(__file__).parent / "clean_load_check.py"
FILL_TEXT = "All human beings are born <mask> and equal."
REMOTE_CODE = {"configuration_mol.py", "modeling_mol.py", "mol_attention.py", "mol_grouped_gemm.py"}


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer_dir):
    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


# Every head besides the MLM: (its class, the Auto class it loads through, the output compared, multiple-choice inputs).
HEADS = [
    (MoLForSequenceClassification, "AutoModelForSequenceClassification", "logits", False),
    (MoLForTokenClassification, "AutoModelForTokenClassification", "logits", False),
    (MoLForQuestionAnswering, "AutoModelForQuestionAnswering", "start_logits", False),
    (MoLForMultipleChoice, "AutoModelForMultipleChoice", "logits", True),
]


@pytest.fixture(scope="module")
def models(tokenizer):
    config = MoLConfig(**tiny_config_kwargs(vocab_size=len(tokenizer), group_layers=[1], num_labels=3))
    torch.manual_seed(0)
    mlm = MoLForMaskedLM(config).eval()
    heads = []
    for seed, (head_class, *_) in enumerate(HEADS, start=1):
        torch.manual_seed(seed)
        head_config = MoLConfig(**{**config.to_dict(), "num_labels": 2}) if head_class is MoLForQuestionAnswering else config
        heads.append(head_class(head_config).eval())
    return mlm, heads


def save_heads(heads, root, push=False):
    """Each head in its own folder (or Hub repo); returns their sources."""
    sources = []
    for model, (head_class, *_) in zip(heads, HEADS):
        name = f"tiny-{head_class.__name__.lower()}"
        if push:
            model.push_to_hub(f"mol-org/{name}")
            sources.append(f"mol-org/{name}")
        else:
            model.save_pretrained(root / name)
            sources.append(root / name)
    return sources


def expected_outputs(mlm, heads, tokenizer, source, head_sources):
    """Inputs and the outputs the project computes, for the clean interpreter to compare against."""
    encoded = tokenizer(["All human beings are born free.", "Alle Menschen sind frei.", "Tous les êtres humains."],
                        padding=True, return_tensors="pt")
    inputs = dict(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"],
                  languages=["eng_Latn", "deu_Latn", "fra_Latn"])
    choice_inputs = dict(input_ids=encoded["input_ids"][None], attention_mask=encoded["attention_mask"][None],
                         languages=["deu_Latn"])
    head_outputs = []
    for model, head_source, (head_class, auto_class, output, multiple_choice) in zip(heads, head_sources, HEADS):
        head_inputs = choice_inputs if multiple_choice else inputs
        with torch.no_grad():
            value = getattr(model(**head_inputs), output)
        head_outputs.append(dict(source=str(head_source), auto_class=auto_class, class_name=head_class.__name__,
                                 inputs=head_inputs, output=output, expected=value))
    mlm.set_default_language("fra_Latn")
    fill = pipeline("fill-mask", model=mlm, tokenizer=tokenizer, device="cpu")
    fill_tokens = [p["token"] for p in fill(FILL_TEXT.replace("<mask>", tokenizer.mask_token))]
    mlm.set_default_language(None)
    with torch.no_grad():
        return dict(
            source=str(source), inputs=inputs, heads=head_outputs,
            language_groups=mlm.config.language_groups,
            logits=mlm(**inputs).logits, hidden=mlm.mol(**inputs).last_hidden_state,
            fill_language="fra_Latn", fill_text=FILL_TEXT, fill_tokens=fill_tokens,
        )


def run_clean(expected, tmp_path, env=None):
    path = tmp_path / "expected.pt"
    torch.save(expected, path)
    clean_env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    clean_env.update(HF_HOME=str(tmp_path / "fresh-hf-home"), **(env or {}))
    result = subprocess.run(
        [sys.executable, "-I", str(CLEAN_CHECK), str(path)],
        cwd=tmp_path, env=clean_env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    return result.stdout


def test_save_pretrained_writes_a_flat_remote_code_bundle(models, tokenizer, tmp_path):
    mlm, _ = models
    mlm.save_pretrained(tmp_path, tokenizer=tokenizer)
    files = set(os.listdir(tmp_path))
    assert REMOTE_CODE | {"config.json", "model.safetensors", "tokenizer_config.json", "tokenizer.json"} <= files
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_mol.MoLConfig",
        "AutoModel": "modeling_mol.MoLModel",
        "AutoModelForMaskedLM": "modeling_mol.MoLForMaskedLM",
        "AutoModelForSequenceClassification": "modeling_mol.MoLForSequenceClassification",
        "AutoModelForTokenClassification": "modeling_mol.MoLForTokenClassification",
        "AutoModelForQuestionAnswering": "modeling_mol.MoLForQuestionAnswering",
        "AutoModelForMultipleChoice": "modeling_mol.MoLForMultipleChoice",
    }
    assert config["model_type"] == "mol" and config["group_layers"] == [1]
    with safe_open(tmp_path / "model.safetensors", "pt") as weights:
        keys = set(weights.keys())
        assert weights.get_tensor("mol.encoder.layer.1.attention.query.weight").shape == (3, 32, 32)
    assert "lm_head.decoder.weight" not in keys and "lm_head.bias" in keys
    # Flat: the files need no module of this project, and every sibling they import is in the bundle.
    for name in REMOTE_CODE:
        assert not {"configuration_mol", "modeling_mol"} & set(get_imports(tmp_path / name)), name
        assert all((tmp_path / f"{sibling}.py").is_file() for sibling in get_relative_imports(tmp_path / name)), name


@pytest.mark.slow
def test_checkpoint_loads_in_a_clean_environment_from_a_folder(models, tokenizer, tmp_path):
    mlm, heads = models
    mlm.save_pretrained(tmp_path / "mlm", tokenizer=tokenizer)
    expected = expected_outputs(mlm, heads, tokenizer, tmp_path / "mlm", save_heads(heads, tmp_path))
    assert "clean load OK" in run_clean(expected, tmp_path)


@pytest.mark.slow
def test_checkpoint_loads_in_a_clean_environment_from_the_hub(models, tokenizer, tmp_path, hub):
    mlm, heads = models
    mlm.push_to_hub("mol-org/tiny-mol", tokenizer=tokenizer)
    files = set(hub.state.repos[("model", "mol-org/tiny-mol")].resolve("main").files)
    assert REMOTE_CODE | {"config.json", "model.safetensors", "tokenizer.json"} <= files
    expected = expected_outputs(mlm, heads, tokenizer, "mol-org/tiny-mol", save_heads(heads, tmp_path, push=True))
    out = run_clean(expected, tmp_path, env={"HF_ENDPOINT": hub.endpoint})
    assert "clean load OK from mol-org/tiny-mol" in out
    assert any(method == "GET" and path.startswith("/mol-org/tiny-mol/resolve/") and path.endswith("/model.safetensors")
               for method, path in hub.state.requests), "the weights did not come over HTTP"
    # The card pushed with the bundle is MoL's (transformers keeps a card it finds and adds its tags).
    from huggingface_hub import ModelCard

    card = ModelCard.load("mol-org/tiny-mol")
    assert card.data.pipeline_tag == "fill-mask" and card.data.library_name == "transformers"
    assert card.data.license == "apache-2.0" and "custom_code" in card.data.tags
    assert card.data.language == sorted(code.split("_")[0] for code in mlm.config.languages)
    assert "germanic" in card.text


def test_reloaded_model_gives_identical_outputs(models, tmp_path):
    mlm, _ = models
    mlm.save_pretrained(tmp_path)
    reloaded = MoLForMaskedLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(5, 50, (2, 7))
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids, languages=["rus_Cyrl", "eng_Latn"]).logits,
                           mlm(input_ids=ids, languages=["rus_Cyrl", "eng_Latn"]).logits)
