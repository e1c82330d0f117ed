"""build_interference.py partners / downstream (the Interference Matrix paper's Section 5) on a hand-made matrix,
and the pipeline end to end at the tiny scale: configs written, trained, evaluated, difference table."""

import csv
import json

import pytest

import build_interference
from conftest import PROJECT

CODES = ["eng_Latn", "fra_Latn", "deu_Latn", "rus_Cyrl", "arb_Arab", "hin_Deva"]
# I[row][column]: the interference `column` causes on `row` (0 is none, more negative is more).
ENG_ROW = {"fra_Latn": -0.01, "deu_Latn": -0.02, "rus_Cyrl": -0.05, "arb_Arab": -0.08, "hin_Deva": -0.10}


def hand_made_matrix(tmp_path):
    rows = []
    for a in CODES:
        for b in CODES:
            if a != b:
                value = ENG_ROW[b] if a == "eng_Latn" else -0.03 - 0.01 * CODES.index(b) - 0.001 * CODES.index(a)
                rows.append({"language": a, "added_language": b, "interference": value})
    path = tmp_path / "matrix.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["language", "added_language", "interference"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def partners(*arguments):
    return build_interference.main(["partners", *map(str, arguments)])


def test_partners_are_the_lowest_and_highest_interference_languages_of_the_targets_row(tmp_path, capsys):
    matrix = hand_made_matrix(tmp_path)
    out = tmp_path / "plan"
    assert partners("--matrix", matrix, "--target", "eng_Latn", "--count", 2, "--group-size", 2, "--scale", "paper",
                    "--output-dir", out) == 0
    plan = json.loads((out / "plan.json").read_text())
    assert [code for code, _ in plan["chosen"]["low"]] == ["fra_Latn", "deu_Latn"]
    assert [code for code, _ in plan["chosen"]["high"]] == ["hin_Deva", "arb_Arab"]
    assert [code for code, _ in plan["chosen"]["low_group"]] == ["fra_Latn", "deu_Latn"]
    assert plan["chosen"]["high"][0][1] == pytest.approx(-0.10)
    assert set(plan["models"]) == {"eng_Latn", "eng_Latn+fra_Latn", "eng_Latn+deu_Latn", "eng_Latn+hin_Deva",
                                   "eng_Latn+arb_Arab", "eng_Latn+low-group", "eng_Latn+high-group"}
    from mol_toolkit.run_config import load_run_config

    config = load_run_config(plan["models"]["eng_Latn+high-group"]["config"])
    assert config.languages == ["eng_Latn", "hin_Deva", "arb_Arab"]
    assert (config.num_hidden_layers, config.max_sentences, config.max_steps, config.strategy, config.mixed_precision) \
        == (24, 20_000_000, 100_000, "fsdp", "bf16")  # Section 5.1
    assert "low: fra_Latn (-0.0100), deu_Latn (-0.0200)" in capsys.readouterr().out


def test_the_group_experiment_ranks_additions_by_their_mean_interference_on_the_group(tmp_path):
    matrix = hand_made_matrix(tmp_path)
    out = tmp_path / "plan"
    assert partners("--matrix", matrix, "--group", "fra_Latn,deu_Latn", "--count", 1, "--output-dir", out) == 0
    plan = json.loads((out / "plan.json").read_text())
    # For the group rows (fra, deu), column b costs -0.03 - 0.01 * index(b) - 0.001 * index(row): eng (index 0) is
    # the friendliest candidate and hin (index 5) the least friendly.
    assert plan["chosen"]["friendly"][0][0] == "eng_Latn" and plan["chosen"]["unfriendly"][0][0] == "hin_Deva"
    assert plan["chosen"]["friendly"][0][1] == pytest.approx(-0.03 - 0.0015)
    assert set(plan["models"]) == {"fra_Latn+deu_Latn", "fra_Latn+deu_Latn+eng_Latn", "fra_Latn+deu_Latn+hin_Deva"}


@pytest.mark.parametrize("arguments, message", [
    (["--target", "xyz_Latn"], "--target 'xyz_Latn' is not a language code the table knows"),
    (["--target", "jpn_Jpan"], "--target jpn_Jpan is not in the matrix"),
    (["--target", "eng_Latn", "--count", 3], "--count 3 needs 6 partners"),
    (["--target", "eng_Latn", "--count", 0], "--count must be an integer >= 1"),
    (["--target", "eng_Latn", "--count", 1], "--group-size 4 needs 8 partners"),
    (["--group", "fra_Latn,klingon"], "--group 'klingon' is not a language code"),
    (["--group", "fra_Latn,deu_Latn", "--count", 3], "--count 3 needs 6 candidates"),
    (["--target", "eng_Latn", "--group", "fra_Latn,deu_Latn"], "either --target CODE"),
])
def test_bad_partner_requests_are_refused(tmp_path, capsys, arguments, message):
    matrix = hand_made_matrix(tmp_path)
    assert partners("--matrix", matrix, *arguments, "--output-dir", tmp_path / "plan") == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "plan" / "plan.json").exists()


@pytest.mark.slow
def test_section5_end_to_end_at_the_tiny_scale(tmp_path, monkeypatch):
    """partners -> train every model -> evaluate_mol.py's evaluation -> the difference table."""
    from mol_toolkit.evaluation.run import evaluate_models
    from mol_toolkit.training.trainer import MLMTrainer
    from mol_toolkit.run_config import load_run_config
    from mteb_tasks import UDHRClassification

    monkeypatch.chdir(PROJECT)  # the tiny preset names the shipped sample relative to the project
    out = tmp_path / "plan"
    assert partners("--matrix", hand_made_matrix(tmp_path), "--target", "eng_Latn", "--count", 1, "--group-size", 2,
                    "--scale", "tiny", "--output-dir", out) == 0
    plan = json.loads((out / "plan.json").read_text())
    assert len(plan["models"]) == 5
    for name, info in plan["models"].items():
        config = load_run_config(info["config"], {"cache_dir": str(tmp_path / "cache")})
        MLMTrainer(config, show_progress=False).train()
    evaluation = tmp_path / "evaluation"
    summary = evaluate_models([info["model"] for info in plan["models"].values()], [UDHRClassification()],
                              evaluation, show_progress=False, log=lambda *_: None)
    assert build_interference.main(["downstream", "--output-dir", str(out), "--evaluation", str(evaluation)]) == 0
    rows = json.loads((out / "downstream.json").read_text())
    assert [(row["task"], row["language"]) for row in rows] == [("UDHRClassification", "eng_Latn")]
    (row,) = rows

    def english(model):
        entry = next(m for m in summary["models"].values() if m["source"] == plan["models"][model]["model"])
        return next(s["score"] for s in entry["scores"] if s["languages"] == ["eng_Latn"])

    assert row["alone"] == pytest.approx(english("eng_Latn"))
    assert row["eng_Latn+fra_Latn"] == pytest.approx(english("eng_Latn+fra_Latn"))
    assert row["delta"] == pytest.approx(english("eng_Latn+fra_Latn") - english("eng_Latn+hin_Deva"))
    assert row["delta_groups"] == pytest.approx(english("eng_Latn+low-group") - english("eng_Latn+high-group"))
    table = (out / "downstream.md").read_text()
    assert "| task | language | alone |" in table and "delta" in table
    with pytest.raises(ValueError, match="holds no summary.json"):
        build_interference.downstream(type("Args", (), {"output_dir": str(out), "evaluation": str(tmp_path)})())


@pytest.mark.parametrize("arguments", [["--target", "eng_Latn"], ["--group", "eng_Latn,fra_Latn"]])
def test_a_matrix_cell_without_a_value_is_an_error_not_dropped(tmp_path, capsys, arguments):
    matrix = hand_made_matrix(tmp_path)
    lines = matrix.read_text().splitlines()
    matrix.write_text("\n".join(line for line in lines if not line.startswith("eng_Latn,rus_Cyrl,")) + "\n")
    out = tmp_path / "plan"
    assert partners("--matrix", matrix, *arguments, "--count", 1, "--output-dir", out) == 2
    assert "I[eng_Latn][rus_Cyrl] = nan" in capsys.readouterr().err
    assert not (out / "plan.json").exists()
