"""The papers' aggregation of mteb scores (Mixture of Languages, Section 3.2 and Tables 4, 5, 12).

From one score per (task, subset), on the task's main metric (accuracy, AP, Spearman), times 100:
1. per task and language: the mean over the task's subsets in that language (a cross-lingual subset such as STS17
   `en-de` counts for each of its languages);
2. per family (classification, pair classification, STS) and language: the mean over the family's tasks;
3. per family: the mean over languages; the average: the mean of the families;
4. per language (Table 12): the mean of its family scores; low / high resource (Table 5): the mean of the
   per-language scores of the languages the language table marks Low / High (NLLB's resource levels).
"""

from statistics import fmean

from mol_toolkit.languages import language_table, resolve_language_code


FAMILY_ORDER = ["classification", "pair_classification", "sts"]
FAMILY_TITLES = {"classification": "Classification", "pair_classification": "Pair Classification", "sts": "STS"}


def language_key(mteb_code):
    """The FLORES code a subset language is reported under (the same for every model), else the mteb code."""
    try:
        return resolve_language_code(mteb_code) or mteb_code
    except ValueError:
        return mteb_code


def resource_level(code):
    row = language_table().get(code)
    return row.resource if row else None


def aggregate(rows):
    """rows: dicts with task, family, subset, languages (report keys), score (0-1). Returns the model's summary."""
    by_task = {}
    for row in rows:
        for language in dict.fromkeys(row["languages"]):
            by_task.setdefault((row["family"], row["task"]), {}).setdefault(language, []).append(100 * row["score"])
    per_family_language = {}
    for (family, _), languages in by_task.items():
        for language, scores in languages.items():
            per_family_language.setdefault(family, {}).setdefault(language, []).append(fmean(scores))
    family_language = {family: {lang: fmean(v) for lang, v in langs.items()}
                       for family, langs in per_family_language.items()}
    families = {family: fmean(family_language[family].values())
                for family in FAMILY_ORDER if family in family_language}
    languages = sorted({lang for langs in family_language.values() for lang in langs})
    per_language = {lang: fmean([family_language[f][lang] for f in families if lang in family_language[f]])
                    for lang in languages}
    resource = {}
    for level in ("Low", "High"):
        scores = [score for lang, score in per_language.items() if resource_level(lang) == level]
        resource[level.lower()] = fmean(scores) if scores else None
    return {
        "average": fmean(families.values()) if families else None,
        "families": families,
        "tasks": {task: {lang: fmean(v) for lang, v in langs.items()} for (_, task), langs in by_task.items()},
        "family_languages": family_language,
        "languages": per_language,
        "resource": resource,
        "unrated_languages": [lang for lang in languages if resource_level(lang) not in ("Low", "High")],
    }
