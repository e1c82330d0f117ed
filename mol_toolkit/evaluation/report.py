"""The evaluation's outputs: summary.json, the side-by-side tables of Tables 4, 5 and 12 (Markdown and CSV), the
plots, and `model-index` results in a MoL bundle's model card."""

import csv
import json
import math
from pathlib import Path

from .aggregate import FAMILY_ORDER, FAMILY_TITLES, resource_level


def fmt(value):
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"


DIFFERENT_MARK = " (own language set)"


def model_title(summary, name):
    """A model's name in every table: marked when the models of the comparison were scored on different subsets."""
    return name if summary["comparison"]["same_languages"] else name + DIFFERENT_MARK


def language_set_line(summary):
    comparison = summary["comparison"]
    line = (f"Language set: {comparison['language_set']} ({comparison['rule']}); {len(comparison['languages'])} "
            f"languages; every text cut at {comparison['max_length']} tokens for every model.")
    if not comparison["same_languages"]:
        line += (" WARNING: the models were scored on DIFFERENT subsets (--allow-different-languages); their averages "
                 "are not comparable.")
    return line


def overview_rows(summary):
    """One row per model: Table 4 (average and families) and Table 5 (low / high resource), with the number of
    languages and subsets each average is over."""
    header = ["model", "Average", *(FAMILY_TITLES[f] for f in FAMILY_ORDER), "Low Resource", "High Resource",
              "Languages", "Subsets"]
    rows = []
    for name, model in summary["models"].items():
        rows.append([model_title(summary, name), model["average"], *(model["families"].get(f) for f in FAMILY_ORDER),
                     model["resource"]["low"], model["resource"]["high"], str(len(model["languages"])),
                     str(len(model["scores"]))])
    return header, rows


def language_rows(summary):
    """One row per language (Table 12): its resource level and each model's score."""
    names = list(summary["models"])
    languages = sorted({lang for model in summary["models"].values() for lang in model["languages"]})
    header = ["language", "resource", *(model_title(summary, n) for n in names)]
    rows = [[lang, resource_level(lang) or "", *(summary["models"][n]["languages"].get(lang) for n in names)]
            for lang in languages]
    return header, rows


def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(v if isinstance(v, str) else fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_csv(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows([v if isinstance(v, str) else fmt(v) for v in row] for row in rows)


def write_report(summary, output_dir):
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")
    overview, languages = overview_rows(summary), language_rows(summary)
    write_csv(output_dir / "results.csv", *overview)
    write_csv(output_dir / "languages.csv", *languages)
    skipped = [f"- {model} / {task} / {subset}: {reason}" for model, entry in summary["models"].items()
               for task, subsets in entry["skipped"].items() for subset, reason in subsets.items()]
    text = [
        "# MTEB results", "", language_set_line(summary), "",
        "Scores x100: per language the mean over a family's datasets, then the mean over languages, then the mean "
        "of the three families (Mixture of Languages, Section 3.2); low/high resource by NLLB's levels (Table 5).",
        "", markdown_table(*overview), "", "## Per language (Table 12)", "", markdown_table(*languages), "",
        "## Language set", "", *subset_lines(summary), "",
        "## Routing", "", summary["routing_rule"], "",
    ]
    if skipped:
        text += ["## Skipped subsets", "", *skipped, ""]
    (output_dir / "results.md").write_text("\n".join(text), encoding="utf-8")
    plot_families(summary, output_dir / "families.png")
    plot_languages(summary, output_dir / "languages.png")


def subset_lines(summary):
    """Per task, the subsets scored (per model when they differ)."""
    comparison = summary["comparison"]
    if comparison["same_languages"]:
        return [f"- {task}: {', '.join(subsets) or 'none'}" for task, subsets in comparison["subsets"].items()]
    return [f"- {model} / {task}: {', '.join(subsets) or 'none'}"
            for model, tasks in comparison["subsets_by_model"].items() for task, subsets in tasks.items()]


def plot_title(summary):
    comparison = summary["comparison"]
    title = (f"language set {comparison['language_set']} ({len(comparison['languages'])} languages), max length "
             f"{comparison['max_length']}")
    return title if comparison["same_languages"] else title + ": DIFFERENT subsets per model"


def plot_families(summary, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(summary["models"])
    columns = ["average", *FAMILY_ORDER]
    values = np.array([[summary["models"][n]["average"] if c == "average" else summary["models"][n]["families"].get(c)
                        for c in columns] for n in names], dtype=float)
    fig, ax = plt.subplots(figsize=(2 + 1.6 * len(columns), 4))
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        ax.bar(np.arange(len(columns)) + i * width, np.nan_to_num(values[i]), width, label=name)
    ax.set_xticks(np.arange(len(columns)) + width * (len(names) - 1) / 2)
    ax.set_xticklabels(["Average", *(FAMILY_TITLES[c] for c in FAMILY_ORDER)])
    ax.set_ylabel("score (x100)")
    ax.set_title(plot_title(summary), fontsize="small")
    ax.legend([model_title(summary, n) for n in names], fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_languages(summary, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    header, rows = language_rows(summary)
    names = header[2:]
    values = np.array([[np.nan if v is None else v for v in row[2:]] for row in rows], dtype=float).reshape(len(rows), len(names))
    fig, ax = plt.subplots(figsize=(2 + 1.2 * len(names), 1 + 0.3 * max(len(rows), 1)))
    image = ax.imshow(values, aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize="small")
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([f"{row[0]} ({row[1]})" if row[1] else row[0] for row in rows], fontsize="small")
    ax.set_title(plot_title(summary), fontsize="small")
    fig.colorbar(image, ax=ax, label="score (x100)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def eval_results(model_summary):
    """huggingface_hub EvalResults: one per (task, subset) on its main metric, plus the papers' averages."""
    from huggingface_hub import EvalResult

    tasks = model_summary["settings"]["tasks"]
    results = []
    for row in model_summary["scores"]:
        results.append(EvalResult(
            task_type=row["family"], task_name=row["task"], dataset_type=tasks[row["task"]]["dataset"],
            dataset_name=f"MTEB {row['task']} ({row['subset']})", dataset_config=row["subset"],
            dataset_split=row["split"], dataset_revision=tasks[row["task"]]["dataset_revision"],
            metric_type=row["metric"], metric_value=round(100 * row["score"], 4),
        ))
    return results


def update_model_card(folder, model_summary):
    """Write the scores into the bundle's README.md as model-index results (kept ready for push_to_hub)."""
    from huggingface_hub import ModelCard, ModelCardData

    path = Path(folder) / "README.md"
    card = ModelCard.load(path) if path.is_file() else ModelCard.from_template(ModelCardData())
    card.data.model_name = card.data.model_name or Path(folder).resolve().name
    card.data.eval_results = eval_results(model_summary)
    card.save(path)
    return card
