"""fp16 mixed precision, the Interference Matrix paper's Section 3.1 setting: fp16 compute with dynamic loss scaling
in single-process runs; the scaler's state travels with the checkpoint, so a resumed run is bitwise the
uninterrupted one; sharded strategies are refused."""

import json

import pytest

from conftest import PROJECT
from mol_toolkit.training.trainer import MLMTrainer
from mol_toolkit.run_config import load_run_config

TINY = PROJECT / "configs" / "tiny_udhr.yaml"


def fp16(tmp_path, name, **overrides):
    return load_run_config(TINY, {"output_dir": str(tmp_path / name), "cache_dir": str(tmp_path / "cache"),
                                  "trackers": [], "max_steps": 4, "checkpoint_every": 2, "eval_every": 0,
                                  "log_every": 1, "language_identifier": False, "export": False,
                                  "group_layers": "dense", "mixed_precision": "fp16", **overrides})


def losses(folder):
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row["train/loss"] for row in rows if "train/loss" in row}


def test_fp16_trains_with_loss_scaling_and_resumes_bitwise(tmp_path):
    whole = MLMTrainer(fp16(tmp_path, "whole"), show_progress=False)
    assert whole.scaler is not None and whole.scaler.is_enabled()
    whole.train()
    [step2] = (tmp_path / "whole").glob("checkpoints/step-*2")
    state = json.loads((step2 / "trainer_state.json").read_text())
    assert state["grad_scaler"]["scale"] > 0
    MLMTrainer(fp16(tmp_path, "resumed", resume=str(step2)), show_progress=False).train()
    expected, resumed = losses(tmp_path / "whole"), losses(tmp_path / "resumed")
    assert set(expected) == {1, 2, 3, 4} and all(value == value for value in expected.values())
    assert {3: resumed[3], 4: resumed[4]} == {3: expected[3], 4: expected[4]}


def test_fp16_with_a_sharded_strategy_is_refused():
    with pytest.raises(ValueError, match=r"mixed_precision=fp16.*strategy='fsdp'.*use bf16"):
        load_run_config(TINY, {"mixed_precision": "fp16", "strategy": "fsdp"})


def test_the_interference_paper_preset_computes_in_fp16():
    text = (PROJECT / "configs" / "interference" / "paper.yaml").read_text()
    assert "mixed_precision: fp16" in text
