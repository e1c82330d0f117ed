"""strategy group_parallel: each rank holds only its language group's weight copies.

Unit tests of the layout, the batches and the localised blocks in one process; then real 4-process gloo runs through
`accelerate launch` with the shipped configs/accelerate/group_parallel_cpu.yaml, 2 groups on 4 ranks, against the
FSDP run of the same config."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import PROJECT, tiny_config_kwargs

from configuration_mol import MoLConfig
from modeling_mol import MoLForMaskedLM
from mol_toolkit.training import mlm_data
from mol_toolkit.training import group_parallel


CONFIG = PROJECT / "configs" / "group_parallel_tiny.yaml"
ACCELERATE_CONFIG = PROJECT / "configs" / "accelerate" / "group_parallel_cpu.yaml"
GROUPS = {"latin": ["eng_Latn", "deu_Latn", "fra_Latn", "spa_Latn"], "other": ["rus_Cyrl", "arb_Arab"]}


# ---- the layout -------------------------------------------------------------------------------------------------

def test_ranks_follow_each_groups_share_of_the_data():
    layout = group_parallel.plan_layout(4, ["latin", "other"], [0.75, 0.25])
    assert layout.to_dict() == {"latin": [0, 1, 2], "other": [3]}
    assert group_parallel.plan_layout(4, ["a", "b"], [0.5, 0.5]).to_dict() == {"a": [0, 1], "b": [2, 3]}
    assert group_parallel.plan_layout(3, ["a", "b", "c"], [0.98, 0.01, 0.01]).to_dict() == {"a": [0], "b": [1], "c": [2]}
    assert group_parallel.plan_layout(8, ["a", "b", "c"], [0.5, 0.3, 0.2]).to_dict() == \
        {"a": [0, 1, 2, 3], "b": [4, 5], "c": [6, 7]}
    overridden = group_parallel.plan_layout(4, ["latin", "other"], [0.75, 0.25], {"latin": 2, "other": 2})
    assert overridden.to_dict() == {"latin": [0, 1], "other": [2, 3]} and overridden.group_of_rank(2) == 1


@pytest.mark.parametrize("world, names, shares, override, message", [
    (2, ["a", "b", "c"], [1, 1, 1], None, "at least one rank per language group: 3 groups"),
    (4, ["a", "b"], [1.0, 0.0], None, "Language groups \\['b'\\] have no training data"),
    (4, ["a", "b"], [1, 1], {"a": 3, "b": 2}, "add up to 5 ranks, but the run has 4"),
    (4, ["a", "b"], [1, 1], {"a": 4}, "missing \\['b'\\]"),
    (4, ["a", "b"], [1, 1], {"a": 4, "b": 0, "c": 1}, "unknown \\['c'\\]"),
    (4, ["a", "b"], [1, 1], {"a": 4, "b": 0}, "integers >= 1"),
])
def test_bad_layouts_are_clear_errors(world, names, shares, override, message):
    with pytest.raises(ValueError, match=message):
        group_parallel.plan_layout(world, names, shares, override)


def test_models_without_language_groups_or_with_learned_routing_are_refused():
    with pytest.raises(ValueError, match="needs a MoL with group-specific blocks and at least 2"):
        group_parallel.check_model(MoLConfig(**tiny_config_kwargs(group_layers="dense", language_groups=None)))
    with pytest.raises(ValueError, match="expert parallelism needs each token sent to its expert's ranks"):
        group_parallel.check_model(MoLConfig(**tiny_config_kwargs(routing="token", num_experts=2, language_groups=None)))


# ---- the batches ------------------------------------------------------------------------------------------------

class FakeData:
    """Sentence i of language l is [0, 10 + l, 20 + i % 50, ..., 2]: lengths vary, languages are readable."""

    def train_sequences(self, pairs):
        return [[0, 10 + lang] + [20 + (index + j) % 50 for j in range(3 + index % 7)] + [2] for lang, index in pairs]


@pytest.mark.parametrize("accumulation", [1, 2])
def test_each_rank_gets_its_groups_share_of_the_fsdp_global_batch_with_the_same_masks(accumulation):
    world, per_device, seed, step = 4, 8, 3, 5
    group_of_language = [0, 0, 0, 0, 1, 1]
    sizes = [40, 30, 20, 25, 35, 15]
    probabilities = mlm_data.language_probabilities(sizes, "temperature", 3.0)
    masking = mlm_data.MaskingSpec(mask_token_id=99, pad_token_id=1, vocab_size=100, special_token_ids=(0, 2))
    layout = group_parallel.plan_layout(world, ["latin", "other"], [1, 1])
    slots = world * accumulation

    def sampler():
        return mlm_data.LanguageBatchSampler(sizes, probabilities, per_device, slots, seed, group_of_language)

    fsdp = sampler()
    expected, weight_of = [], {}
    for slot in range(slots):
        pairs = fsdp.next_batch(step, slot)
        batch = mlm_data.mlm_batch(FakeData().train_sequences(pairs), [l for l, _ in pairs], masking,
                                   mlm_data.step_generator(seed, step, slot))
        masked = int((batch["labels"] != -100).sum())
        for row in range(len(pairs)):
            length = int(batch["attention_mask"][row].sum())
            key = (tuple(batch["input_ids"][row, :length].tolist()), tuple(batch["labels"][row, :length].tolist()))
            expected.append(key)
            weight_of[key] = 1.0 / (slots * masked)
    got = []
    for rank in range(world):
        rank_sampler = sampler()  # every rank draws the same global batch
        for micro in range(accumulation):
            batch, real = group_parallel.micro_batch(rank_sampler, FakeData(), masking, seed, step, micro, world,
                                                     accumulation, layout, rank, group_of_language)
            group = layout.group_of_rank(rank)
            assert all(group_of_language[lang] == group for lang in batch["lang_ids"].tolist())
            for row in range(real):
                length = int(batch["attention_mask"][row].sum())
                key = (tuple(batch["input_ids"][row, :length].tolist()), tuple(batch["labels"][row, :length].tolist()))
                got.append(key)
                weights = batch["token_weights"][row, :length][batch["labels"][row, :length] != -100]
                assert torch.allclose(weights, torch.full_like(weights, weight_of[key]))
    assert sorted(got) == sorted(expected)  # the same sentences, masked the same way, each exactly once


def test_a_block_holding_one_group_computes_what_the_full_model_computes():
    torch.manual_seed(0)
    full = MoLForMaskedLM(MoLConfig(**tiny_config_kwargs())).eval()
    with torch.device("meta"):
        held = MoLForMaskedLM(MoLConfig(**tiny_config_kwargs()))
    group_parallel.hold_groups(held, (2,))  # groups in sorted name order: germanic, other, romance
    held.to_empty(device="cpu")
    state = full.state_dict()
    for name, tensor in held.state_dict().items():
        source = state[name]
        tensor.copy_(source[2:3] if tensor.shape != source.shape else source)
    held.eval()
    ids = torch.randint(3, 99, (3, 7), generator=torch.Generator().manual_seed(1))
    languages = ["fra_Latn", "spa_Latn", "fra_Latn"]  # the "romance" group
    with torch.no_grad():
        torch.testing.assert_close(held(input_ids=ids, languages=languages).logits,
                                   full(input_ids=ids, languages=languages).logits, atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="holds the weight copies of groups \\[2\\] only, and the batch has rows of "
                                         "groups \\[0\\]"):
        held(input_ids=ids, languages=["eng_Latn", "fra_Latn", "fra_Latn"])


# ---- 4 gloo processes --------------------------------------------------------------------------------------------

def launch(out, cache, *arguments, processes=4, config=CONFIG):
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE_CONFIG),
               "--num_processes", str(processes), str(PROJECT / "train_mlm.py"), "--config", str(config),
               "--output-dir", str(out), "--cache-dir", str(cache), "--trackers", "[]", "--log-every", "1",
               "--eval-every", "0", *arguments]
    env = dict(os.environ, PYTHONPATH=str(PROJECT), OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="true")
    return subprocess.run(command, env=env, capture_output=True, text=True, cwd=PROJECT, timeout=600)


def losses(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row["train/loss"] for row in rows if "train/loss" in row}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("group-parallel")
    cache = root / "cache"
    done = {}
    for name, arguments in {
        "group_parallel": ["--max-steps", "6", "--checkpoint-every", "3"],
        "fsdp": ["--strategy", "fsdp", "--max-steps", "6", "--checkpoint-every", "3"],
    }.items():
        run = launch(root / name, cache, *arguments)
        assert run.returncode == 0, (name, run.stderr[-4000:])
        done[name] = root / name
    # Each run as if killed after its step-3 checkpoint, then resumed: under the same strategy, and under the other
    # one (the checkpoint reshards between the layouts).
    for name, source, strategy in (("resumed", "group_parallel", "group_parallel"),
                                   ("group_parallel_then_fsdp", "group_parallel", "fsdp"),
                                   ("fsdp_then_group_parallel", "fsdp", "group_parallel")):
        killed = killed_after_step_3(done[source], root / name)
        resumed = launch(killed, cache, "--strategy", strategy, "--max-steps", "6", "--checkpoint-every", "3",
                         "--resume", "latest", "--export", "false")
        assert resumed.returncode == 0, (name, resumed.stderr[-4000:])
        done[name] = killed
    return done, cache


def killed_after_step_3(run, copy):
    """A copy of a finished 6-step run as it was when killed after its step-3 checkpoint."""
    import shutil

    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("step-0000006", "model", "run.lock", "results.json"))
    lines = (copy / "metrics.jsonl").read_text().splitlines()
    (copy / "metrics.jsonl").write_text("".join(line + "\n" for line in lines if json.loads(line)["step"] <= 3))
    return copy


@pytest.mark.slow
def test_group_blocks_live_only_on_their_groups_ranks(runs):
    done, _ = runs
    reports = [json.loads((done["group_parallel"] / f"sharding-rank{r}.json").read_text()) for r in range(4)]
    fsdp = json.loads((done["fsdp"] / "sharding-rank0.json").read_text())
    layout = {"latin": [0, 1], "other": [2, 3]}  # 4 latin languages to 2 others, T=3 sampling: half and half
    assert json.loads((done["group_parallel"] / "run_config.json").read_text())["strategy"] == "group_parallel"
    group_block = "mol.encoder.layer.0.attention.query.weight"
    for rank, report in enumerate(reports):
        group = "latin" if rank in layout["latin"] else "other"
        entry = report[group_block]
        assert entry["mesh_ranks"] == layout[group], entry  # only its group's ranks hold (and reduce) these
        assert entry["shape"][0] == 1 and entry["shape"][1:] == fsdp[group_block]["shape"][1:]  # one copy of two
        assert entry["placements"] == ["S(1)"]  # one copy: sharded along its features, not its copy dimension
        shared = report["mol.embeddings.word_embeddings.weight"]
        assert shared["mesh_ranks"] == [0, 1, 2, 3] and shared["shape"] == fsdp["mol.embeddings.word_embeddings.weight"]["shape"]
    for group, ranks in layout.items():
        for name, entry in reports[ranks[0]].items():
            if name.startswith("mol.encoder.layer."):
                assert sum(reports[r][name]["local_numel"] for r in ranks) == entry["numel"], name
                assert entry["numel"] * 2 == fsdp[name]["numel"], name  # all blocks are group blocks here


@pytest.mark.slow
def test_losses_equal_the_fsdp_runs_and_resume_is_exact(runs):
    done, _ = runs
    group, fsdp, resumed = losses(done["group_parallel"]), losses(done["fsdp"]), losses(done["resumed"])
    assert sorted(group) == sorted(fsdp) == sorted(resumed) == list(range(1, 7))
    for step in group:
        assert group[step] == pytest.approx(fsdp[step], abs=1e-5), (step, group[step], fsdp[step])
        assert resumed[step] == group[step], step  # steps 4-6 after the resume from step 3: bitwise
    # Across strategies: a group-parallel checkpoint continued under FSDP, and an FSDP one group-parallel.
    for name, reference in (("group_parallel_then_fsdp", group), ("fsdp_then_group_parallel", fsdp)):
        continued = losses(done[name])
        for step in (4, 5, 6):
            assert continued[step] == pytest.approx(reference[step], abs=1e-5), (name, step)
    assert group[6] < group[1]


@pytest.mark.slow
def test_a_group_parallel_export_is_the_whole_model_and_equals_the_fsdp_one(runs):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    done, _ = runs
    models = {name: AutoModelForMaskedLM.from_pretrained(done[name] / "model", trust_remote_code=True).eval()
              for name in ("group_parallel", "fsdp")}
    tokenizer = AutoTokenizer.from_pretrained(done["group_parallel"] / "model")
    batch = tokenizer(["Everyone has the right to life.", "Все люди рождаются свободными."], padding=True,
                      return_tensors="pt")
    with torch.no_grad():
        outputs = {name: model(**batch, languages=["eng_Latn", "rus_Cyrl"]).logits for name, model in models.items()}
    assert models["group_parallel"].mol.encoder.layer[0].attention.query.weight.shape[0] == 2
    np.testing.assert_allclose(outputs["group_parallel"].numpy(), outputs["fsdp"].numpy(), atol=1e-4)


@pytest.mark.slow
def test_more_groups_than_ranks_fails_before_training(tmp_path):
    run = launch(tmp_path / "three-groups", tmp_path / "cache", "--strategy", "group_parallel", "--max-steps", "2",
                 processes=2, config=PROJECT / "configs" / "tiny_udhr.yaml")
    assert run.returncode != 0, run.stderr[-3000:]  # the launcher reports the workers' exit status 2 as 1
    assert "at least one rank per language group: 3 groups" in run.stderr
    assert not (tmp_path / "three-groups" / "metrics.jsonl").exists()


@pytest.mark.slow
def test_measured_bytes_match_what_the_placements_predict(tmp_path):
    """benchmarks/benchmark_communication.py on 4 gloo processes: the bytes the profiler sees equal the parameter
    counts' prediction (each parameter gathered for forward and again for backward, its gradient reduce-scattered
    once, fp32), and group-parallel's group-block traffic per rank is 1/G of FSDP2's."""
    sys.path.insert(0, str(PROJECT / "benchmarks"))
    import benchmark_communication as bench

    out = tmp_path / "comm.json"
    env = dict(os.environ, PYTHONPATH=str(PROJECT), OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, str(PROJECT / "benchmarks" / "benchmark_communication.py"), "--out", str(out)],
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    group, other = bench.parameter_split(bench.tiny_config())
    groups = len(bench.GROUPS)
    for measured in result["measured"]:  # every rank
        fsdp, parallel = measured["MoL / FSDP2"], measured["MoL / group_parallel"]
        assert fsdp["all_gather group blocks"] == 2 * 4 * group and fsdp["reduce_scatter group blocks"] == 4 * group
        assert parallel["all_gather group blocks"] == 2 * 4 * group // groups
        assert parallel["reduce_scatter group blocks"] == 4 * group // groups
        assert parallel["all_gather other"] == fsdp["all_gather other"]  # the shared part is FSDP2 either way
        assert measured["dense / FSDP2"]["all_gather group blocks"] == 0
    assert result["group_block_ratio"] <= 1 / groups + 1e-9
    assert "| MoL / group_parallel | 3 |" in run.stdout


@pytest.mark.slow
def test_a_killed_group_parallel_run_resumes_exactly(tmp_path):
    """SIGKILL (the launcher and its 4 workers) after the first checkpoint, resume: the same losses as a run that was
    never interrupted, bitwise."""
    import signal
    import time

    arguments = ["--max-steps", "15", "--checkpoint-every", "3", "--export", "false"]
    cache = tmp_path / "cache"
    full = launch(tmp_path / "full", cache, *arguments)
    assert full.returncode == 0, full.stderr[-3000:]
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE_CONFIG),
               str(PROJECT / "train_mlm.py"), "--config", str(CONFIG), "--output-dir", str(tmp_path / "killed"),
               "--cache-dir", str(cache), "--trackers", "[]", "--log-every", "1", "--eval-every", "0", *arguments]
    env = dict(os.environ, PYTHONPATH=str(PROJECT), OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="true")
    killed = subprocess.Popen(command, env=env, cwd=PROJECT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    checkpoints = tmp_path / "killed" / "checkpoints"
    deadline = time.time() + 300
    while not (checkpoints / "step-0000003").is_dir() and time.time() < deadline and killed.poll() is None:
        time.sleep(0.02)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    assert max(losses(tmp_path / "killed")) < 15, "the run finished before it could be killed"
    resumed = launch(tmp_path / "killed", cache, *arguments, "--resume", "latest")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected, got = losses(tmp_path / "full"), losses(tmp_path / "killed")
    assert sorted(got) == sorted(expected) == list(range(1, 16))
    assert all(got[step] == expected[step] for step in expected), (got, expected)
