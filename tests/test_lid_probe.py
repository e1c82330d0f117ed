"""evaluate_mol.py lid-probe (Mixture of Languages, Section 3.5, Figure 3): per-layer LID accuracy from one forward
pass, the threshold's blocks and layout, the YAML snippet train_mlm.py trains, the layout notations, bad inputs."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import LANGUAGE_GROUPS, PROJECT, tiny_config_kwargs

from configuration_mol import MoLConfig
from configuration_mol.configuration_mol import resolve_group_layers
from modeling_mol import MoLForMaskedLM
from mol_toolkit.evaluation import lid_probe
from mol_toolkit.text_sources import read_probe_texts, udhr_sources


PROBE = [sys.executable, str(PROJECT / "evaluate_mol.py"), "lid-probe"]
FOUR = "eng_Latn,fra_Latn,rus_Cyrl,arb_Arab"


def env():
    values = dict(os.environ, PYTHONPATH=str(PROJECT), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    values.pop("ACCELERATE_USE_CPU", None)
    return values


def run(command, timeout=300):
    return subprocess.run(command, env=env(), capture_output=True, text=True, cwd=PROJECT, timeout=timeout)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, tiny_tokenizer_dir):
    """A dense and a grouped tiny MoL (3 blocks), saved as bundles with the tiny UDHR tokenizer."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    root = tmp_path_factory.mktemp("probe-models")
    paths = {}
    for name, layers in (("dense", "dense"), ("grouped", [0])):
        torch.manual_seed(0)
        config = MoLConfig(**tiny_config_kwargs(vocab_size=len(tokenizer), num_hidden_layers=3, group_layers=layers,
                                                language_groups=LANGUAGE_GROUPS if layers != "dense" else None))
        MoLForMaskedLM(config).save_pretrained(root / name, tokenizer=tokenizer)
        paths[name] = root / name
    return paths


def test_per_layer_accuracy_equals_a_direct_fit_on_independently_computed_hidden_states(bundles):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from transformers import AutoModel, AutoTokenizer

    from mol_toolkit.evaluation.encoder import SentenceEncoder

    codes = FOUR.split(",")
    splits = {split: read_probe_texts(udhr_sources(split), codes, split)
              for split in ("train", "devtest")}
    encoder = SentenceEncoder(str(bundles["dense"]), show_progress_bar=False, batch_size=7)
    accuracy, seconds = lid_probe.run_probe(encoder, codes, splits["train"], splits["devtest"])
    assert len(accuracy) == 4 and seconds["sentences"] == sum(len(t) for s in splits.values() for t in s.values())

    # Independently: transformers' AutoModel, one sentence at a time, mean over real tokens, sklearn directly.
    tokenizer = AutoTokenizer.from_pretrained(bundles["dense"])
    model = AutoModel.from_pretrained(bundles["dense"], trust_remote_code=True).eval()

    def features(texts):
        rows = []
        for text in texts:
            ids = tokenizer(text, truncation=True, max_length=62, return_tensors="pt")
            with torch.no_grad():
                hidden = model(**ids, output_hidden_states=True).hidden_states
            rows.append([h[0].mean(0).numpy() for h in hidden])
        return np.stack(rows, axis=1)  # (layer outputs, sentences, hidden)

    data = {split: (features([t for c in codes for t in texts[c]]), [c for c in codes for _ in texts[c]])
            for split, texts in splits.items()}
    for layer in range(4):
        classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        classifier.fit(data["train"][0][layer], data["train"][1])
        expected = classifier.score(data["devtest"][0][layer], data["devtest"][1])
        assert accuracy[layer] == pytest.approx(expected, abs=1e-9), layer


@pytest.mark.parametrize("accuracy, threshold, group_layers, layout", [
    # U-shaped over 6 blocks: high at both ends, low in the middle (the paper's shape).
    ([0.99, 0.98, 0.95, 0.80, 0.70, 0.93, 0.97], 0.923, [0, 1, 4, 5], "lid:2-2-2"),
    # monotone decreasing: only a prefix
    ([0.99, 0.97, 0.93, 0.90, 0.85], 0.923, [0, 1], "lid:2-2-0"),
    # monotone increasing: only a suffix
    ([0.50, 0.60, 0.70, 0.93, 0.95], 0.923, [2, 3], "lid:0-2-2"),
    # non-contiguous: not one prefix and one suffix
    ([0.99, 0.95, 0.50, 0.96, 0.50, 0.97], 0.923, [0, 2, 4], None),
    # nothing reaches the threshold
    ([0.99, 0.50, 0.60], 0.923, [], None),
    # at the threshold counts
    ([0.90, 0.923, 0.90], 0.923, [0], "lid:1-1-0"),
    # the paper's 24 blocks: 6-9-9
    ([0.99] * 7 + [0.90] * 9 + [0.95] * 9, 0.923, list(range(6)) + list(range(15, 24)), "lid:6-9-9"),
])
def test_threshold_to_blocks_and_layout(accuracy, threshold, group_layers, layout):
    assert lid_probe.choose_group_layers(accuracy, threshold) == (group_layers, layout)
    if layout is not None:
        assert resolve_group_layers(layout, len(accuracy) - 1) == group_layers


def test_layout_notations_parse_to_the_same_blocks_and_an_ambiguous_one_is_refused():
    expected = list(range(6)) + list(range(15, 24))
    for form in ("lid:6-9-9", "lid-6-9-9", "lid", "first=6,shared=9,last=9", "lid:first=6, shared=9, last=9",
                 "shared=9,last=9,first=6"):
        assert resolve_group_layers(form, 24) == expected, form
    for ambiguous in ("6-9-9", "9-9-6", "6,9,9"):
        with pytest.raises(ValueError, match="could be read from the input side or"):
            resolve_group_layers(ambiguous, 24)
    with pytest.raises(ValueError, match="lacks \\['last'\\]"):
        resolve_group_layers("first=6,shared=9", 24)


@pytest.mark.slow
def test_the_cli_writes_the_outputs_and_the_snippet_trains_that_layout(bundles, tmp_path):
    out = tmp_path / "probe"
    result = run(PROBE + ["--model", str(bundles["dense"]), "--languages", FOUR, "--output-dir", str(out),
                          "--threshold", "0.6", "--base-config", str(PROJECT / "configs" / "tiny_udhr.yaml"),
                          "--no-progress"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "One forward pass per sentence for all 4 layer outputs" in result.stdout
    report = json.loads((out / "lid_probe.json").read_text())
    assert report["languages"] == FOUR.split(",") and len(report["accuracy"]) == 4 and report["threshold"] == 0.6
    assert report["group_layers"] == [b for b in range(3) if report["accuracy"][b + 1] >= 0.6]
    assert (out / "lid_probe.png").stat().st_size > 1000
    snippet = (out / "lid_probe.yaml").read_text()
    assert "num_hidden_layers: 3" in snippet
    refused = run(PROBE + ["--model", str(bundles["dense"]), "--languages", FOUR, "--output-dir", str(out)])
    assert refused.returncode == 2 and "already holds a probe" in refused.stderr

    # The snippet is a train_mlm.py config: the model it trains has exactly those group blocks.
    train = subprocess.run([sys.executable, str(PROJECT / "train_mlm.py"), "--config", str(out / "lid_probe.yaml"),
                            "--output-dir", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache"),
                            "--max-steps", "2", "--checkpoint-every", "0", "--eval-every", "0", "--trackers", "[]",
                            "--export", "true"], env=env(), capture_output=True, text=True, cwd=PROJECT, timeout=300)
    assert train.returncode == 0, train.stderr[-3000:]
    exported = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert exported["num_hidden_layers"] == 3
    assert exported["group_layers"] == report["group_layers"]


@pytest.mark.parametrize("arguments, message", [
    (["--threshold", "0"], r"--threshold must be a number in \(0, 1\]"),
    (["--threshold", "1.5"], r"--threshold must be a number in \(0, 1\]"),
    (["--languages", "eng_Latn"], r"needs at least two languages"),
    (["--languages", "eng_Latn,ory_Orya"], r"No train data for ory_Orya"),
])
def test_bad_probe_inputs_are_errors(bundles, tmp_path, arguments, message):
    import re

    arguments = ["--languages", FOUR] + arguments if "--languages" not in arguments else arguments
    result = run(PROBE + ["--model", str(bundles["dense"]), "--output-dir", str(tmp_path / "out"), *arguments])
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert re.search(message, result.stderr), result.stderr[-2000:]
    assert not (tmp_path / "out" / "lid_probe.json").exists()


@pytest.mark.slow
def test_a_model_with_group_blocks_is_probed_with_a_warning(bundles, tmp_path):
    result = run(PROBE + ["--model", str(bundles["grouped"]), "--languages", "eng_Latn,fra_Latn,rus_Cyrl",
                          "--output-dir", str(tmp_path / "out"), "--no-progress"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "warning:" in result.stderr and "the paper probes the dense baseline" in result.stderr
    assert len(json.loads((tmp_path / "out" / "lid_probe.json").read_text())["accuracy"]) == 4


@pytest.mark.slow
def test_the_paper_preset_is_section_3_5s_study_and_every_choice_is_labelled(bundles, tmp_path):
    from mol_toolkit.evaluation.lid_probe import PRESETS
    from mol_toolkit.languages import PAPER_GROUPS_30, resolve_languages

    paper = PRESETS["paper"]
    assert sorted(resolve_languages(paper["languages"])) == sorted(c for g in PAPER_GROUPS_30.values() for c in g)
    assert paper["choices"]["classifier"].startswith("the project's choice")
    assert paper["choices"]["train_data"].startswith("the project's choice")
    assert "dense baseline" in paper["choices"]["model"] and paper["choices"]["threshold"].startswith("the paper's")
    result = run(PROBE + ["--model", str(bundles["dense"]), "--languages", FOUR, "--output-dir", str(tmp_path / "out"),
                          "--no-progress"])
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "lid_probe.json").read_text())
    assert report["preset"] == "udhr" and report["choices"]["languages"] == "given with --languages"
    assert report["choices"]["classifier"].startswith("the project's choice")
    assert "classifier: the project's choice" in result.stdout
