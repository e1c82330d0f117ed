"""build_interference.py: the sweep resumes after SIGKILL with exactly the results of an uninterrupted sweep, shards
split the job list exactly once, the dataset folder round-trips through the loopback Hub, bad inputs fail early."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import PROJECT
from mol_toolkit.interference.sweep import jobs_for, parse_shard, run_id, select_jobs


LANGUAGES = "eng_Latn,rus_Cyrl,arb_Arab"  # three scripts: 3 monolingual and 3 pair runs
SCRIPT = [sys.executable, str(PROJECT / "build_interference.py")]


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("sweeps")


def sweep_command(out, *extra):
    return SCRIPT + ["--languages", LANGUAGES, "--max-steps", "10", "--checkpoint-every", "5", "--output-dir", str(out),
                     *extra]


def run_cli(command, **kwargs):
    env = dict(os.environ, PYTHONPATH=str(PROJECT), OMP_NUM_THREADS="1")
    return subprocess.run(command, cwd=PROJECT, env=env, capture_output=True, text=True, **kwargs)


def result_rows(out):
    """(run, evaluated language) -> loss, from every results file; fails on a duplicate row."""
    rows = {}
    for path in sorted((Path(out) / "results").glob("*.json")):
        for row in json.loads(path.read_text())["rows"]:
            key = (row["run"], row["eval_language"])
            assert key not in rows, f"duplicate result row {key}"
            rows[key] = row["loss"]
    return rows


@pytest.fixture(scope="module")
def uninterrupted(shared_cache):
    out = shared_cache / "uninterrupted"
    run = run_cli(sweep_command(out), timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return out


def test_job_list_and_shards_cover_every_run_once():
    codes = ["a", "b", "c", "d", "e"]
    jobs = jobs_for(codes)
    assert len(jobs) == 5 + 10 and len(set(jobs)) == len(jobs)
    for shards in (1, 2, 3, 7):
        for processes in (1, 2, 4):
            parts = [job for i in range(shards) for r in range(processes)
                     for job in select_jobs(jobs, (i, shards), (r, processes))]
            assert sorted(parts) == sorted(jobs), (shards, processes)
    assert parse_shard("2/4") == (2, 4)
    for bad in ("4/4", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(ValueError, match="--shard"):
            parse_shard(bad)


@pytest.mark.slow
def test_default_outputs(uninterrupted):
    rows = result_rows(uninterrupted)
    assert len(rows) == 3 + 3 * 2  # one row per model and evaluated language
    dataset = uninterrupted / "dataset"
    for name in ("README.md", "analysis/figure2_interference_matrix.png", "analysis/figure1_mean_loss.png"):
        assert (dataset / name).is_file(), name
    from datasets import load_dataset

    table = load_dataset(str(dataset), "interference", split="train").to_pandas()
    assert len(table) == 6
    eng_rus = table[(table.language == "eng_Latn") & (table.added_language == "rus_Cyrl")].iloc[0]
    mono, pair = rows[("eng_Latn", "eng_Latn")], rows[("eng_Latn+rus_Cyrl", "eng_Latn")]
    assert eng_rus.loss_mono == pytest.approx(mono) and eng_rus.loss_pair == pytest.approx(pair)
    assert eng_rus.interference == pytest.approx((mono - pair) / mono)
    timing = json.loads((uninterrupted / "sweep_timing.json").read_text())
    assert timing["tokenizations"] == 6  # train and devtest of each language, once


@pytest.mark.slow
def test_killed_sweep_resumes_with_exactly_the_uninterrupted_results(shared_cache, uninterrupted):
    out = shared_cache / "killed"
    env = dict(os.environ, PYTHONPATH=str(PROJECT), OMP_NUM_THREADS="1")
    # Checkpoints every 5 of the 10 steps: the kill lands after the first runs finished and inside a later one.
    process = subprocess.Popen(sweep_command(out), cwd=PROJECT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    checkpoints = out / "runs"
    while time.time() < deadline and process.poll() is None:
        finished = {p.stem for p in (out / "results").glob("*.json")}
        if finished and {p.parent.parent.name for p in checkpoints.glob("*/checkpoints/step-*[0-9]")} - finished:
            break
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished_before_kill = {run for run, _ in result_rows(out)}
    # Complete checkpoints only (a `.partial` one is ignored on resume).
    interrupted = {p.parent.parent.name for p in checkpoints.glob("*/checkpoints/step-*[0-9]")} - finished_before_kill
    assert finished_before_kill and interrupted and len(finished_before_kill) < 6, "the kill did not land mid-run"

    rerun = run_cli(sweep_command(out), timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    resumed, expected = result_rows(out), result_rows(uninterrupted)
    assert sorted(resumed) == sorted(expected)
    for key, loss in expected.items():
        assert resumed[key] == pytest.approx(loss, rel=1e-6), key
    for path in (out / "results").glob("*.json"):
        run = json.loads(path.read_text())["rows"][0]
        if run["run"] in finished_before_kill:
            assert run["resumed_from_step"] == 0  # finished before the kill, and not run again
        if run["run"] in interrupted:
            assert run["resumed_from_step"] >= 5  # continued from its checkpoint, not from scratch


@pytest.mark.slow
def test_two_shards_cover_the_sweep_exactly_once(shared_cache, uninterrupted):
    out = shared_cache / "sharded"
    first = run_cli(sweep_command(out, "--shard", "0/2"), timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "misses" in first.stdout and not (out / "dataset").exists()
    ran_first = {run for run, _ in result_rows(out)}
    assert ran_first == {run_id(job) for job in select_jobs(jobs_for(LANGUAGES.split(",")), (0, 2))}
    second = run_cli(sweep_command(out, "--shard", "1/2"), timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    rows = result_rows(out)
    assert sorted(rows) == sorted(result_rows(uninterrupted))
    shards = {json.loads(p.read_text())["rows"][0]["shard"].split(":")[0] for p in (out / "results").glob("*.json")}
    assert shards == {"0/2", "1/2"}
    assert (out / "dataset" / "README.md").is_file()


@pytest.mark.slow
def test_publish_round_trip_through_the_loopback_hub(uninterrupted, hub):
    from datasets import load_dataset

    from mol_toolkit.interference.matrix import matrix_from_dataset

    run = run_cli(SCRIPT + ["publish", "--repo", "mol-tests/interference-tiny", "--output-dir", str(uninterrupted)],
                  timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    local = matrix_from_dataset(str(uninterrupted / "dataset"))
    remote = load_dataset("mol-tests/interference-tiny", "interference", split="train").to_pandas()
    pivot = remote.pivot(index="language", columns="added_language", values="interference")
    pivot = pivot.reindex(index=local.index, columns=local.columns).fillna(0.0)
    pd.testing.assert_frame_equal(pivot, local, check_names=False, check_dtype=False)


# -- bad input, before any work


@pytest.mark.parametrize("arguments, message", [
    (["--languages", "eng_Latn,xyz_Latn"], r"Unknown language code 'xyz_Latn'"),
    (["--languages", "eng_Latn"], r"needs at least 2 languages"),
    (["--languages", "eng_Latn,ory_Orya"], r"holds no text for ory_Orya"),
    (["--languages", "eng_Latn,fra_Latn", "--shard", "2/2"], r"--shard '2/2'"),
    (["--preset", "huge"], r"Unknown preset 'huge'"),
    # Section 4's SONAR: its package cannot be installed beside the project's torch (measured; README).
    (["--languages", "eng_Latn,fra_Latn", "--similarity-encoder", "sonar"],
     r"needs the sonar-space package.*fairseq2n 0.8.1.*torch 2.9.1.*transformers ~= 4.57"),
])
def test_bad_input_fails_before_any_run(tmp_path, arguments, message):
    run = run_cli(SCRIPT + arguments + ["--output-dir", str(tmp_path / "sweep")], timeout=300)
    assert run.returncode == 2 and re.search(message, run.stderr), run.stderr[-2000:]
    assert not (tmp_path / "sweep" / "results").exists()


@pytest.mark.slow
def test_results_of_another_configuration_are_refused(shared_cache, uninterrupted):
    run = run_cli(SCRIPT + ["--languages", LANGUAGES, "--max-steps", "11", "--output-dir", str(uninterrupted)],
                  timeout=300)
    assert run.returncode == 2 and "different configuration (differs in ['max_steps'])" in run.stderr
    foreign = shared_cache / "foreign"
    (foreign / "results").mkdir(parents=True)
    (foreign / "results" / "eng_Latn.json").write_text(json.dumps({"fingerprint": "0123456789abcdef", "rows": []}))
    run = run_cli(sweep_command(foreign), timeout=300)
    assert run.returncode == 2 and "eng_Latn.json comes from a different configuration" in run.stderr


@pytest.mark.slow
def test_an_incomplete_matrix_is_published_only_with_the_flag(shared_cache, uninterrupted, hub):
    import shutil

    out = shared_cache / "incomplete"
    shutil.copytree(uninterrupted, out)
    shutil.rmtree(out / "dataset")
    (out / "results" / "eng_Latn+arb_Arab.json").unlink()
    run = run_cli(SCRIPT + ["analyse", "--languages", LANGUAGES, "--max-steps", "10", "--output-dir", str(out)])
    assert run.returncode == 0 and "misses 2 cells" in run.stdout and not (out / "dataset").exists()
    run = run_cli(SCRIPT + ["publish", "--repo", "mol-tests/incomplete", "--output-dir", str(out)])
    assert run.returncode == 2 and "no dataset folder" in run.stderr
    run = run_cli(SCRIPT + ["analyse", "--languages", LANGUAGES, "--max-steps", "10", "--output-dir", str(out),
                            "--allow-incomplete"])
    assert run.returncode == 0 and (out / "dataset" / "README.md").is_file()
    run = run_cli(SCRIPT + ["publish", "--repo", "mol-tests/incomplete", "--output-dir", str(out)])
    assert run.returncode == 2 and "eng_Latn" in run.stderr and "arb_Arab" in run.stderr
    run = run_cli(SCRIPT + ["publish", "--repo", "mol-tests/incomplete", "--output-dir", str(out), "--allow-incomplete"])
    assert run.returncode == 0, run.stderr[-2000:]
    assert "ncomplete" in (out / "dataset" / "README.md").read_text()


@pytest.mark.slow
def test_accelerate_launch_splits_the_runs_across_processes(shared_cache, uninterrupted):
    out = shared_cache / "launched"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    env = dict(os.environ, PYTHONPATH=str(PROJECT), OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="true")
    run = subprocess.run(launch + sweep_command(out)[1:], cwd=PROJECT, env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    labels = {path.stem: json.loads(path.read_text())["rows"][0]["shard"] for path in (out / "results").glob("*.json")}
    assert set(labels.values()) == {"0/1:0/2", "0/1:1/2"}  # both processes ran their own part
    expected = result_rows(uninterrupted)
    assert sorted(result_rows(out)) == sorted(expected)
    for key, loss in result_rows(out).items():
        assert loss == pytest.approx(expected[key], rel=1e-6), key
    assert (out / "dataset" / "README.md").is_file()
