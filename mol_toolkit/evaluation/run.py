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
from dataclasses import dataclass
from pathlib import Path

from mol_toolkit.files import write_json

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


def resolve_language_set(languages, encoders):
    """--languages -> (name, FLORES codes): a named set (mol-30, mol-90, table12, interference-83) or codes in any
    form the language table resolves (checked against the table, not a model: which model knows them is checked by
    `check_language_set`)."""
    from mol_toolkit.languages import LANGUAGE_SETS, resolve_language_code

    if isinstance(languages, str) and languages.strip() in LANGUAGE_SETS:
        return languages.strip(), list(LANGUAGE_SETS[languages.strip()])
    codes = [c.strip() for c in languages.split(",") if c.strip()] if isinstance(languages, str) else list(languages)
    if not codes:
        raise ValueError(f"--languages {languages!r} names no language: give a set {sorted(LANGUAGE_SETS)} or codes.")
    known = sorted({code for encoder in encoders for code in encoder.encoder.languages or []})
    resolved = []
    for code in codes:
        flores = (resolve_language_code(code, known) if known else None) or resolve_language_code(code)
        if flores is None:
            raise ValueError(f"--languages has {code!r}, which is not in the language table (a FLORES code such as "
                             f"fra_Latn, fra-Latn, fra, fr, or a set {sorted(LANGUAGE_SETS)}).")
        resolved.append(flores)
    return "requested", list(dict.fromkeys(resolved))


def check_language_set(codes, encoders, allow_different):
    """Every model that routes by language must know every requested language, unless each model may be scored on
    its own languages (--allow-different-languages)."""
    for encoder in encoders:
        known = encoder.encoder.languages
        if known is None or allow_different:
            continue
        unknown = [code for code in codes if code not in known]
        if unknown:
            raise ValueError(
                f"--languages has {unknown[0]!r}, which is not in {encoder.encoder.name!r}, whose languages are "
                f"{known}{f' ({len(unknown)} requested languages are missing)' if len(unknown) > 1 else ''}: "
                "drop them, or pass --allow-different-languages to score each model on the languages it knows "
                "(every table then marks it)."
            )


def default_language_set(task_spec, encoders):
    """The language set of a comparison no --languages restricts: the paper's Table 12 for its Table 11 tasks when
    every model covers it (the paper's comparison), else the subsets every model can be routed on."""
    from mol_toolkit.languages import TABLE_12

    items = [s.strip() for s in task_spec.split(",")] if isinstance(task_spec, str) else []
    if "mol-table11" in items and all(e.encoder.languages is None or set(TABLE_12) <= set(e.encoder.languages)
                                      for e in encoders):
        return "table12", list(TABLE_12)
    return "common", None


def common_max_length(encoders, max_length):
    """One maximum length for every model of a comparison: --max-length, else the shortest position table's."""
    length = max_length if max_length is not None else min(e.encoder.max_length for e in encoders)
    for encoder in encoders:
        encoder.set_max_length(length)
    return length


LANGUAGE_SET_RULES = {
    "common": "the (task, subset) pairs every model of the comparison can be routed on (a model without routing by "
              "language can be routed anywhere, so the MoL models decide)",
    "table12": "the Mixture of Languages paper's Table 12 (47 languages), the default for its Table 11 tasks when "
               "every model covers it; within it, the subsets every model can be routed on",
    "requested": "the languages given with --languages; within them, the subsets every model can be routed on",
}


def restrict_to_common_subsets(planned, allow_different):
    """Score every model on the same (task, subset) pairs: the subsets every model's plan keeps. Returns the
    comparison's subsets per task and whether all models share them."""
    names = [task_plan.name for task_plan in planned[0].plans]
    common = {}
    for index, name in enumerate(names):
        routes = [set(plan.plans[index].routes) for plan in planned]
        common[name] = sorted(set.intersection(*routes))
    same = all(sorted(plan.plans[index].routes) == common[name]
               for plan in planned for index, name in enumerate(names))
    if allow_different or same:
        return common, same
    if not any(common.values()):
        raise ValueError(
            f"The models {[p.label for p in planned]} share no subset they can all be scored on: evaluate them "
            "apart, or pass --allow-different-languages to score each model on the languages it knows."
        )
    for plan in planned:
        for index, name in enumerate(names):
            task_plan = plan.plans[index]
            for subset in sorted(set(task_plan.routes) - set(common[name])):
                lacking = [p.label for p in planned if subset not in p.plans[index].routes]
                task_plan.skipped[subset] = (f"not scored by every model of the comparison ({', '.join(lacking)} "
                                             "cannot be routed on it); pass --allow-different-languages to score "
                                             "each model on its own languages")
                del task_plan.routes[subset]
            task_plan.restrict()
        plan.settings = model_settings(plan.encoder, plan.settings["languages"], plan.plans)
    return common, True


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


# Settings that decide a score; the language set (which subsets are scored) does not, so one folder can hold a model
# evaluated alone and later in a comparison, its scores re-aggregated on the comparison's subsets.
NOT_SCORE_SETTINGS = ("tasks", "languages")


def settings_conflict(old, new):
    """The keys whose values differ between two evaluations of one model (tasks compared where both have them)."""
    keys = [key for key in new if key not in NOT_SCORE_SETTINGS and old.get(key) != new[key]]
    strip = lambda value: {k: v for k, v in value.items() if k != "subsets"}  # noqa: E731
    keys += [f"tasks.{name}" for name, value in new["tasks"].items()
             if name in old.get("tasks", {}) and strip(old["tasks"][name]) != strip(value)]
    return keys


def plan_models(models, tasks, output_dir, languages=None, default_language=None, allow_different_languages=False,
                max_length=None, **options):
    """Check everything and plan every (model, task) pair, before any model runs: one language set and one maximum
    length for every model (see `comparison` of the returned Comparison)."""
    if not models:
        raise ValueError("No model given: pass --model PATH_OR_REPO (several times to compare models).")
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"--output-dir {str(output_dir)!r} is a file, not a folder.")
    explicit = explicit_task_names(tasks)
    task_spec, tasks = tasks, resolve_tasks(tasks)
    previous = read_settings(output_dir)
    encoders = [MoLMTEBEncoder(name, default_language=default_language, **options) for name in models]
    length = common_max_length(encoders, max_length)
    if languages is not None:
        set_name, requested = resolve_language_set(languages, encoders)
        check_language_set(requested, encoders, allow_different_languages)
    else:
        set_name, requested = default_language_set(task_spec, encoders)
    planned = []
    for encoder in encoders:
        name = encoder.encoder.name
        plans = [plan_task(task, encoder, requested, required=task.metadata.name in explicit) for task in tasks]
        if not any(plan.routes for plan in plans):
            raise ValueError(
                f"None of the tasks {[p.name for p in plans]} has a subset that {name!r} can be evaluated on "
                f"(its languages: {encoder.encoder.languages or 'any'}; requested: {requested or 'all'})."
            )
        plan = ModelPlan(encoder=encoder, plans=plans, settings=model_settings(encoder, requested, plans))
        if plan.label in {p.label for p in planned}:
            raise ValueError(f"Two models are both named {plan.label!r} in the results: evaluate them apart.")
        planned.append(plan)
    subsets, same = restrict_to_common_subsets(planned, allow_different_languages)
    for plan in planned:
        old = previous.get(plan.label)
        if old is not None and settings_conflict(old, plan.settings):
            raise ValueError(
                f"{str(output_dir)!r} holds results of {plan.label!r} under other settings "
                f"({', '.join(settings_conflict(old, plan.settings))} differ): use another --output-dir, or the same "
                "settings."
            )
    comparison = comparison_summary(planned, set_name, requested, subsets, same, length)
    return Comparison(planned, comparison)


@dataclass
class Comparison:
    plans: list
    summary: dict

    def __iter__(self):
        return iter(self.plans)

    def __len__(self):
        return len(self.plans)

    def __getitem__(self, index):
        return self.plans[index]


def comparison_summary(planned, set_name, requested, subsets, same, max_length):
    """What summary.json, results.md and the plots state about the comparison: its language set, the subsets
    scored per task (per model when they differ) and the maximum length."""
    from .aggregate import language_key

    def languages_of(plan):
        return sorted({language_key(code) for task_plan in plan.plans for subset in task_plan.routes
                       for code in subset_languages(task_plan.task.metadata, subset)})

    summary = {
        "language_set": set_name,
        "rule": LANGUAGE_SET_RULES.get(set_name, f"the named language set {set_name}; within it, the subsets every "
                                                    "model can be routed on"),
        "requested_languages": requested,
        "same_languages": same,
        "max_length": max_length,
        "models": [plan.label for plan in planned],
        "languages": languages_of(planned[0]) if same else sorted({c for p in planned for c in languages_of(p)}),
        "subsets": {name: codes for name, codes in subsets.items()},
    }
    if not same:
        summary["subsets_by_model"] = {plan.label: {p.name: sorted(p.routes) for p in plan.plans} for plan in planned}
        summary["languages_by_model"] = {plan.label: languages_of(plan) for plan in planned}
    return summary


def read_settings(output_dir):
    path = Path(output_dir) / SETTINGS_FILE
    if not path.is_file():
        if Path(output_dir).is_dir() and any(Path(output_dir).iterdir()):
            raise ValueError(f"--output-dir {str(output_dir)!r} is not empty and holds no {SETTINGS_FILE}: "
                             "it is not an evaluation folder; use a new or empty folder.")
        return {}
    return json.loads(path.read_text(encoding="utf-8"))["models"]


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
                    allow_different_languages=False, show_progress=True, log=print, **options):
    """Plan, evaluate and report; returns the summary written to output_dir/summary.json. Every model is scored on
    the same (task, subset) pairs and cut at the same maximum length (summary["comparison"] says which), unless
    allow_different_languages lets each model keep the subsets it can be routed on."""
    from .report import update_model_card, write_report

    plans = plan_models(models, tasks, output_dir, languages=languages, default_language=default_language,
                        allow_different_languages=allow_different_languages, show_progress_bar=show_progress,
                        **options)
    if update_card:
        for plan in plans:
            if not (Path(plan.encoder.encoder.name) / "config.json").is_file():
                raise ValueError(f"--update-card writes into a local bundle; {plan.encoder.encoder.name!r} is not one.")
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    for plan in plans:  # first: a later run under other settings is refused even if this one is killed
        record_settings(output_dir, plan)
    summary = {"models": {}, "comparison": plans.summary, "routing_rule": ROUTING_RULE}
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
