"""`evaluate_mol.py mteb`: several models on the papers' mteb tasks, side by side, the papers' way.

Everything is checked before any model runs: the tasks, every model's source and languages, the requested languages,
and the results folder's settings. Then each (model, task) pair is evaluated by mteb unless its results exist, each
subset routed by its language, and the scores are aggregated as in the papers (`aggregate.py`) and reported
(`report.py`).

Output folder: `evaluation.json` (the settings of every model evaluated there), `mteb/` (mteb's own result files),
`routing/` (how every encode call was routed), `summary.json`, `results.md` / `results.csv` / `languages.csv` and
the plots.
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path

from .aggregate import aggregate, language_key
from .mteb_encoder import MoLMTEBEncoder, subset_languages
from .tasks import PRESETS, evaluation_split, plan_task, resolve_tasks, task_family


SETTINGS_FILE = "evaluation.json"


@dataclass
class ModelPlan:
    encoder: MoLMTEBEncoder
    plans: list
    settings: dict

    @property
    def label(self):
        return self.encoder.mteb_model_meta.name


def explicit_task_names(spec):
    """Task names the user named directly (not through a preset): a task among them with no known language is an
    error, while a preset's task is skipped with a reason."""
    items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    return {item if isinstance(item, str) else item.metadata.name for item in items if item not in PRESETS}


def resolve_requested_languages(languages, encoder):
    """--languages, checked against the model: FLORES codes of the model (or of the table, for an encoder that needs
    no routing)."""
    from mol_toolkit.languages import resolve_language_code

    if languages is None:
        return None
    codes = [c.strip() for c in languages.split(",") if c.strip()] if isinstance(languages, str) else list(languages)
    known = encoder.encoder.languages
    resolved = []
    for code in codes:
        flores = resolve_language_code(code, known)
        if flores is None:
            where = f"{encoder.encoder.name!r}, whose languages are {known}" if known else "the language table"
            raise ValueError(f"--languages has {code!r}, which is not in {where}.")
        resolved.append(flores)
    return resolved


def model_settings(encoder, languages, plans):
    import mteb

    return {
        "model": encoder.encoder.name,
        "revision": encoder.mteb_model_meta.revision,
        "pooling": "mean",
        "max_length": encoder.encoder.max_length,
        "dtype": str(encoder.encoder.dtype).removeprefix("torch."),
        "default_language": encoder.default_language,
        "routing": encoder.routing,
        "expert_routing": None if encoder.encoder.random_routing_seed is None else
        f"random (seed {encoder.encoder.random_routing_seed})",
        "languages": languages,
        "mteb_version": mteb.__version__,
        "tasks": {plan.name: {"dataset": plan.task.metadata.dataset.get("path"),
                              "dataset_revision": plan.task.metadata.dataset.get("revision"),
                              "subsets": sorted(plan.routes)} for plan in plans},
    }


def settings_conflict(old, new):
    """The keys whose values differ between two evaluations of one model (tasks compared where both have them)."""
    keys = [key for key in new if key != "tasks" and old.get(key) != new[key]]
    keys += [f"tasks.{name}" for name, value in new["tasks"].items()
             if name in old.get("tasks", {}) and old["tasks"][name] != value]
    return keys


def plan_models(models, tasks, output_dir, languages=None, default_language=None, **options):
    """Check everything and plan every (model, task) pair, before any model runs."""
    if not models:
        raise ValueError("No model given: pass --model PATH_OR_REPO (several times to compare models).")
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"--output-dir {str(output_dir)!r} is a file, not a folder.")
    explicit = explicit_task_names(tasks)
    tasks = resolve_tasks(tasks)
    previous = read_settings(output_dir)
    planned = []
    for name in models:
        encoder = MoLMTEBEncoder(name, default_language=default_language, **options)
        requested = resolve_requested_languages(languages, encoder)
        plans = []
        for task in tasks:
            plans.append(plan_task(task, encoder, requested, required=task.metadata.name in explicit))
        if not any(plan.routes for plan in plans):
            raise ValueError(
                f"None of the tasks {[p.name for p in plans]} has a subset that {name!r} can be evaluated on "
                f"(its languages: {encoder.encoder.languages or 'any'}; requested: {requested or 'all'})."
            )
        plan = ModelPlan(encoder=encoder, plans=plans, settings=model_settings(encoder, requested, plans))
        if plan.label in {p.label for p in planned}:
            raise ValueError(f"Two models are both named {plan.label!r} in the results: evaluate them apart.")
        old = previous.get(plan.label)
        if old is not None and settings_conflict(old, plan.settings):
            raise ValueError(
                f"{str(output_dir)!r} holds results of {plan.label!r} under other settings "
                f"({', '.join(settings_conflict(old, plan.settings))} differ): use another --output-dir, or the same "
                "settings."
            )
        planned.append(plan)
    return planned


def read_settings(output_dir):
    path = Path(output_dir) / SETTINGS_FILE
    if not path.is_file():
        if Path(output_dir).is_dir() and any(Path(output_dir).iterdir()):
            raise ValueError(f"--output-dir {str(output_dir)!r} is not empty and holds no {SETTINGS_FILE}: "
                             "it is not an evaluation folder; use a new or empty folder.")
        return {}
    return json.loads(path.read_text(encoding="utf-8"))["models"]


def write_json(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(value, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
    os.replace(partial, path)


def record_settings(output_dir, plan):
    models = read_settings(output_dir)
    old = models.get(plan.label, {})
    settings = {**plan.settings, "tasks": {**old.get("tasks", {}), **plan.settings["tasks"]}}
    write_json(Path(output_dir) / SETTINGS_FILE, {"models": {**models, plan.label: settings}})


def has_results(cache, plan, meta):
    """mteb has a result file for this task with every planned subset on the reported split."""
    result = cache.load_task_result(plan.name, meta)
    if result is None:
        return False
    split = evaluation_split(plan.task)
    done = {score["hf_subset"] for score in result.scores.get(split, [])}
    return set(plan.routes) <= done


def run_model(plan, output_dir, show_progress=True, log=print):
    """Evaluate one model's pending tasks through mteb; returns its score rows."""
    import mteb

    cache = mteb.ResultCache(Path(output_dir) / "mteb")
    meta = plan.encoder.mteb_model_meta
    rows = []
    for task_plan in plan.plans:
        if not task_plan.routes:
            log(f"{plan.label} / {task_plan.name}: skipped ({'; '.join(task_plan.skipped.values())})")
            continue
        if has_results(cache, task_plan, meta):
            log(f"{plan.label} / {task_plan.name}: results exist, not rerun")
        else:
            log(f"{plan.label} / {task_plan.name}: evaluating {len(task_plan.routes)} subsets")
            start = len(plan.encoder.routing_log)
            mteb.evaluate(plan.encoder, [task_plan.task], cache=cache, overwrite_strategy="only-missing",
                          show_progress_bar=show_progress, encode_kwargs={"batch_size": plan.encoder.encoder.batch_size})
            write_json(Path(output_dir) / "routing" / meta.model_name_as_path() / f"{task_plan.name}.json",
                       plan.encoder.routing_log[start:])
        rows += score_rows(cache.load_task_result(task_plan.name, meta), task_plan)
    return rows


def score_rows(result, task_plan):
    split = evaluation_split(task_plan.task)
    rows = []
    for score in result.scores.get(split, []):
        subset = score["hf_subset"]
        if subset not in task_plan.routes:
            continue
        codes = subset_languages(task_plan.task.metadata, subset)
        rows.append({
            "task": task_plan.name, "family": task_family(task_plan.task), "subset": subset, "split": split,
            "languages": [language_key(code) for code in codes], "routed_to": task_plan.routes[subset],
            "metric": task_plan.task.metadata.main_score, "score": score["main_score"],
        })
    return rows


def evaluate_models(models, tasks, output_dir, *, languages=None, default_language=None, update_card=False,
                    show_progress=True, log=print, **options):
    """Plan, evaluate and report; returns the summary written to output_dir/summary.json."""
    from .report import update_model_card, write_report

    plans = plan_models(models, tasks, output_dir, languages=languages, default_language=default_language,
                        show_progress_bar=show_progress, **options)
    if update_card:
        for plan in plans:
            if not (Path(plan.encoder.encoder.name) / "config.json").is_file():
                raise ValueError(f"--update-card writes into a local bundle; {plan.encoder.encoder.name!r} is not one.")
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    for plan in plans:  # first: a later run under other settings is refused even if this one is killed
        record_settings(output_dir, plan)
    summary = {"models": {}, "routing_rule": ROUTING_RULE}
    for plan in plans:
        rows = run_model(plan, output_dir, show_progress=show_progress, log=log)
        summary["models"][plan.label] = {
            "source": plan.encoder.encoder.name, "settings": plan.settings, "scores": rows,
            "skipped": {p.name: p.skipped for p in plan.plans if p.skipped}, **aggregate(rows),
        }
        if update_card:
            update_model_card(plan.encoder.encoder.name, summary["models"][plan.label])
    write_report(summary, Path(output_dir))
    return summary


ROUTING_RULE = (
    "Each subset's texts are routed by the subset's language (task_metadata.eval_langs[hf_subset], resolved to the "
    "model's FLORES codes). For a cross-lingual subset mteb encodes the first column, then the second, in two "
    "encode calls that carry the same subset: the first call of a (task, split, subset) is routed by the subset's "
    "first language, the second by its second language. routing/ records every call."
)
