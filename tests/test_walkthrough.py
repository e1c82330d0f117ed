"""The README's walkthrough, run as it is written (the block between its walkthrough:tiny markers), in a copy of
the repository's tracked files: data, sweep, publish (loopback Hub), grouping, dense baseline, LID probe, MoL, MoE,
evaluation and the router analysis, each step reading what the one before wrote."""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import PROJECT


def walkthrough_block():
    readme = (PROJECT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- walkthrough:tiny -->\s*```bash\n(.*?)```\s*<!-- /walkthrough:tiny -->", readme, re.S)
    assert match, "README.md has no walkthrough:tiny block"
    return match.group(1)


def tracked_copy(target):
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=PROJECT, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        source = PROJECT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


@pytest.mark.slow
def test_the_readme_walkthrough_runs_end_to_end_at_tiny_scale(tmp_path, hub):
    from test_evaluation import push_massive_intent

    push_massive_intent(hub)  # the task's dataset, at the revision mteb pins, on the loopback Hub
    project = tracked_copy(tmp_path / "project")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PATH=f"{os.path.dirname(sys.executable)}{os.pathsep}{env['PATH']}", HUB_ORG="mol-tests",
               OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    run = subprocess.run(["bash", "-euo", "pipefail", "-c", walkthrough_block()], cwd=project, env=env,
                         capture_output=True, text=True, timeout=1500)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]

    runs = project / "runs" / "walkthrough"
    manifest = json.loads((runs / "data" / "train" / "manifest.json").read_text())
    assert set(manifest["languages"]) == {"eng_Latn", "fra_Latn", "rus_Cyrl", "arb_Arab", "hin_Deva"}
    assert (runs / "data" / "parallel.jsonl").is_file()
    assert (runs / "sweep" / "dataset" / "README.md").is_file()
    groups = json.loads((runs / "groups.json").read_text())["language_groups"]
    assert len(groups) == 2 and sorted(sum(groups.values(), [])) == sorted(manifest["languages"])
    probe = (runs / "lid" / "lid_probe.yaml").read_text()
    assert "group_layers:" in probe and "base:" in probe
    mol_config = json.loads((runs / "mol" / "model" / "config.json").read_text())
    assert mol_config["language_groups"] == dict(sorted(groups.items()))  # the matrix's groups, trained
    assert json.loads((runs / "moe" / "model" / "config.json").read_text())["routing"] == "token"
    summary = json.loads((runs / "evaluation" / "summary.json").read_text())
    assert len(summary["models"]) == 3
    assert all(model["scores"] for model in summary["models"].values())
    assert json.loads((runs / "routing" / "routing.json").read_text())["num_experts"] == 2
