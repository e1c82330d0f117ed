"""The papers' mteb task lists, and each task restricted to the languages a model knows.

- `mol-table11`: the Mixture of Languages paper's Table 11 (five classification tasks, XNLI and XNLIV2, STS17);
- `interference-massive`: the Interference Matrix paper's Section 5 (MassiveIntent and MassiveScenario).
"""

import copy
import difflib
from dataclasses import dataclass, field


PRESETS = {
    "mol-table11": [
        "MassiveIntentClassification", "MassiveScenarioClassification", "MTOPDomainClassification",
        "MTOPIntentClassification", "AmazonCounterfactualClassification", "XNLI", "XNLIV2", "STS17",
    ],
    "interference-massive": ["MassiveIntentClassification", "MassiveScenarioClassification"],
}
# Section 3.2's three task families, by mteb task type; each reports the task's main score (accuracy, AP, Spearman).
FAMILIES = {"Classification": "classification", "PairClassification": "pair_classification", "STS": "sts"}


def task_family(task):
    family = FAMILIES.get(task.metadata.type)
    if family is None:
        raise ValueError(
            f"Task {task.metadata.name} is of type {task.metadata.type!r}; the papers' aggregation covers "
            f"{sorted(FAMILIES)} tasks only."
        )
    return family


def evaluation_split(task):
    """The split the papers report: test where the task has one, else its first evaluation split."""
    splits = task.metadata.eval_splits
    return "test" if "test" in splits else splits[0]


def resolve_tasks(spec):
    """Task objects from preset names, mteb task names (a list or a comma-separated string), or task objects."""
    import mteb

    items = [s.strip() for s in spec.split(",") if s.strip()] if isinstance(spec, str) else list(spec or [])
    if not items:
        raise ValueError(f"No tasks given: name a preset {sorted(PRESETS)} or mteb task names.")
    names = []
    for item in items:
        names += PRESETS.get(item, [item]) if isinstance(item, str) else [item]
    tasks, known = [], None
    for name in names:
        if not isinstance(name, str):
            tasks.append(name)
            continue
        try:
            tasks.append(mteb.get_task(name))
        except KeyError:
            known = known or [task.metadata.name for task in mteb.get_tasks()]
            close = difflib.get_close_matches(name, known + list(PRESETS), n=3)
            raise ValueError(
                f"Unknown task or preset {name!r}: use a preset {sorted(PRESETS)} or an mteb task name"
                + (f" (did you mean {close}?)" if close else "") + "."
            ) from None
    for task in tasks:
        task_family(task)
    seen = [task.metadata.name for task in tasks]
    repeated = sorted({name for name in seen if seen.count(name) > 1})
    if repeated:
        raise ValueError(f"Tasks {repeated} are listed more than once.")
    return tasks


@dataclass
class TaskPlan:
    """One task for one model: the subsets to evaluate (each with its routing) and the ones skipped, with why."""

    task: object
    routes: dict
    skipped: dict = field(default_factory=dict)

    @property
    def name(self):
        return self.task.metadata.name

    def restrict(self):
        """Make the task evaluate only the kept subsets (a copy of the original: the same task object may be
        planned for several models)."""
        self.original = getattr(self, "original", self.task)
        if self.routes:
            self.task = copy.copy(self.original).filter_languages(None, hf_subsets=list(self.routes))


def plan_task(task, encoder, languages=None, required=False):
    """Restrict `task` to the subsets `encoder` can route (and, when given, to subsets whose every language is in
    `languages`, FLORES codes). Returns a TaskPlan whose task evaluates only the kept subsets; `required`: a task
    with no subset the model knows is an error rather than a plan that skips it."""
    from mol_toolkit.languages import resolve_language_code

    from .mteb_encoder import subset_languages

    routes, skipped = encoder.plan(task)
    if required and not routes:
        raise no_language_error(task, encoder)
    if languages is not None:
        for subset in list(routes):
            codes = subset_languages(task.metadata, subset)
            flores = [resolve_language_code(code, languages, macrolanguage="standard") for code in codes]
            if None in flores:
                skipped[subset] = f"not in the requested languages {languages}"
                del routes[subset]
    plan = TaskPlan(task=task, routes=routes, skipped=skipped)
    plan.restrict()
    return plan


def no_language_error(task, encoder):
    from .mteb_encoder import subset_languages

    task_languages = sorted({code for subset in task.hf_subsets for code in subset_languages(task.metadata, subset)})
    return ValueError(
        f"Task {task.metadata.name} has no language that {encoder.encoder.name!r} knows: the task's languages are "
        f"{task_languages}, the model's are {encoder.encoder.languages}."
    )
