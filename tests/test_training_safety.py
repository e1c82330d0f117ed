"""The training side refuses bad input before any work and never loses, mixes or replaces results: every bad value
through the real entry points (a non-zero exit, no traceback, a message naming the value, no file of the run folder
changed), run-folder locks and resume rules, checkpoint manifests and fallback, data errors with file and line,
gradient accumulation, the dry run and the thread choice."""

import hashlib
import json
import os
import re
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import PROJECT


TINY = PROJECT / "configs" / "tiny_udhr.yaml"
TRAIN = [sys.executable, str(PROJECT / "train_mlm.py")]
SWEEP = [sys.executable, str(PROJECT / "build_interference.py")]
GROUP = [sys.executable, str(PROJECT / "group_languages.py")]


def env(**extra):
    values = dict(os.environ, PYTHONPATH=str(PROJECT), OMP_NUM_THREADS="1")
    values.pop("ACCELERATE_USE_CPU", None)
    values.update(extra)
    return values


def run(command, timeout=300, **kwargs):
    return subprocess.run(command, env=kwargs.pop("env", None) or env(), capture_output=True, text=True,
                          cwd=PROJECT, timeout=timeout, **kwargs)


def tiny_flags(out, cache, *extra):
    return ["--config", str(TINY), "--output-dir", str(out), "--cache-dir", str(cache), "--trackers", "[]",
            "--export", "false", "--eval-every", "0", "--log-every", "1", *extra]


def checksums(folder):
    folder = Path(folder)
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()} if folder.exists() else {}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("tokenized")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, cache):
    """A tiny run of 4 steps with checkpoints at 2 and 4: the folder later runs must never disturb."""
    out = tmp_path_factory.mktemp("finished") / "run"
    result = run(TRAIN + tiny_flags(out, cache, "--max-steps", "4", "--checkpoint-every", "2"))
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def broken_files(tmp_path):
    """Training files with one fault each, in the UDHR sample's layout."""
    good = {"lang": "eng_Latn", "split": "train", "text": "All human beings are born free."}
    files = {
        "broken.jsonl": json.dumps(good) + "\n{\"lang\": \"eng_Latn\", \"text\": \n",
        "no_text.jsonl": json.dumps(good) + "\n" + json.dumps({"lang": "eng_Latn", "split": "train"}) + "\n",
        "empty.jsonl": "",
    }
    for name, content in files.items():
        (tmp_path / name).write_text(content, encoding="utf-8")
    (tmp_path / "latin1.jsonl").write_bytes(json.dumps(good).encode() + b"\n" + '{"text": "caf\xe9"}'.encode("latin-1"))
    return tmp_path


def source(path):
    return json.dumps({"path": str(path), "language_field": "lang"})


# -- every bad input through the entry points -----------------------------------------------------------------------

BAD_TRAINING_INPUTS = [
    (["--max-steps", "ten"], r"max_steps must be an integer >= 1, got 'ten'"),
    (["--hidden-size", '"64"'], r"hidden_size must be an integer >= 1, got '64'"),
    (["--sampling-temperature", "0"], r"sampling_temperature must be a number in \(0, inf\], got 0"),
    (["--max-length", "1"], r"max_length must be an integer >= 3, got 1"),
    (["--checkpoint-every", "-1"], r"checkpoint_every must be an integer >= 0, got -1"),
    (["--warmup-steps", "-5"], r"warmup_steps must be an integer >= 0, got -5"),
    (["--learning-rate", "[1, 2]"], r"learning_rate must be a number in \(0, inf\], got \[1, 2\]"),
    (["--mlm-probability", "1.5"], r"mlm_probability must be a number in \(0, 1\)"),
    (["--adam-betas", "[0.9]"], r"adam_betas must be two numbers in \[0, 1\)"),
    (["--push-to-hub", "no-namespace"], r"push_to_hub must be a Hub repo id of the form ORG/NAME"),
    (["--gradient-accumulation-steps", "0"], r"gradient_accumulation_steps must be an integer >= 1, got 0"),
    (["--global-batch-size", "10"], r"global_batch_size=10 is not a multiple of sentences_per_device x processes"),
    (["--resume", "/no/such/checkpoint"], r"resume='/no/such/checkpoint' does not exist"),
    (["--train-data", "BROKEN/broken.jsonl"], r"broken\.jsonl \(for eng_Latn\) has a line that is not JSON: line 2"),
    (["--train-data", "BROKEN/latin1.jsonl"], r"latin1\.jsonl \(for eng_Latn\) is not UTF-8 text: line 2"),
    (["--train-data", "BROKEN/no_text.jsonl"], r"no_text\.jsonl, line 2\) has no field 'text'"),
    (["--train-data", "BROKEN/empty.jsonl"], r"empty\.jsonl\) holds no text for eng_Latn"),
]


@pytest.mark.parametrize("arguments, message", BAD_TRAINING_INPUTS)
def test_bad_training_input_is_refused_before_any_work(tmp_path, cache, finished_run, arguments, message):
    folder = broken_files(tmp_path)
    arguments = [a.replace("BROKEN", str(folder)) for a in arguments]
    if arguments[0] == "--train-data":
        arguments = ["--train-data", json.dumps({"path": arguments[1]}), "--languages", "[eng_Latn]",
                     "--group-layers", "dense"]
    out = tmp_path / "run"
    before = checksums(finished_run)
    result = run(TRAIN + tiny_flags(out, tmp_path / "cache", *arguments))
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert re.search(message, result.stderr), result.stderr[-2000:]
    assert not out.exists(), "the refused run wrote its folder"
    assert checksums(finished_run) == before


def test_malformed_yaml_is_reported_with_its_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("languages: [eng_Latn, fra_Latn\nhidden_size: 64\n")
    result = run(TRAIN + ["--config", str(bad)])
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert re.search(r"is not valid YAML \(line 2, column \d+\)", result.stderr), result.stderr


def test_push_to_hub_without_a_usable_token_is_refused_before_the_first_step(tmp_path, cache):
    from hub_server import free_port

    no_hub = env(HF_ENDPOINT=f"http://127.0.0.1:{free_port()}", HF_HOME=str(tmp_path / "hf-home"))
    no_hub.pop("HF_TOKEN", None)
    result = run(TRAIN + tiny_flags(tmp_path / "run", cache, "--push-to-hub", "mol-org/never"), env=no_hub)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "push_to_hub='mol-org/never' needs a Hub token with write access" in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_killing_the_launchers_process_group_leaves_no_worker(tmp_path, cache):
    import time

    out = tmp_path / "killed"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(PROJECT / "train_mlm.py")]
    process = subprocess.Popen(launch + tiny_flags(out, cache, "--max-steps", "400", "--checkpoint-every", "2"),
                               env=env(ACCELERATE_USE_CPU="true"), cwd=PROJECT, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while not list((out / "checkpoints").glob("step-*[0-9]")) and time.time() < deadline:
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    time.sleep(1.0)
    survivors = subprocess.run(["pgrep", "-f", str(out)], capture_output=True, text=True).stdout.split()
    assert not survivors, f"workers still training: {survivors}"
    from filelock import FileLock

    lock = FileLock(str(out / "run.lock"))  # the killed run's lock died with it: a resume can take the folder
    lock.acquire(timeout=0)
    lock.release()


def test_paths_that_cannot_be_written_are_refused(tmp_path, cache):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    for key, flag in (("output_dir", "--output-dir"), ("cache_dir", "--cache-dir")):
        flags = tiny_flags(tmp_path / "run", cache)
        flags[flags.index(flag) + 1] = str(a_file / "below")
        result = run(TRAIN + flags)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert f"{key}=" in result.stderr and "is a file, not a folder" in result.stderr, result.stderr


# -- run folders: one run each, never replaced silently -------------------------------------------------------------

def test_a_fresh_run_into_a_folder_that_holds_a_run_refuses(finished_run, cache):
    before = checksums(finished_run)
    result = run(TRAIN + tiny_flags(finished_run, cache, "--max-steps", "4"))
    assert result.returncode == 2 and "already holds a run" in result.stderr and "--resume" in result.stderr
    assert checksums(finished_run) == before


def test_resuming_with_changed_settings_lists_the_keys(finished_run, cache):
    before = checksums(finished_run)
    result = run(TRAIN + tiny_flags(finished_run, cache, "--max-steps", "6", "--resume", "--learning-rate", "0.01",
                                    "--sampling", "proportional"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "learning_rate: 0.001 -> 0.01" in result.stderr and "sampling: 'temperature' -> 'proportional'" in result.stderr
    assert checksums(finished_run) == before


def test_a_second_run_into_a_locked_folder_names_the_holder(tmp_path, cache):
    from filelock import FileLock

    out = tmp_path / "run"
    out.mkdir()
    lock = FileLock(str(out / "run.lock"))
    lock.acquire()
    (out / "run.lock.json").write_text(json.dumps({"pid": 4242, "host": "tester", "started": "now"}))
    try:
        result = run(TRAIN + tiny_flags(out, cache, "--max-steps", "2"))
    finally:
        lock.release()
    assert result.returncode == 2 and "Another run is using" in result.stderr and "process 4242 on tester" in result.stderr


@pytest.mark.slow
def test_overwrite_starts_afresh_and_resume_may_extend_max_steps(tmp_path, cache, finished_run):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(finished_run, out)
    (out / "stale.txt").write_text("from the old run")
    result = run(TRAIN + tiny_flags(out, cache, "--max-steps", "2", "--overwrite", "true"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (out / "stale.txt").exists() and [p.name for p in (out / "checkpoints").iterdir()] == ["step-0000002"]
    result = run(TRAIN + tiny_flags(out, cache, "--max-steps", "3", "--resume"))
    assert result.returncode == 0, result.stderr[-3000:]
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 3 and steps.count(2) >= 1


# -- checkpoints ----------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, cache, finished_run):
    import shutil

    out = tmp_path / "damaged"
    shutil.copytree(finished_run, out)
    newest = out / "checkpoints" / "step-0000004"
    manifest = json.loads((newest / "manifest.json").read_text())
    assert set(manifest["files"]) >= {"trainer_state.json", "rng-0.pt"} and all(
        entry["size"] > 0 and len(entry["sha256"]) == 64 for entry in manifest["files"].values())
    shard = next(p for p in (newest / "state").iterdir() if p.suffix == ".distcp")
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])  # truncated
    (out / "checkpoints" / "step-0000006.partial").mkdir()  # a killed run's leftover
    result = run(TRAIN + tiny_flags(out, cache, "--max-steps", "5", "--resume", "--checkpoint-every", "0"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Skipping the checkpoint" in result.stdout and "truncated" in result.stdout, result.stdout[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert results["resumed_from_step"] == 2
    assert not (out / "checkpoints" / "step-0000006.partial").exists()
    explicit = run(TRAIN + tiny_flags(out, cache, "--max-steps", "5", "--resume", str(newest)))
    assert explicit.returncode == 2 and "is not a usable checkpoint" in explicit.stderr and "truncated" in explicit.stderr


def test_a_killed_runs_temporary_tokenization_is_removed_and_a_live_ones_kept(tmp_path):
    from mol_toolkit.training.mlm_data import remove_dead_partials

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone = tmp_path / f".eng_Latn-train-0123456789abcdef-pid{dead.stdout.strip()}-x1y2"
    live = tmp_path / f".eng_Latn-train-0123456789abcdef-pid{os.getpid()}-z3w4"
    for folder in (gone, live):
        (folder / "data").mkdir(parents=True)
    assert remove_dead_partials(tmp_path) == [gone]
    assert not gone.exists() and live.exists()


@pytest.mark.slow
def test_a_full_disk_is_an_error_naming_the_checkpoint_and_no_checkpoint_looks_complete(tmp_path, cache, finished_run):
    out = tmp_path / "full-disk"

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    result = subprocess.run(TRAIN + tiny_flags(out, cache, "--max-steps", "2", "--checkpoint-every", "2"),
                            env=env(), capture_output=True, text=True, cwd=PROJECT, timeout=300,
                            preexec_fn=limit_file_size)
    assert result.returncode != 0
    assert "Could not write the checkpoint" in result.stderr and "step-0000002" in result.stderr, result.stderr[-3000:]
    assert not list((out / "checkpoints").glob("step-0000002*"))


# -- gradient accumulation, dry run, threads ------------------------------------------------------------------------

@pytest.mark.slow
def test_one_process_accumulating_two_steps_equals_two_processes(tmp_path, cache):
    common = ["--max-steps", "3", "--checkpoint-every", "0", "--sentences-per-device", "8"]
    single = run(TRAIN + tiny_flags(tmp_path / "single", cache, *common, "--gradient-accumulation-steps", "2"))
    assert single.returncode == 0, single.stderr[-3000:]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(PROJECT / "train_mlm.py")]
    double = run(launch + tiny_flags(tmp_path / "double", cache, *common), env=env(ACCELERATE_USE_CPU="true"))
    assert double.returncode == 0, double.stderr[-3000:]
    rows = [[json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
            for name in ("single", "double")]
    losses = [{row["step"]: row["train/loss"] for row in run_rows if "train/loss" in row} for run_rows in rows]
    for step in (1, 2, 3):
        assert losses[0][step] == pytest.approx(losses[1][step], rel=1e-6, abs=1e-6), step
    assert json.loads((tmp_path / "single" / "results.json").read_text())["gradient_accumulation_steps"] == 2


def test_global_batch_size_sets_the_accumulation(tmp_path, cache):
    from mol_toolkit.training.trainer import accumulation_steps
    from mol_toolkit.run_config import load_run_config

    config = load_run_config(TINY, {"global_batch_size": 64, "sentences_per_device": 16})
    assert accumulation_steps(config, 1) == 4 and accumulation_steps(config, 2) == 2
    with pytest.raises(ValueError, match="is not a multiple of sentences_per_device x processes = 16 x 3 = 48"):
        accumulation_steps(config, 3)


@pytest.mark.slow
def test_dry_run_of_a_paper_preset_works_offline(tmp_path):
    result = run(TRAIN + ["--config", str(PROJECT / "configs" / "mol90_lid.yaml"), "--dry-run", "--output-dir",
                          str(tmp_path / "never")], env=env(HF_HUB_OFFLINE="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    total, active = (int(n.replace(",", "")) for n in re.search(
        r"Model: ([\d,]+) parameters, ([\d,]+) active per sentence", result.stdout).groups())
    assert 2.0e9 < total < 2.5e9 and 5.0e8 < active < 6.0e8  # MoL 90 LID: about 2B, dense-sized active
    assert "90 languages in 10 group(s)" in result.stdout
    # The paper's global batch, pinned: on one process, 128 micro-batches of the paper's 1200 sentences per GPU.
    assert "Global batch: 153600 sentences per step" in result.stdout
    assert "1200 sentences per device x 1 process(es) x 128 accumulation step(s)" in result.stdout
    assert "train_data afr_Latn" in result.stdout
    assert not (tmp_path / "never").exists()


@pytest.mark.slow
def test_threads_are_chosen_and_reported(tmp_path, cache):
    result = run(TRAIN + tiny_flags(tmp_path / "run", cache, "--max-steps", "1", "--threads", "1"))
    assert result.returncode == 0 and "torch intra-op threads: 1 (the run config's threads)" in result.stdout


# -- the sweep and group_languages.py -------------------------------------------------------------------------------

@pytest.mark.slow
def test_bad_sweep_inputs_are_refused_before_any_run(tmp_path):
    preset = tmp_path / "fsdp.yaml"
    preset.write_text(f"base: {PROJECT / 'configs' / 'interference' / 'tiny.yaml'}\nstrategy: fsdp\n")
    other = tmp_path / "other"
    other.mkdir()
    (other / "sweep.json").write_text(json.dumps({"fingerprint": "x", "settings": {}, "languages": ["deu_Latn"]}))
    cases = [
        (["--seeds", "a,b"], r"--seeds 'a,b' is not a comma-separated list of integers"),
        (["--preset", str(preset)], r"A sweep sets strategy='none' for its runs"),
        (["--similarity-encoder", str(tmp_path / "no-encoder")], r"Cannot load the encoder"),
        (["--output-dir", str(other)], r"holds the sweep of the languages \['deu_Latn'\]"),
    ]
    for arguments, message in cases:
        out = ["--output-dir", str(tmp_path / "sweep")] if "--output-dir" not in arguments else []
        before = checksums(other)
        result = run(SWEEP + ["--languages", "eng_Latn,fra_Latn", *out, *arguments])
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
        assert re.search(message, result.stderr), (arguments, result.stderr[-2000:])
        assert not (tmp_path / "sweep" / "results").exists() and checksums(other) == before


def test_bad_group_languages_inputs_are_refused(tmp_path):
    import pandas as pd

    matrix = tmp_path / "matrix.csv"
    pd.DataFrame({"language": ["eng_Latn", "fra_Latn", "eng_Latn"], "added_language": ["fra_Latn", "eng_Latn", "fra_Latn"],
                  "interference": [0.1, float("nan"), 0.1]}).to_csv(matrix, index=False)
    duplicate = tmp_path / "duplicate.csv"
    pd.DataFrame({"language": ["eng_Latn", "fra_Latn", "eng_Latn"], "added_language": ["fra_Latn", "eng_Latn", "fra_Latn"],
                  "interference": [0.1, 0.2, 0.3]}).to_csv(duplicate, index=False)
    cases = [
        (["--strategy", "linguistic", "--out", str(tmp_path)], r"--out '.*' is a directory"),
        (["--strategy", "balanced-data", "--num-groups", "1", "--counts", str(tmp_path / "none.json")],
         r"--counts '.*none\.json' does not exist"),
        (["--strategy", "interference", "--num-groups", "1", "--matrix", str(matrix)],
         r"has the value nan for \('fra_Latn', 'eng_Latn'\)"),
        (["--strategy", "interference", "--num-groups", "1", "--matrix", str(duplicate)],
         r"gives \('eng_Latn', 'fra_Latn'\) twice with different values \[0\.1, 0\.3\]"),
    ]
    for arguments, message in cases:
        result = run(GROUP + ["--languages", "eng_Latn,fra_Latn", *arguments])
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
        assert re.search(message, result.stderr), (arguments, result.stderr[-2000:])
