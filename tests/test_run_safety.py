"""A finished run is never destroyed or misreported by a resume: `--resume` with `--overwrite` is refused, and a
resume with fewer steps than the run has trained is refused before anything in the folder changes."""

import hashlib

import pytest

from conftest import PROJECT
from mol_toolkit.training.run_folder import RunFolderError
from mol_toolkit.training.trainer import MLMTrainer
from mol_toolkit.run_config import load_run_config

TINY = PROJECT / "configs" / "tiny_udhr.yaml"


def tiny(tmp_path, **overrides):
    return load_run_config(TINY, {"output_dir": str(tmp_path / "run"), "cache_dir": str(tmp_path / "cache"),
                                  "trackers": [], "max_steps": 4, "checkpoint_every": 2, "eval_every": 0,
                                  "language_identifier": False, "export": False, **overrides})


def digests(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name not in ("run.lock", "run.lock.json")}


def test_resume_with_overwrite_is_refused():
    with pytest.raises(ValueError, match=r"resume='latest' and overwrite=true contradict each other"):
        load_run_config(TINY, {"resume": "latest", "overwrite": True})


def test_resuming_a_finished_run_with_fewer_steps_is_refused_and_changes_nothing(tmp_path):
    MLMTrainer(tiny(tmp_path), show_progress=False).train()
    before = digests(tmp_path / "run")
    assert "results.json" in before
    with pytest.raises(RunFolderError, match=r"trained to step 4; resuming it with max_steps=2 cannot undo steps"):
        MLMTrainer(tiny(tmp_path, max_steps=2, resume="latest"), show_progress=False)
    assert digests(tmp_path / "run") == before


@pytest.mark.parametrize("languages", [{"eng_Latn", "fra_Latn"}, frozenset({"eng_Latn"}), {"eng_Latn": 0, "fra_Latn": 1}])
def test_languages_without_an_order_are_refused(languages):
    import torch
    from conftest import tiny_config_kwargs

    from configuration_mol import MoLConfig
    from modeling_mol import MoLModel

    model = MoLModel(MoLConfig(**tiny_config_kwargs())).eval()
    ids = torch.tensor([[0, 5, 6, 2], [0, 7, 8, 2]])
    with pytest.raises(ValueError, match=r"`languages` must be one code or a list with one code per sentence"):
        model(input_ids=ids, attention_mask=torch.ones_like(ids), languages=languages)
    assert model(input_ids=ids, attention_mask=torch.ones_like(ids), languages=("eng_Latn", "fra_Latn")) is not None


@pytest.mark.parametrize("key, value, owner", [("shard_group_size", 2, "hsdp"), ("group_ranks", {"germanic": 1}, "group_parallel")])
def test_options_of_another_strategy_are_refused_not_ignored(tmp_path, key, value, owner):
    with pytest.raises(ValueError, match=rf"{key}=.* is an option of strategy '{owner}', and this run's strategy is "
                                         r"'none'"):
        MLMTrainer(tiny(tmp_path, **{key: value}), show_progress=False)
    assert not (tmp_path / "run").exists()
