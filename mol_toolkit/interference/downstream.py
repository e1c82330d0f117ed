"""The Interference Matrix paper's Section 5: does the matrix predict downstream drops?

`partners`: for a target language, the added languages the matrix says hurt it least and most (row `target` of I:
I[target][B] near 0 is low interference, very negative is high), the low- and high-interference groups of the
multilingual experiment (Table 2), and, for a group of languages, the additions friendliest and least friendly to
all of them (Table 3: the mean over the group of I[g][B]). It writes a run config per model of the experiment (the
target alone, with each partner, with each group, or the group with each addition) and `plan.json`.

`downstream_table`: from `evaluate_mol.py mteb`'s summary of those models, the target's scores per task in the
shape of the paper's Tables 1-3: alone, each low partner and their mean, each high partner and their mean, and
the high-minus-low difference (Delta = mean low - mean high: positive when the matrix predicted the drop).
"""

import json
import math
from pathlib import Path

import numpy as np


PLAN = "plan.json"
# The paper's Section 5 setting (24 blocks, 20M sentences per language, 100k steps, FSDP2, bf16) and a tiny variant
# on the shipped sample; both in configs/interference/.
SCALES = {"paper": "section5.yaml", "tiny": "section5_tiny.yaml"}


def read_matrix(source):
    """The interference matrix as a pandas frame (rows: affected language, columns: added language)."""
    from .matrix import matrix_from_dataset

    return matrix_from_dataset(source)


def check_code(code, matrix, what):
    from mol_toolkit.languages import language

    try:
        resolved = language(code).code
    except (KeyError, ValueError) as error:
        raise ValueError(f"{what} {code!r} is not a language code the table knows: {error}") from None
    if resolved not in matrix.index:
        raise ValueError(f"{what} {resolved} is not in the matrix; it covers {sorted(matrix.index)}.")
    return resolved


def check_finite(matrix, rows, what):
    """Every off-diagonal cell of `rows` is a finite number: a NaN (a missing run) or an infinity is an error naming
    the cells, never dropped in silence."""
    bad = [(a, b, matrix.at[a, b]) for a in rows for b in matrix.columns
           if b != a and not math.isfinite(float(matrix.at[a, b]))]
    if bad:
        cells = ", ".join(f"I[{a}][{b}] = {value}" for a, b, value in bad[:5]) + (" ..." if len(bad) > 5 else "")
        raise ValueError(f"The matrix has {len(bad)} cell(s) without a finite value for {what}: {cells}. A NaN is a "
                         "run the sweep did not finish: complete it (build_interference.py resumes), or choose another "
                         "target or group.")


def ranked_partners(matrix, target):
    """(code, I[target][code]) of every other language, from the least to the most interference."""
    check_finite(matrix, [target], f"the target {target}")
    row = matrix.loc[target].drop(target)
    return sorted(row.items(), key=lambda item: (-item[1], item[0]))


def partners(matrix, target, count=2, group_size=4):
    """{"low": [(code, I)...], "high": [...], "low_group": [...], "high_group": [...]} for `target`."""
    ranked = ranked_partners(matrix, target)
    for name, size in (("--count", count), ("--group-size", group_size)):
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {size!r}.")
        if 2 * size > len(ranked):
            raise ValueError(f"{name} {size} needs {2 * size} partners with values (that many low- and high-"
                             f"interference languages apart), but the matrix has {len(ranked)} for {target}: use at "
                             f"most {len(ranked) // 2}.")
    return {"low": ranked[:count], "high": ranked[::-1][:count],
            "low_group": ranked[:group_size], "high_group": ranked[::-1][:group_size]}


def additions(matrix, group, count=1):
    """For a group of languages: the candidates (every other language) friendliest and least friendly to it, by the
    mean over the group of I[g][candidate]. The paper's Table 3 adds one language at a time to the group."""
    candidates = [code for code in matrix.columns if code not in group]
    check_finite(matrix.loc[:, candidates], group, f"the group {list(group)}")
    scores = {code: float(np.mean([matrix.at[g, code] for g in group])) for code in candidates}
    ranked = sorted(scores.items(), key=lambda item: (-item[1], item[0]))
    if isinstance(count, bool) or not isinstance(count, int) or count < 1 or 2 * count > len(ranked):
        raise ValueError(f"--count {count!r} needs {2 * (count if isinstance(count, int) else 0)} candidates outside "
                         f"the group with values for all of it; the matrix has {len(ranked)}: use 1..{len(ranked) // 2}.")
    return {"friendly": ranked[:count], "unfriendly": ranked[::-1][:count]}


def experiment_models(target, chosen):
    """name -> (languages, role) of every model the target experiment trains."""
    models = {target: ([target], "alone")}
    for role in ("low", "high"):
        for code, _ in chosen[role]:
            models[f"{target}+{code}"] = ([target, code], role)
    for role in ("low_group", "high_group"):
        codes = [code for code, _ in chosen[role]]
        models[f"{target}+{role.replace('_', '-')}"] = ([target, *codes], role)
    return models


def group_models(group, chosen):
    models = {"+".join(group): (list(group), "alone")}
    for role in ("friendly", "unfriendly"):
        for code, _ in chosen[role]:
            models[f"{'+'.join(group)}+{code}"] = ([*group, code], role)
    return models


def write_configs(output_dir, models, scale, project):
    """One run config per model (`base:` the scale's preset) and plan.json; returns the plan."""
    out = Path(output_dir)
    (out / "configs").mkdir(parents=True, exist_ok=True)
    base = (Path(project) / "configs" / "interference" / SCALES[scale]).resolve()
    plan = {"scale": scale, "base": str(base), "models": {}}
    for name, (codes, role) in models.items():
        path = out / "configs" / f"{name}.yaml"
        run_dir = out / "runs" / name
        path.write_text(f"# Interference Matrix Section 5 ({scale}): {role}\nbase: {base}\nlanguages: {json.dumps(codes)}\n"
                        f"language_groups: single\ngroup_layers: dense\noutput_dir: {run_dir}\nrun_name: {name}\n",
                        encoding="utf-8")
        plan["models"][name] = {"languages": codes, "role": role, "config": str(path), "model": str(run_dir / "model")}
    return plan


def plan_experiment(matrix_source, output_dir, target=None, group=None, count=2, group_size=4, scale="tiny",
                    project="."):
    """Check, choose and write: the plan of a target experiment (Tables 1, 2) or of a group experiment (Table 3)."""
    if (target is None) == (group is None):
        raise ValueError("Give either --target CODE (Tables 1 and 2) or --group A,B,C,D (Table 3).")
    if scale not in SCALES:
        raise ValueError(f"--scale {scale!r} is unknown: use one of {sorted(SCALES)}.")
    out = Path(output_dir)
    if (out / PLAN).exists():
        raise ValueError(f"{out} already holds a plan ({PLAN}): use another --output-dir.")
    matrix = read_matrix(matrix_source)
    if target is not None:
        target = check_code(target, matrix, "--target")
        chosen = partners(matrix, target, count, group_size)
        models = experiment_models(target, chosen)
    else:
        codes = [check_code(code.strip(), matrix, "--group") for code in group.split(",") if code.strip()]
        if len(set(codes)) != len(codes) or len(codes) < 2:
            raise ValueError(f"--group needs at least two different languages, got {codes}.")
        chosen = additions(matrix, codes, count)
        models = group_models(codes, chosen)
    plan = write_configs(out, models, scale, project)
    plan.update({"matrix": str(matrix_source), "target": target, "group": None if group is None else codes,
                 "chosen": {role: [[code, value] for code, value in values] for role, values in chosen.items()}})
    (out / PLAN).write_text(json.dumps(plan, indent=2), encoding="utf-8")
    return plan


# -- the downstream table ------------------------------------------------------------------------------------------

def target_scores(summary, model_dir, languages):
    """task -> {language: score} of one model in an evaluate_mol.py summary (the subsets in those languages)."""
    entry = next((m for m in summary["models"].values() if Path(m["source"]).resolve() == Path(model_dir).resolve()),
                 None)
    if entry is None:
        return None
    scores = {}
    for row in entry["scores"]:
        if len(row["languages"]) == 1 and row["languages"][0] in languages:  # monolingual subsets of those languages
            scores.setdefault(row["task"], {}).setdefault(row["languages"][0], []).append(row["score"])
    return {task: {code: float(np.mean(values)) for code, values in by.items()} for task, by in scores.items()}


def downstream_table(plan, summary):
    """Rows of the paper's Tables 1-3: per task (and, for a group experiment, per group language), the score of each
    model of the plan on the evaluated language, the means per role, and Delta = mean(low) - mean(high)."""
    models = plan["models"]
    evaluated = plan["group"] if plan["group"] else [plan["target"]]
    per_model = {name: target_scores(summary, info["model"], evaluated) for name, info in models.items()}
    missing = [name for name, scores in per_model.items() if scores is None]
    if missing:
        raise ValueError(f"The evaluation summary has no results for {missing}: evaluate every model of the plan "
                         "(evaluate_mol.py mteb --model ... for each, into one --output-dir).")
    low_role, high_role = ("friendly", "unfriendly") if plan["group"] else ("low", "high")
    tasks = sorted({task for scores in per_model.values() for task in scores})
    rows = []
    for task in tasks:
        for language in evaluated:
            def score(name):
                return per_model[name].get(task, {}).get(language)

            row = {"task": task, "language": language, "alone": score(next(n for n, i in models.items()
                                                                          if i["role"] == "alone"))}
            for role in (low_role, high_role, "low_group", "high_group"):
                names = [n for n, i in models.items() if i["role"] == role]
                values = [score(n) for n in names]
                row.update({n: v for n, v in zip(names, values)})
                if names and all(v is not None for v in values):
                    row[f"mean_{role}"] = float(np.mean(values))
            if f"mean_{low_role}" in row and f"mean_{high_role}" in row:
                row["delta"] = row[f"mean_{low_role}"] - row[f"mean_{high_role}"]
            if "mean_low_group" in row and "mean_high_group" in row:
                row["delta_groups"] = row["mean_low_group"] - row["mean_high_group"]
            rows.append(row)
    return rows


def write_downstream_table(plan_dir, evaluation_dir):
    """downstream.json, downstream.csv and downstream.md in the plan's folder."""
    import csv

    plan_dir = Path(plan_dir)
    if not (plan_dir / PLAN).is_file():
        raise ValueError(f"{plan_dir} holds no {PLAN}: run `build_interference.py partners` first.")
    summary_path = Path(evaluation_dir) / "summary.json"
    if not summary_path.is_file():
        raise ValueError(f"{evaluation_dir} holds no summary.json: run evaluate_mol.py mteb with --output-dir there.")
    plan = json.loads((plan_dir / PLAN).read_text(encoding="utf-8"))
    rows = downstream_table(plan, json.loads(summary_path.read_text(encoding="utf-8")))
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(plan_dir / "downstream.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(f"{row[c]:.2f}" if isinstance(row.get(c), float) else str(row.get(c, ""))
                                       for c in columns) + " |")
    what = ("Delta = mean(friendly additions) - mean(unfriendly additions)" if plan["group"] else
            "Delta = mean(low-interference partners) - mean(high-interference partners); delta_groups: the same for "
            "the groups")
    (plan_dir / "downstream.md").write_text(f"Scores on the evaluated language(s) ({what}; positive: the matrix "
                                            "predicted the drop).\n\n" + "\n".join(lines) + "\n", encoding="utf-8")
    (plan_dir / "downstream.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")
    return rows
