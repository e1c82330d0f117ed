"""Every paper-sized preset on the meta device, its parameter count against the papers' and against the
architecture's own arithmetic; the language swaps of Table 1 / Table 14 (run configs and group_languages.py)."""

import json
import subprocess
import sys

import pytest

from conftest import PROJECT
from mol_toolkit.training.trainer import dry_run
from mol_toolkit.run_config import load_run_config

CONFIGS = PROJECT / "configs"
H, F, V, LAYERS, POSITIONS = 1024, 4096, 250002, 24, 256 + 2  # XLM-R large; max_length 256 + pad_token_id + 1
BLOCK = 4 * (H * H + H) + 2 * H + (H * F + F) + (F * H + H) + 2 * H  # one weight copy of one block
DENSE = (V * H + POSITIONS * H + H + 2 * H) + LAYERS * BLOCK + (H * H + H + 2 * H + V)  # embeddings, blocks, MLM head
STACKED, LID, INTERLEAVED = 12, 15, 12  # group-specific blocks of each layout

# preset -> (copies of each group block, group blocks, gates per routed block, the papers' figure, what they call it)
PRESETS = {
    "dense30": (1, 0, 0, 560e6, "dense 560M"),
    "dense90": (1, 0, 0, 560e6, "dense 560M"),
    "mol30_stacked": (5, STACKED, 0, 1.0e9, "MoL 30 stacked, about 1B"),
    "mol30_interleaved": (5, INTERLEAVED, 0, 1.0e9, "MoL 30 interleaved, 12-12 as stacked"),
    "mol30_lid": (5, LID, 0, None, "MoL 30 LID 6-9-9: 'more parameters' than the 12-12 layouts, no figure given"),
    "mol90_lid": (10, LID, 0, 2.0e9, "MoL 90 LID, 2B"),
    "mol90_stacked": (10, STACKED, 0, 2.0e9, "MoL 90 stacked"),
    "language_specific30": (30, STACKED, 0, 5.0e9, "the topline, 5B"),
    "moe30_token": (5, STACKED, 5, 1.0e9, "MoE, MoL's total parameters"),
    "moe30_sentence": (5, STACKED, 5, 1.0e9, "MoE, MoL's total parameters"),
    **{f"grouping/{path.stem}": (5, STACKED, 0, 1.0e9, "Table 2 grouping, 1B") for path in (CONFIGS / "grouping").glob("*.yaml")},
    **{f"swaps/{path.stem}": (5, STACKED, 0, 1.0e9, "Table 1 / 14 swap, 1B") for path in (CONFIGS / "swaps").glob("*.yaml")},
}


def test_every_paper_preset_is_covered():
    shipped = {str(p.relative_to(CONFIGS).with_suffix("")) for p in CONFIGS.rglob("*.yaml")
               if p.parent.name not in ("accelerate", "interference", "walkthrough")}
    assert shipped - {"tiny_udhr", "group_parallel_tiny"} == set(PRESETS)  # the CPU demos are no paper presets


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_paper_preset_parameter_count_on_the_meta_device(name, tmp_path, monkeypatch):
    copies, group_blocks, gates, paper, _ = PRESETS[name]
    overrides = {}
    if name.startswith("grouping/"):
        # The groups file is written by group_languages.py from FLORES and the encoders (see the config's comment);
        # the count depends only on the number of groups, so five groups of the mol-30 languages stand in for it.
        from mol_toolkit.languages import PAPER_GROUPS

        groups = tmp_path / "groups.json"
        groups.write_text(json.dumps({"language_groups": PAPER_GROUPS["mol-30"]}))
        overrides["language_groups"] = str(groups)
    monkeypatch.chdir(PROJECT)
    plan = dry_run(load_run_config(CONFIGS / f"{name}.yaml", overrides))
    expected = DENSE + (copies - 1) * group_blocks * BLOCK + gates * group_blocks * H
    assert plan["parameters"] == expected
    assert plan["active_parameters"] == DENSE + gates * group_blocks * H  # one copy of every block per token
    if paper is not None:
        assert 0.85 * paper < plan["parameters"] < 1.25 * paper, (name, plan["parameters"], paper)
    else:
        assert plan["parameters"] > DENSE + 4 * STACKED * BLOCK


def test_the_topline_and_the_90_language_model_match_the_papers_figures():
    assert DENSE == 559_880_338  # XLM-R large with 256 positions: the papers' 560M
    plans = {name: dry_run(load_run_config(CONFIGS / f"{name}.yaml")) for name in ("language_specific30", "mol90_lid")}
    assert 4.9e9 < plans["language_specific30"]["parameters"] < 5.0e9 and plans["language_specific30"]["group_layers"] == \
        [0, 1, 2, 3, 4, 5, 18, 19, 20, 21, 22, 23]
    # The paper's "2B" is 2.26B by the architecture's arithmetic (15 group blocks x 10 copies).
    assert plans["mol90_lid"]["parameters"] == 2_260_370_578


# -- swaps ----------------------------------------------------------------------------------------------------------

def test_a_swap_config_exchanges_the_two_languages_between_the_papers_groups(monkeypatch):
    from mol_toolkit.languages import PAPER_GROUPS

    monkeypatch.chdir(PROJECT)
    plan = dry_run(load_run_config(CONFIGS / "swaps" / "table1_subgroup_spa_deu.yaml"))
    paper = PAPER_GROUPS["mol-30"]
    romance = next(name for name, codes in paper.items() if "spa_Latn" in codes)
    germanic = next(name for name, codes in paper.items() if "deu_Latn" in codes)
    assert plan["language_groups"][romance] == [c if c != "spa_Latn" else "deu_Latn" for c in paper[romance]]
    assert plan["language_groups"][germanic] == [c if c != "deu_Latn" else "spa_Latn" for c in paper[germanic]]
    untouched = [name for name in paper if name not in (romance, germanic)]
    assert all(plan["language_groups"][name] == paper[name] for name in untouched)


def run_group_languages(*arguments):
    return subprocess.run([sys.executable, str(PROJECT / "group_languages.py"), *map(str, arguments)],
                          capture_output=True, text=True, cwd=PROJECT)


def test_group_languages_swap_writes_the_swapped_grouping(tmp_path):
    out = tmp_path / "swapped.json"
    result = run_group_languages("--strategy", "paper", "--languages", "mol-30", "--swap", "spa_Latn:deu_Latn",
                                 "--swap", "heb_Hebr:dan_Latn", "--out", out)
    assert result.returncode == 0, result.stderr
    written = json.loads(out.read_text())
    groups = written["language_groups"]
    where = {code: name for name, codes in groups.items() for code in codes}
    together = lambda a, b: where[a] == where[b]  # noqa: E731
    assert together("spa_Latn", "eng_Latn") and together("deu_Latn", "fra_Latn")  # Germanic <-> Romance
    assert together("heb_Hebr", "afr_Latn") and together("dan_Latn", "arb_Arab")  # Afro-Asiatic <-> Germanic
    assert not together("spa_Latn", "fra_Latn") and not together("heb_Hebr", "arb_Arab")
    assert written["report"]["swaps"] == ["spa_Latn:deu_Latn", "heb_Hebr:dan_Latn"]
    assert sorted(len(codes) for codes in groups.values()) == [6] * 5


@pytest.mark.parametrize("swap, message", [
    ("spa_Latn:xyz_Latn", "xyz_Latn"),
    ("spa_Latn", "two language codes joined by ':'"),
    ("spa_Latn:ita_Latn", "both are in group"),
    ("spa_Latn:spa_Latn", "names spa_Latn twice"),
    ("spa_Latn:jpn_Jpan", "in no group"),
])
def test_bad_swaps_are_refused(swap, message):
    result = run_group_languages("--strategy", "paper", "--languages", "mol-30", "--swap", swap)
    assert result.returncode == 2 and message in result.stderr, result.stderr


@pytest.mark.parametrize("overrides, message", [
    ({"language_swaps": ["spa_Latn:ita_Latn"]}, "both are in group"),
    ({"language_swaps": "spa_Latn:deu_Latn"}, "language_swaps must be a list of swaps"),
    ({"language_swaps": ["spa_Latn:deu_Latn"], "group_layers": "dense"}, "this run has none"),
])
def test_bad_swaps_in_a_run_config_are_refused_before_any_work(overrides, message, monkeypatch):
    monkeypatch.chdir(PROJECT)
    with pytest.raises(ValueError, match=message):
        dry_run(load_run_config(CONFIGS / "mol30_stacked.yaml", overrides))


# -- the papers' global batch, pinned on any number of processes ------------------------------------------------------

GLOBAL_BATCH = {"mol30_lid": 38400, "mol30_stacked": 38400, "dense30": 38400, "moe30_token": 38400,
                "language_specific30": 38400, "swaps/table1_script_heb_dan": 38400,
                "mol90_lid": 153600, "mol90_stacked": 153600, "dense90": 153600}


@pytest.mark.parametrize("name", sorted(GLOBAL_BATCH))
@pytest.mark.parametrize("processes", [8, 32, 128])
def test_paper_presets_pin_the_global_batch_on_any_cluster(name, processes, monkeypatch):
    monkeypatch.chdir(PROJECT)
    plan = dry_run(load_run_config(CONFIGS / f"{name}.yaml"), world_size=processes)
    assert plan["global_batch"] == GLOBAL_BATCH[name] and plan["global_batch_pinned"]
    assert plan["sentences_per_device"] <= 1200  # the paper's per-GPU batch, never more
    assert plan["sentences_per_device"] * processes * plan["gradient_accumulation_steps"] == GLOBAL_BATCH[name]
    if processes * 1200 == GLOBAL_BATCH[name]:  # the paper's own cluster: 1200 per GPU, no accumulation
        assert (plan["sentences_per_device"], plan["gradient_accumulation_steps"]) == (1200, 1)


def test_a_world_size_that_cannot_make_the_global_batch_is_refused_naming_the_sizes_that_can():
    from mol_toolkit.training.trainer import batch_plan

    config = load_run_config(CONFIGS / "mol30_lid.yaml")
    with pytest.raises(ValueError, match=r"global_batch_size=38400 cannot be split evenly over 7 processes.*\[.*6, 8"):
        batch_plan(config, 7)
    with pytest.raises(ValueError, match="sentences_per_device=auto follows from global_batch_size"):
        load_run_config(CONFIGS / "mol30_lid.yaml", {"global_batch_size": None})


@pytest.mark.parametrize("processes", ["8", "32", "128"])
@pytest.mark.slow
def test_the_dry_run_prints_global_batch_steps_epochs_and_group_blocks(processes, tmp_path):
    result = subprocess.run([sys.executable, str(PROJECT / "train_mlm.py"), "--config", str(CONFIGS / "mol30_lid.yaml"),
                             "--dry-run"], cwd=PROJECT, capture_output=True, text=True, timeout=300,
                            env={**__import__("os").environ, "WORLD_SIZE": processes, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Global batch: 38400 sentences per step (pinned by the preset" in result.stdout
    assert f"x {processes} process(es)" in result.stdout and "26000 steps" in result.stdout
    assert "Epochs per language: unknown until the data is read (proportional sampling" in result.stdout
    assert ("Group-specific block indices (0 = the block next to the embeddings): "
            "[0, 1, 2, 3, 4, 5, 15, 16, 17, 18, 19, 20, 21, 22, 23]") in result.stdout


def test_the_dry_run_gives_epochs_per_language_from_prepared_counts(tmp_path, monkeypatch):
    monkeypatch.chdir(PROJECT)
    data = tmp_path / "nllb"
    data.mkdir()
    (data / "counts.json").write_text(json.dumps({"eng_Latn": 1000, "fra_Latn": 3000}))
    config = load_run_config(CONFIGS / "mol30_lid.yaml", {"languages": ["eng_Latn", "fra_Latn"], "language_groups":
                             "single", "train_data": str(data / "{lang}.jsonl"), "max_steps": 10})
    epochs = dry_run(config, world_size=32)["epochs"]
    assert epochs["known"] and epochs["per_language"] == {"eng_Latn": pytest.approx(10 * 38400 / 4000),
                                                          "fra_Latn": pytest.approx(10 * 38400 / 4000)}


def test_paper_presets_sample_proportionally_and_name_deduplication_a_choice():
    from mol_toolkit.run_config import KEYS, RunConfig

    assert RunConfig.__dataclass_fields__["sampling"].default == "proportional"  # a config that sets none
    assert "the project's choice" in KEYS["deduplicate"].metadata["help"]
    for path in [CONFIGS / "mol30_lid.yaml", CONFIGS / "interference" / "sweep_runs.yaml"]:
        text = path.read_text()
        if "deduplicate: true" in text:
            assert "project's choice" in text, path


def test_lm_head_layer_norm_is_excluded_from_weight_decay():
    from conftest import tiny_config_kwargs

    from configuration_mol import MoLConfig
    from modeling_mol import MoLForMaskedLM
    from mol_toolkit.training.trainer import excluded_from_weight_decay

    names = [name for name, _ in MoLForMaskedLM(MoLConfig(**tiny_config_kwargs())).named_parameters()]
    assert "lm_head.layer_norm.weight" in names and excluded_from_weight_decay("lm_head.layer_norm.weight")
    norms = [n for n in names if "norm" in n.lower() or n.endswith("bias")]
    assert norms and all(excluded_from_weight_decay(n) for n in norms)
    assert not any(excluded_from_weight_decay(n) for n in names if n not in norms)


def test_departures_are_labelled_in_the_presets_that_use_them():
    for path in (CONFIGS / "grouping").glob("*.yaml"):
        text = path.read_text()
        if "token-overlap" in text:
            assert "Jaccard" in text and "Departure" in text, path
        if "--balance dendrogram" in text:
            assert "rebalanced automatically" in text, path
    for name in ("table14_resource_nob_arb", "table1_resource_zsm_arb"):
        assert "both High" in (CONFIGS / "swaps" / f"{name}.yaml").read_text()
    from mol_toolkit.languages import language

    assert language("nob_Latn").resource == language("zsm_Latn").resource == language("arb_Arab").resource == "High"
