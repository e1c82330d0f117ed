"""train_mlm.py: data pipeline, masking, sampling, resumable single-process runs, a 2-process FSDP2 run on gloo,
export and push, and the errors for bad input."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import PROJECT
from mol_toolkit import text_sources
from mol_toolkit.training import mlm_data
from mol_toolkit.training.trainer import MLMTrainer, TrainingDiverged
from mol_toolkit.run_config import load_run_config


TINY = PROJECT / "configs" / "tiny_udhr.yaml"
TINY_LANGUAGES = ["eng_Latn", "deu_Latn", "fra_Latn", "spa_Latn", "rus_Cyrl", "arb_Arab"]


@pytest.fixture(autouse=True)
def in_project(monkeypatch):
    """The run configs name their data relative to the project root, where train_mlm.py is run."""
    monkeypatch.chdir(PROJECT)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """One tokenization cache for the whole module, as runs on one machine share theirs."""
    return str(tmp_path_factory.mktemp("tokenized"))


def tiny(tmp_path, cache_dir, **overrides):
    values = {"output_dir": str(tmp_path / "run"), "cache_dir": cache_dir, "trackers": [], "max_steps": 12,
              "checkpoint_every": 4, "eval_every": 0, "log_every": 1, "export": False,
              "tokenizer": str(PROJECT / "data" / "udhr-tokenizer")}
    values.update(overrides)
    return load_run_config(TINY, values)


def read_metrics(run_dir):
    """step -> metrics, the last line for each step winning (a resumed run logs its steps again)."""
    by_step = {}
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        by_step.setdefault(row["step"], {}).update(row)
    return by_step


def launch_env():
    env = dict(os.environ, PYTHONPATH=str(PROJECT), OMP_NUM_THREADS="1")
    env.pop("ACCELERATE_USE_CPU", None)
    return env


# -- masking, sampling, batching


def test_masking_statistics():
    spec = mlm_data.MaskingSpec(mask_token_id=98, pad_token_id=1, vocab_size=99, special_token_ids=(0, 2, 3, 98))
    ids = torch.randint(4, 98, (400, 250))
    ids[:, 0], ids[:, -1] = 0, 2
    ids[::7, 200:] = 1  # padding
    masked, labels = mlm_data.mask_tokens(ids, spec, torch.Generator().manual_seed(0))
    eligible = ~torch.isin(ids, torch.tensor([0, 1, 2, 3, 98]))
    selected = labels != -100
    assert not selected[~eligible].any(), "a special or padding token was selected"
    assert torch.equal(labels[selected], ids[selected])
    assert abs(selected.sum() / eligible.sum() - 0.15) < 0.005
    became_mask = (masked == 98) & selected
    kept = (masked == ids) & selected
    assert abs(became_mask.sum() / selected.sum() - 0.8) < 0.01
    assert abs(kept.sum() / selected.sum() - 0.1 - 0.1 / 99) < 0.01  # a random token can equal the original
    assert torch.equal(masked[~selected], ids[~selected])
    again, _ = mlm_data.mask_tokens(ids, spec, torch.Generator().manual_seed(0))
    assert torch.equal(again, masked), "masking is not reproducible from its generator"


def test_a_batch_always_has_a_masked_token():
    spec = mlm_data.MaskingSpec(mask_token_id=98, pad_token_id=1, vocab_size=99, special_token_ids=(0, 2, 3, 98),
                                probability=1e-9)
    _, labels = mlm_data.mask_tokens(torch.tensor([[0, 5, 6, 2]]), spec, torch.Generator().manual_seed(0))
    assert labels.tolist() == [[-100, 5, -100, -100]]


def test_language_probabilities():
    sizes = [1000, 100, 10]
    assert np.allclose(mlm_data.language_probabilities(sizes, "proportional", 3.0), [1000 / 1110, 100 / 1110, 10 / 1110])
    smoothed = np.array([1000, 100, 10]) ** (1 / 3)
    assert np.allclose(mlm_data.language_probabilities(sizes, "temperature", 3.0), smoothed / smoothed.sum())


def test_sampler_draws_by_probability_orders_by_group_and_reads_every_sentence_once_per_epoch():
    sizes, groups = [50, 30, 20], [1, 0, 1]
    probabilities = mlm_data.language_probabilities(sizes, "proportional", 1.0)
    sampler = mlm_data.LanguageBatchSampler(sizes, probabilities, 25, 2, seed=3, group_of_language=groups)
    counts = np.zeros(3)
    seen = {lang: [] for lang in range(3)}
    for step in range(40):
        state = sampler.state_dict()
        rank0 = sampler.next_batch(step, 0)
        sampler.load_state_dict(state)  # every rank computes the same global batch from the same cursors
        rank1 = sampler.next_batch(step, 1)
        for rank_batch in (rank0, rank1):
            assert len(rank_batch) == 25
            keys = [(groups[lang], lang) for lang, _ in rank_batch]
            assert keys == sorted(keys), "a batch is not ordered by language group"
            for lang, index in rank_batch:
                counts[lang] += 1
                seen[lang].append(index)
    assert np.allclose(counts / counts.sum(), probabilities, atol=0.03)
    for lang, size in enumerate(sizes):
        first_epoch = seen[lang][:size]
        if len(seen[lang]) >= size:
            assert sorted(first_epoch) == list(range(size)), f"language {lang} repeated a sentence within an epoch"


def test_caps_deduplication_and_top_up(tmp_path):
    primary = tmp_path / "primary.jsonl"
    rows = [{"text": t} for t in ["a", "b", "a", "c", "b", "d", "e", "f"]]
    primary.write_text("".join(json.dumps(r) + "\n" for r in rows))
    extra = tmp_path / "synthetic.txt"
    extra.write_text("x\ny\nz\nw\n")
    source = text_sources.resolve_source(str(primary), "eng_Latn", "train_data")
    top_up = text_sources.resolve_source(str(extra), "eng_Latn", "supplementary_data")
    assert text_sources.collect_texts("eng_Latn", [source, None], 4, None, True, "train") == ["a", "b", "c", "d"]
    assert text_sources.collect_texts("eng_Latn", [source, None], None, None, False, "train") == [r["text"] for r in rows]
    # 6 unique sentences is under the minimum of 8: topped up from the supplementary source, up to the minimum.
    assert text_sources.collect_texts("eng_Latn", [source, top_up], 25, 8, True, "train") == \
        ["a", "b", "c", "d", "e", "f", "x", "y"]


def test_tokenization_happens_once_per_language_and_is_reused(tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(PROJECT / "data" / "udhr-tokenizer")
    source = text_sources.resolve_source({"path": str(PROJECT / "data/udhr/udhr46_articles.jsonl"), "language_field": "lang",
                                      "split_field": "split", "split": "train"}, "fra_Latn", "train_data")
    before = len(mlm_data.TOKENIZATIONS)
    first = mlm_data.tokenized_language("fra_Latn", "train", [source, None], tokenizer, 64, tmp_path)
    second = mlm_data.tokenized_language("fra_Latn", "train", [source, None], tokenizer, 64, tmp_path)
    assert mlm_data.TOKENIZATIONS[before:] == [("fra_Latn", "train")]
    assert first["input_ids"] == second["input_ids"] and len(first) == 24
    assert max(len(ids) for ids in first["input_ids"]) == 64  # truncated to max_length
    assert all(ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id for ids in first["input_ids"])
    longer = mlm_data.tokenized_language("fra_Latn", "train", [source, None], tokenizer, 128, tmp_path)
    assert len(mlm_data.TOKENIZATIONS) == before + 2 and max(len(i) for i in longer["input_ids"]) > 64


# -- single-process runs


@pytest.mark.slow
def test_run_resumes_exactly_after_a_kill(tmp_path, cache_dir):
    """A run SIGKILLed after its first checkpoint and resumed logs the same losses as an uninterrupted run (fp32)."""
    common = ["--cache-dir", cache_dir, "--trackers", "[]", "--max-steps", "40", "--checkpoint-every", "5",
              "--log-every", "1", "--eval-every", "0", "--export", "false", "--hidden-dropout-prob", "0.1"]
    script = [sys.executable, str(PROJECT / "train_mlm.py"), "--config", str(TINY)]
    subprocess.run(script + common + ["--output-dir", str(tmp_path / "full")], check=True, env=launch_env(),
                   capture_output=True)
    killed = subprocess.Popen(script + common + ["--output-dir", str(tmp_path / "killed")], env=launch_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = tmp_path / "killed" / "checkpoints"
    deadline = time.time() + 120
    while not any(p.name == "step-0000005" for p in checkpoints.glob("step-*")) and time.time() < deadline:
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    done_before_kill = max(read_metrics(tmp_path / "killed"))
    assert done_before_kill < 40, "the run finished before it could be killed"
    subprocess.run(script + common + ["--output-dir", str(tmp_path / "killed"), "--resume"], check=True,
                   env=launch_env(), capture_output=True)
    full, resumed = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "killed")
    assert sorted(resumed) == sorted(full)
    for step in range(1, 41):
        assert resumed[step]["train/loss"] == pytest.approx(full[step]["train/loss"], rel=1e-6, abs=1e-7), step
    for code in TINY_LANGUAGES:
        assert resumed[40][f"devtest/{code}"] == pytest.approx(full[40][f"devtest/{code}"], rel=1e-6)


def test_loss_decreases_and_the_model_is_exported(tmp_path, cache_dir):
    config = tiny(tmp_path, cache_dir, max_steps=60, checkpoint_every=0, export=True)
    result = MLMTrainer(config, show_progress=False).train()
    metrics = read_metrics(config.output_dir)
    first = np.mean([metrics[s]["train/loss"] for s in range(1, 6)])
    last = np.mean([metrics[s]["train/loss"] for s in range(56, 61)])
    assert last < first - 0.5, (first, last)
    export = Path(result["export_dir"])
    assert {"config.json", "model.safetensors", "modeling_mol.py", "tokenizer.json", "README.md"} <= \
        {p.name for p in export.iterdir()}
    card = (export / "README.md").read_text()
    assert "germanic" in card and "rus_Cyrl" in card and f"{result['devtest_loss']['arb_Arab']:.4f}" in card
    assert (Path(config.output_dir) / "checkpoints" / "step-0000060").is_dir()
    # The card's metadata, read back by huggingface_hub, and the UDHR attribution its notice asks for.
    from huggingface_hub import ModelCard

    data = ModelCard.load(export / "README.md").data
    assert data.license == "apache-2.0" and data.library_name == "transformers" and data.pipeline_tag == "fill-mask"
    assert data.language == sorted(code.split("_")[0] for code in TINY_LANGUAGES)
    assert "custom_code" in data.tags and "mixture-of-languages" in data.tags
    assert "Titus Wormer" in card and "UDHR in Unicode" in card
    # Users get transformers-shaped logits, and a tokenizer that never truncates past the position table.
    exported = json.loads((export / "config.json").read_text())
    assert exported["sparse_prediction"] is False
    tokenizer_config = json.loads((export / "tokenizer_config.json").read_text())
    assert tokenizer_config["model_max_length"] == exported["max_position_embeddings"] - exported["pad_token_id"] - 1
    # The language identifier (languages="auto"), fitted on the run's own training sentences, scored on devtest.
    assert exported["language_identifier"] == "input-embedding-linear"
    assert sorted(exported["language_identifier_labels"]) == sorted(TINY_LANGUAGES)
    assert "training sentences per language" in exported["language_identifier_fitted_on"]
    assert result["language_identifier"]["accuracy"] >= 0.9, result["language_identifier"]
    assert "## Language identifier" in card and "Devtest accuracy" in card


def test_bf16_autocast_run_of_a_grouped_model_in_one_process(tmp_path, cache_dir):
    config = tiny(tmp_path, cache_dir, max_steps=3, checkpoint_every=0, mixed_precision="bf16", strategy="none")
    assert config.group_layers != "dense"
    MLMTrainer(config, show_progress=False).train()
    losses = [row["train/loss"] for row in read_metrics(config.output_dir).values() if "train/loss" in row]
    assert len(losses) == 3 and all(np.isfinite(losses)), losses


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, cache_dir):
    config = tiny(tmp_path, cache_dir, learning_rate=1e30, warmup_steps=0, max_steps=40, checkpoint_every=1,
                  max_grad_norm=0)
    with pytest.raises(TrainingDiverged, match=r"became (nan|inf).*last good checkpoint is .*step-"):
        MLMTrainer(config, show_progress=False).train()
    checkpoints = sorted((Path(config.output_dir) / "checkpoints").iterdir())
    assert checkpoints and all(p.name.startswith("step-") and not p.name.endswith(".partial") for p in checkpoints)


def test_push_to_hub(tmp_path, cache_dir, hub):
    from huggingface_hub import HfApi

    config = tiny(tmp_path, cache_dir, max_steps=2, checkpoint_every=0, push_to_hub="mol-tests/tiny-mlm")
    MLMTrainer(config, show_progress=False).train()
    files = set(HfApi().list_repo_files("mol-tests/tiny-mlm"))
    assert {"config.json", "model.safetensors", "configuration_mol.py", "modeling_mol.py", "tokenizer.json",
            "README.md"} <= files
    from transformers import AutoModelForMaskedLM

    model = AutoModelForMaskedLM.from_pretrained("mol-tests/tiny-mlm", trust_remote_code=True)
    assert model.config.languages == TINY_LANGUAGES and model.config.group_layers == [0, 1]


def test_hub_dataset_sources_streamed_with_a_template_per_language(tmp_path, hub, udhr_texts):
    """NLLB-style sources: one Hub dataset config per language ('{lang}' in the name), the training text streamed."""
    from datasets import Dataset

    for code in ("eng_Latn", "fra_Latn"):
        texts = udhr_texts[code]
        Dataset.from_dict({"text": texts[:24] + texts[:3]}).push_to_hub("mol-tests/udhr-nllb-style", config_name=code,
                                                                        split="train")
        Dataset.from_dict({"text": texts[24:]}).push_to_hub("mol-tests/udhr-flores-style", config_name=code,
                                                            split="devtest")
    config = tiny(tmp_path, str(tmp_path / "cache"), languages=["eng_Latn", "fra_Latn"], group_layers="dense",
                  train_data={"dataset": "mol-tests/udhr-nllb-style", "name": "{lang}", "streaming": True},
                  devtest_data={"dataset": "mol-tests/udhr-flores-style", "name": "{lang}", "split": "devtest"},
                  max_sentences=20, max_steps=3, checkpoint_every=0)
    trainer = MLMTrainer(config, show_progress=False)
    assert trainer.data.sizes() == [20, 20]  # capped (and the 3 repeats would have been dropped)
    assert [len(d) for d in trainer.data.devtest] == [6, 6]
    result = trainer.train()
    assert set(result["devtest_loss"]) == {"eng_Latn", "fra_Latn"}
    uncapped = tiny(tmp_path, str(tmp_path / "cache"), languages=["eng_Latn"], group_layers="dense",
                    output_dir=str(tmp_path / "uncapped"),
                    train_data={"dataset": "mol-tests/udhr-nllb-style", "name": "{lang}"},
                    devtest_data={"dataset": "mol-tests/udhr-flores-style", "name": "{lang}", "split": "devtest"},
                    max_sentences=None)
    assert MLMTrainer(uncapped, show_progress=False).data.sizes() == [24]  # 27 rows, 3 exact repeats


# -- bad input fails before anything runs


@pytest.mark.parametrize("overrides, message", [
    ({"train_data_overrides": {"kor_Hang": "data/udhr/udhr46_articles.jsonl"}},
     r"train_data names languages \['kor_Hang'\] that are not among the model's languages"),
    ({"train_data": "no/such/file.jsonl"}, r"'no/such/file.jsonl', which matches no file"),
    ({"train_data": {"path": "data/udhr/udhr46_articles.jsonl", "language_field": "lang", "split_field": "split",
                     "split": "validation"}}, r"holds no text for eng_Latn"),
    ({"devtest_data": {code: {"path": "data/udhr/udhr46_articles.jsonl", "language_field": "lang"}
                       for code in TINY_LANGUAGES[:-1]}}, r"devtest_data has no source for arb_Arab"),
    ({"vocab_size": 1000}, r"has 4001 tokens but vocab_size=1000"),
    ({"languages": ["eng_Latn", "xxx_Latn"]}, r"Unknown language code 'xxx_Latn'"),
])
def test_bad_input_fails_before_training(tmp_path, cache_dir, overrides, message):
    config = tiny(tmp_path, cache_dir, **overrides)
    with pytest.raises(ValueError, match=message):
        MLMTrainer(config, show_progress=False)
    assert not (tmp_path / "run").exists(), "the failed run wrote something"


def test_unknown_config_key_and_bad_values_on_the_command_line(tmp_path):
    with pytest.raises(ValueError, match=r"Unknown config key 'lerning_rate' \(did you mean 'learning_rate'\?\)"):
        load_run_config(TINY, {"lerning_rate": 1e-4})
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY.read_text() + "\nbatch_size: 3\n")
    run = subprocess.run([sys.executable, str(PROJECT / "train_mlm.py"), "--config", str(bad)], env=launch_env(),
                         capture_output=True, text=True)
    assert run.returncode == 2 and "Unknown config key 'batch_size'" in run.stderr
    run = subprocess.run([sys.executable, str(PROJECT / "train_mlm.py"), "--config", str(TINY), "--sampling", "uniform"],
                         env=launch_env(), capture_output=True, text=True)
    assert run.returncode == 2 and "sampling 'uniform' is not valid" in run.stderr
    assert not (tmp_path / "runs").exists()


def test_help_documents_every_key():
    from mol_toolkit.run_config import KEYS

    run = subprocess.run([sys.executable, str(PROJECT / "train_mlm.py"), "--help"], env=launch_env(),
                         capture_output=True, text=True, check=True)
    for key in KEYS:
        assert f"--{key.replace('_', '-')}" in run.stdout, key


# -- two processes, FSDP2 on gloo


def launch_on_cpu(processes, *arguments):
    """`accelerate launch` of the tiny config with real gloo ranks (FACTS.md: `--cpu` would start only one)."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               str(PROJECT / "train_mlm.py"), "--config", str(TINY), *arguments]
    env = dict(launch_env(), ACCELERATE_USE_CPU="true")
    return subprocess.run(command, env=env, capture_output=True, text=True, cwd=PROJECT, timeout=300)


@pytest.mark.slow
def test_two_process_fsdp_run_shards_learns_and_exports(tmp_path, cache_dir):
    out = tmp_path / "fsdp"
    run = launch_on_cpu(2, "--output-dir", str(out), "--cache-dir", cache_dir, "--max-steps", "40",
                        "--checkpoint-every", "20", "--eval-every", "20", "--log-every", "5")
    assert run.returncode == 0, run.stderr[-3000:]

    reports = [json.loads((out / f"sharding-rank{rank}.json").read_text()) for rank in range(2)]
    for name, entry in reports[0].items():
        # Tensors whose first dimension is smaller than the 2 ranks (a shared block's (1, in, out) copies, the one
        # token type) shard their second: dim 0 would leave one rank all padding (parallelism.shard_placement).
        expected = ["S(1)"] if len(entry["shape"]) >= 2 and entry["shape"][0] < 2 else ["S(0)"]
        assert entry["dtensor"] and entry["placements"] == expected, (name, entry)
        assert entry["local_numel"] + reports[1][name]["local_numel"] == entry["numel"], name
    for name in ("mol.embeddings.word_embeddings.weight", "mol.encoder.layer.0.intermediate.weight"):
        assert 0 < reports[0][name]["local_numel"] < reports[0][name]["numel"], name  # each rank holds a part

    metrics = read_metrics(out)
    assert metrics[40]["train/loss"] < metrics[5]["train/loss"] - 0.3
    assert list(out.glob("tiny_udhr/events.out.tfevents.*")), "TensorBoard (the default tracker) logged nothing"
    assert all(f"devtest/{code}" in metrics[20] for code in TINY_LANGUAGES)

    from modeling_mol import MoLModel

    reference = MoLModel.from_pretrained(out / "model").eval()
    check = (
        "import sys, importlib.util, torch\n"
        "from transformers import AutoModel, AutoTokenizer\n"
        "assert importlib.util.find_spec('modeling_mol') is None\n"
        "path = sys.argv[1]\n"
        "model = AutoModel.from_pretrained(path, trust_remote_code=True).eval()\n"
        "assert type(model).__module__.startswith('transformers_modules'), type(model)\n"
        "batch = AutoTokenizer.from_pretrained(path, trust_remote_code=True)(['Everyone has the right to life.'], return_tensors='pt')\n"
        "with torch.no_grad():\n"
        "    print(model(**batch, languages=['eng_Latn']).last_hidden_state.sum().item())\n"
    )
    clean = subprocess.run([sys.executable, "-I", "-c", check, str(out / "model")], cwd=tmp_path,
                           capture_output=True, stdin=subprocess.DEVNULL, text=True, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert clean.returncode == 0, clean.stderr[-3000:]
    from transformers import AutoTokenizer

    batch = AutoTokenizer.from_pretrained(out / "model")(["Everyone has the right to life."], return_tensors="pt")
    with torch.no_grad():
        expected = reference(**batch, languages=["eng_Latn"]).last_hidden_state.sum().item()
    assert float(clean.stdout.strip().splitlines()[-1]) == pytest.approx(expected, rel=1e-6)


@pytest.mark.slow
def test_four_process_hsdp_replicates_across_and_shards_within_groups(tmp_path, cache_dir):
    out = tmp_path / "hsdp"
    run = launch_on_cpu(4, "--output-dir", str(out), "--cache-dir", cache_dir, "--max-steps", "3",
                        "--checkpoint-every", "2", "--strategy", "hsdp", "--shard-group-size", "2",
                        "--sentences-per-device", "4", "--export", "false", "--trackers", "[]")
    assert run.returncode == 0, run.stderr[-3000:]
    reports = [json.loads((out / f"sharding-rank{rank}.json").read_text()) for rank in range(4)]
    name = "mol.embeddings.word_embeddings.weight"
    assert all(r[name]["placements"] == ["R", "S(0)"] for r in reports)
    # Ranks 0,1 and 2,3 are the two shard groups: within a group the shards add up, across groups they repeat.
    assert reports[0][name]["local_numel"] + reports[1][name]["local_numel"] == reports[0][name]["numel"]
    assert [r[name]["local_numel"] for r in reports[2:]] == [r[name]["local_numel"] for r in reports[:2]]
    assert (out / "checkpoints" / "step-0000003").is_dir()
