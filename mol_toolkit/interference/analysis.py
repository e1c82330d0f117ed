"""The loss matrix L, the interference matrix I and their analyses (Interference Matrix paper, Sections 3.2-3.6, 4).

    L[A][A]  loss on A of the model trained on A alone (the monolingual model)
    L[A][B]  loss on A of the model trained on A and B
    I[A][B] = (L[A][A] - L[A][B]) / L[A][A]     how much adding B hurts A (negative: B hurts A)

Rows are the affected language, columns the added language. The diagonal of I is 0 by the formula (NaN when the
monolingual run is missing) and every average below leaves it out. Missing runs stay NaN and are reported
(`missing_cells`), never filled.

Outliers follow Section 3.2: the IQR rule on each language's mean loss across the models that cover it (the row
mean of L, diagonal included). As in the paper (Section 3.3, "we exclude the outliers ... from this analysis"),
outliers are left out of every analysis after Figures 1 and 2: the family, script and resource aggregates, the
asymmetry and the embedding-similarity correlation drop their rows and columns. Robustness and friendliness are
still reported for an outlier, measured against the other languages only, so that no language's score averages in
an outlier's entries.

`analyse(L, out_dir)` writes every table (CSV) and figure (PNG) and returns a report.
"""

import itertools
import json
import re
from dataclasses import dataclass
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from mol_toolkit.languages import language, language_table, resolve_languages


# Section 3.5: "families with at least three languages represented in our interference matrix". The paper gives
# no minimum for scripts, but Figure 5 discusses Hebrew, which has two languages among the 83: a script needs two
# languages for its own (diagonal-free) cell to exist.
MIN_LANGUAGES = {"family": 3, "script": 2}
IQR_FACTOR = 1.5


# ---- the matrices -------------------------------------------------------------------------------------------------
def check_result_row(row):
    """A result row -> (sorted trained codes, evaluated code, loss), or a ValueError naming the row."""
    missing = [key for key in ("languages", "eval_language", "loss") if key not in row]
    if missing:
        raise ValueError(f"Result row {dict(row)} lacks {missing}; a result row has languages, eval_language, loss.")
    trained = row["languages"]
    trained = sorted(language(c).code for c in ([trained] if isinstance(trained, str) else trained))
    evaluated = language(row["eval_language"]).code
    if len(set(trained)) not in (1, 2) or len(set(trained)) != len(trained):
        raise ValueError(f"Result row {dict(row)}: `languages` must be one language or a pair of two different ones.")
    if evaluated not in trained:
        raise ValueError(f"Result row {dict(row)}: eval_language {evaluated!r} is not one of its trained {trained}.")
    loss = float(row["loss"])
    if not np.isfinite(loss):
        raise ValueError(f"Result row {dict(row)}: the loss {loss} is not finite (a diverged run: rerun it).")
    return trained, evaluated, loss


def loss_matrix(results, languages):
    """L over `languages` (index: evaluated language, columns: the other trained language; diagonal: monolingual)
    from result rows ({languages, eval_language, loss, ...}). Rows about other languages are skipped, so a subset of
    a larger sweep can be analysed. Cells without a run stay NaN."""
    codes = resolve_languages(list(languages))
    matrix = pd.DataFrame(np.nan, index=pd.Index(codes, name="language"),
                          columns=pd.Index(codes, name="added_language"))
    rows = results.to_dict("records") if isinstance(results, pd.DataFrame) else results
    seen = {}
    for row in rows:
        trained, evaluated, loss = check_result_row(row)
        if not set(trained) <= set(codes):
            continue
        added = next((c for c in trained if c != evaluated), evaluated)
        key = (evaluated, added, row.get("seed"))
        if seen.get(key, loss) != loss:
            raise ValueError(f"Two results disagree for the model {'+'.join(trained)} on {evaluated}: "
                             f"{seen[key]} and {loss}. A sweep writes each run once: check the results file.")
        seen[key] = loss
    by_cell = {}
    for (evaluated, added, _), loss in seen.items():
        by_cell.setdefault((evaluated, added), []).append(loss)
    for (evaluated, added), losses in by_cell.items():  # a sweep of several seeds: their mean
        matrix.loc[evaluated, added] = float(np.mean(losses))
    return matrix


def missing_cells(matrix):
    """(language, added_language) of every NaN cell, row by row; (A, A) is a missing monolingual run."""
    values = matrix.to_numpy(dtype=float)
    return [(matrix.index[i], matrix.columns[j]) for i, j in zip(*np.nonzero(np.isnan(values)))]


def _check_square(matrix, what):
    if not isinstance(matrix, pd.DataFrame) or list(matrix.index) != list(matrix.columns):
        raise ValueError(f"{what} must be a square DataFrame with the same languages, in the same order, as index and "
                         "columns (as loss_matrix returns).")
    if len(matrix) < 2:
        raise ValueError(f"{what} covers {list(matrix.index)}: interference needs at least 2 languages.")


def interference_matrix(losses):
    """I[A][B] = (L[A][A] - L[A][B]) / L[A][A]; diagonal 0 (NaN where the monolingual run is missing)."""
    _check_square(losses, "The loss matrix")
    mono = pd.Series(np.diag(losses.to_numpy(dtype=float)), index=losses.index)
    return losses.rsub(mono, axis=0).div(mono, axis=0)


def _off_diagonal(matrix):
    return matrix.mask(np.eye(len(matrix), dtype=bool))


# ---- Section 3.2: convergence and outliers ------------------------------------------------------------------------
def mean_loss(losses):
    """Figure 1: each language's loss averaged over every model that covers it (the row mean of L, diagonal in)."""
    return losses.mean(axis=1).rename("mean_loss")


def iqr_bounds(values):
    """Q1, Q3, IQR and the outlier bounds [Q1 - 1.5 IQR, Q3 + 1.5 IQR] (quartiles by linear interpolation)."""
    q1, q3 = values.dropna().quantile([0.25, 0.75])
    iqr = q3 - q1
    return {"q1": q1, "q3": q3, "iqr": iqr, "lower": q1 - IQR_FACTOR * iqr, "upper": q3 + IQR_FACTOR * iqr}


def iqr_outliers(values):
    bounds = iqr_bounds(values)
    return [code for code, value in values.items() if value < bounds["lower"] or value > bounds["upper"]]


# ---- Sections 3.3-3.6: robustness, friendliness, aggregates, asymmetry -------------------------------------------
def robustness(interference, excluded=()):
    """Row mean over added languages B != A (and not excluded): how little A suffers from others."""
    return _off_diagonal(interference).drop(columns=list(excluded)).mean(axis=1).rename("robustness")


def friendliness(interference, excluded=()):
    """Column mean over affected languages A != B (and not excluded): how little B hurts others."""
    return _off_diagonal(interference).drop(index=list(excluded)).mean(axis=0).rename("friendliness")


def attribute_of(codes, attribute):
    return pd.Series({code: getattr(language(code), attribute) for code in codes}, name=attribute, dtype=object)


def group_interference(interference, attribute, excluded=(), min_languages=None):
    """Figures 4 and 5: the mean of I over each (group of A, group of B) region, diagonal left out, for groups
    (`family` or `script`) with at least `min_languages` languages once the excluded ones are dropped."""
    min_languages = MIN_LANGUAGES.get(attribute, 1) if min_languages is None else min_languages
    kept = interference.drop(index=list(excluded), columns=list(excluded))
    groups = attribute_of(kept.index, attribute)
    sizes = groups.value_counts()
    groups = groups[groups.map(sizes) >= min_languages]
    if groups.empty:
        return pd.DataFrame(index=pd.Index([], name=f"language_{attribute}"),
                            columns=pd.Index([], name=f"added_language_{attribute}"), dtype=float)
    order = list(dict.fromkeys(groups[sort_by_family(groups.index)]))
    pairs = _off_diagonal(kept.loc[groups.index, groups.index]).stack().dropna()
    rows = pairs.index.get_level_values(0).map(groups)
    columns = pairs.index.get_level_values(1).map(groups)
    table = pairs.groupby([rows.rename(f"language_{attribute}"), columns.rename(f"added_language_{attribute}")]).mean()
    return table.unstack().reindex(index=order, columns=order)


def language_summary(losses, interference=None):
    """One row per language: table columns, loss_mono, mean_loss, robustness, friendliness, outlier."""
    interference = interference_matrix(losses) if interference is None else interference
    means = mean_loss(losses)
    outliers = iqr_outliers(means)
    table = pd.DataFrame([asdict(language(code)) for code in losses.index]).set_index("code", drop=False)
    table.index.name = None
    table["loss_mono"] = np.diag(losses.to_numpy(dtype=float))
    table["mean_loss"] = means
    table["robustness"] = robustness(interference, outliers)
    table["friendliness"] = friendliness(interference, outliers)
    table["outlier"] = table["code"].isin(outliers)
    return table


def resource_levels(summary):
    """Figure 6: mean robustness and friendliness per NLLB resource level, outliers left out."""
    kept = summary[~summary["outlier"]]
    return kept.groupby("resource").agg(robustness=("robustness", "mean"), friendliness=("friendliness", "mean"),
                                        languages=("code", "size"))


def asymmetry(interference, excluded=()):
    """Section 3.4: I against its transpose over unordered pairs. Returns (summary, pairs sorted by |I - I^T|)."""
    kept = interference.drop(index=list(excluded), columns=list(excluded))
    pairs = pd.DataFrame([(a, b, kept.at[a, b], kept.at[b, a]) for a, b in itertools.combinations(kept.index, 2)],
                         columns=["language_a", "language_b", "interference_ab", "interference_ba"])
    pairs["difference"] = pairs["interference_ab"] - pairs["interference_ba"]
    pairs = pairs.sort_values("difference", key=abs, ascending=False, kind="stable").reset_index(drop=True)
    measured = pairs.dropna()
    enough = len(measured) >= 3  # a correlation over fewer pairs says nothing
    summary = {
        "pairs": len(measured),
        "pearson": measured["interference_ab"].corr(measured["interference_ba"]) if enough else np.nan,
        "spearman": measured["interference_ab"].corr(measured["interference_ba"], method="spearman") if enough else np.nan,
        "mean_abs_difference": measured["difference"].abs().mean(),
        "max_abs_difference": measured["difference"].abs().max(),
        "most_asymmetric_pair": list(measured.iloc[0, :2]) if len(measured) else None,
    }
    return summary, pairs


def positive_entries(interference):
    """The rare pairs where adding B helped A (the paper finds one: bos_Latn with hrv_Latn)."""
    off = _off_diagonal(interference)
    return list(off[off > 0].stack().dropna().index)


# ---- Section 4: embedding similarity ------------------------------------------------------------------------------
def embedding_similarity(codes, texts, encoder, pooling="mean"):
    """S[A][B]: mean cosine similarity of A-B translation pairs under `encoder` (a Hub id, a folder, or a
    (tokenizer, model) pair), over the parallel `texts` (code -> aligned sentences), each sentence pooled as
    `pooling` (mean, or first token). Diagonal 1."""
    from mol_toolkit.grouping import embedding_distance

    return pd.DataFrame(1.0 - embedding_distance(codes, texts, encoder, pooling), index=codes, columns=codes)


def similarity_correlation(interference, similarity, excluded=()):
    """Row by row, Spearman's rank correlation between I[A][.] and S[A][.] over B != A (both measured). Positive:
    languages closer in the embedding space interfere less. NaN for rows with fewer than 3 pairs or a constant side
    (no ranking to compare)."""
    codes = [c for c in interference.index if c not in set(excluded)]
    absent = [c for c in codes if c not in similarity.index or c not in similarity.columns]
    if absent:
        raise ValueError(f"The similarity matrix has no row or column for {absent}; it covers {list(similarity.index)}.")
    rows = []
    for code in codes:
        others = [c for c in codes if c != code]
        pair = pd.DataFrame({"i": interference.loc[code, others], "s": similarity.loc[code, others]}).dropna()
        ranked = len(pair) >= 3 and pair.nunique().min() > 1
        rho, p = spearmanr(pair["i"], pair["s"]) if ranked else (np.nan, np.nan)
        rows.append({"language": code, "spearman": float(rho), "p_value": float(p), "pairs": len(pair)})
    return pd.DataFrame(rows).set_index("language")


# ---- plots --------------------------------------------------------------------------------------------------------
def sort_by_family(codes):
    """Codes in the language table's order (grouped by family, families in the order of their first row)."""
    position = {code: i for i, code in enumerate(language_table())}
    first = {}
    for code in language_table():
        first.setdefault(language(code).family, position[code])
    return sorted(codes, key=lambda c: (first[language(c).family], position[language(c).code]))


def _figure(width, height):
    # The object API draws without pyplot's global state or GUI backends (matplotlib's "web server" recipe).
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _save(figure, path):
    figure.savefig(path, dpi=120)
    return path


def _heatmap(axis, table, title, annotate):
    from matplotlib.colors import TwoSlopeNorm

    values = table.to_numpy(dtype=float)
    finite = values[np.isfinite(values)]
    low, high = (finite.min(), finite.max()) if finite.size else (-1.0, 1.0)
    norm = TwoSlopeNorm(vcenter=0.0, vmin=min(low, -1e-9), vmax=max(high, 1e-9))  # white at "no interference"
    image = axis.imshow(np.ma.masked_invalid(values), cmap="RdBu", norm=norm)
    axis.set_facecolor("0.85")  # missing cells show grey, never a colour
    axis.set_xticks(range(table.shape[1]), table.columns, rotation=90, fontsize=7)
    axis.set_yticks(range(table.shape[0]), table.index, fontsize=7)
    axis.set_xlabel("added language")
    axis.set_ylabel("affected language")
    axis.set_title(title)
    if annotate:
        for (i, j), value in np.ndenumerate(values):
            if np.isfinite(value):
                axis.text(j, i, f"{value:.3f}", ha="center", va="center", fontsize=7)
    return image


def plot_mean_loss(summary, bounds, path):
    """Figure 1."""
    ordered = summary.sort_values("mean_loss")
    figure = _figure(max(6, 0.22 * len(ordered)), 4)
    axis = figure.subplots()
    colours = np.where(ordered["outlier"], "tab:red", "tab:blue")
    axis.bar(range(len(ordered)), ordered["mean_loss"], color=colours)
    axis.axhline(ordered["mean_loss"].mean(), color="black", label="average")
    axis.axhline(bounds["lower"], color="grey", linestyle="--", label="Q1 - 1.5 IQR")
    axis.axhline(bounds["upper"], color="grey", linestyle=":", label="Q3 + 1.5 IQR")
    axis.set_xticks(range(len(ordered)), ordered["code"], rotation=90, fontsize=7)
    axis.set_ylabel("mean loss over its models")
    axis.set_title("Convergence by language (outliers in red)")
    axis.legend(fontsize=7)
    return _save(figure, path)


def plot_interference(interference, path):
    """Figure 2: the full matrix, languages sorted by family."""
    order = sort_by_family(interference.index)
    figure = _figure(max(6, 0.2 * len(order) + 2), max(5, 0.2 * len(order) + 1.5))
    axis = figure.subplots()
    image = _heatmap(axis, interference.loc[order, order], "Interference matrix I (sorted by family)",
                     annotate=len(order) <= 12)
    figure.colorbar(image, ax=axis, label="I[A][B] (negative: B hurts A)")
    return _save(figure, path)


def plot_robustness_friendliness(summary, path):
    """Figure 3."""
    figure = _figure(6, 5)
    axis = figure.subplots()
    for outlier, marker in ((False, "o"), (True, "x")):
        part = summary[summary["outlier"] == outlier]
        axis.scatter(part["robustness"], part["friendliness"], marker=marker,
                     label="outlier" if outlier else "language", color="tab:red" if outlier else "tab:blue")
    for code, row in summary.iterrows():
        axis.annotate(code, (row["robustness"], row["friendliness"]), fontsize=6)
    axis.set_xlabel("robustness (row mean of I)")
    axis.set_ylabel("friendliness (column mean of I)")
    axis.set_title("Robustness vs friendliness")
    axis.legend(fontsize=7)
    return _save(figure, path)


def plot_groups(table, attribute, path):
    """Figures 4 and 5."""
    figure = _figure(max(5, 0.6 * len(table) + 2), max(4, 0.6 * len(table) + 1.5))
    axis = figure.subplots()
    if table.empty:
        axis.set_axis_off()
        axis.text(0.5, 0.5, f"No {attribute} has {MIN_LANGUAGES.get(attribute, 1)} or more languages\n"
                  "(outliers excluded)", ha="center", va="center")
        return _save(figure, path)
    image = _heatmap(axis, table, f"I averaged by {attribute} (diagonal and outliers excluded)", annotate=True)
    axis.set_xlabel(f"added language's {attribute}")
    axis.set_ylabel(f"affected language's {attribute}")
    figure.colorbar(image, ax=axis)
    return _save(figure, path)


def plot_resource_levels(table, path):
    """Figure 6."""
    figure = _figure(5, 4)
    axis = figure.subplots()
    table[["robustness", "friendliness"]].plot.bar(ax=axis, rot=0)
    axis.axhline(0, color="black", linewidth=0.8)
    axis.set_xlabel("NLLB resource level")
    axis.set_ylabel("mean interference")
    axis.set_title("Robustness and friendliness by resource level")
    return _save(figure, path)


def plot_asymmetry(pairs, summary, path):
    figure = _figure(5, 5)
    axis = figure.subplots()
    axis.scatter(pairs["interference_ab"], pairs["interference_ba"], s=12)
    values = pairs[["interference_ab", "interference_ba"]].to_numpy(dtype=float)
    if np.isfinite(values).any():
        low, high = np.nanmin(values), np.nanmax(values)
        axis.plot([low, high], [low, high], color="grey", linestyle="--", label="symmetric")
        axis.legend(fontsize=7)
    axis.set_xlabel("I[A][B] (B added to A)")
    axis.set_ylabel("I[B][A] (A added to B)")
    axis.set_title(f"Asymmetry: pearson {summary['pearson']:.2f}, mean |I - I^T| {summary['mean_abs_difference']:.4f}")
    return _save(figure, path)


def _similarity_row(axis, code, correlation, interference, similarity):
    """One language's row of S (sorted) beside the same row of I, on twin axes."""
    others = [c for c in correlation.index if c != code]
    order = similarity.loc[code, others].sort_values().index
    axis.plot(range(len(order)), similarity.loc[code, order], color="tab:green", marker="o", label="similarity")
    axis.set_ylabel("embedding similarity", color="tab:green")
    twin = axis.twinx()
    twin.plot(range(len(order)), interference.loc[code, order], color="tab:purple", marker="s", label="interference")
    twin.set_ylabel("interference I", color="tab:purple")
    axis.set_xticks(range(len(order)), order, rotation=90, fontsize=7)
    axis.set_title(f"{code}: rho = {correlation.at[code, 'spearman']:.2f}")


def plot_similarity(correlation, interference, similarity, path, example="spa_Latn"):
    """Figure 7: the row-wise rank correlations, and one row of I beside the same row of S (the paper: Spanish;
    every row: `plot_similarity_rows`)."""
    figure = _figure(max(10, 0.2 * len(correlation) + 6), 4)
    left, right = figure.subplots(1, 2)
    left.bar(range(len(correlation)), correlation["spearman"].fillna(0.0))
    left.set_xticks(range(len(correlation)), correlation.index, rotation=90, fontsize=7)
    left.set_ylabel("Spearman rho (row of I vs row of S)")
    left.set_title("Embedding similarity vs interference, per language")
    _similarity_row(right, example if example in correlation.index else correlation.index[0], correlation,
                    interference, similarity)
    return _save(figure, path)


def plot_similarity_rows(correlation, interference, similarity, folder):
    """Figure 7's right panel for every language: folder/<code>.png."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for code in correlation.index:
        figure = _figure(max(5, 0.2 * len(correlation) + 2), 3.5)
        _similarity_row(figure.subplots(), code, correlation, interference, similarity)
        _save(figure, folder / f"{code}.png")
    return folder


def plot_similarity_encoders(correlations, path):
    """The row-wise Spearman rho of every language under every encoder, side by side."""
    labels = list(correlations)
    codes = list(next(iter(correlations.values())).index)
    figure = _figure(max(8, 0.25 * len(codes) * max(1, len(labels)) / 2 + 4), 4)
    axis = figure.subplots()
    width = 0.8 / len(labels)
    for k, label in enumerate(labels):
        values = correlations[label]["spearman"].reindex(codes).fillna(0.0)
        axis.bar(np.arange(len(codes)) + k * width, values, width, label=label)
    axis.set_xticks(np.arange(len(codes)) + 0.4 - width / 2, codes, rotation=90, fontsize=7)
    axis.set_ylabel("Spearman rho (row of I vs row of S)")
    axis.set_title("Embedding similarity vs interference, per language and encoder")
    axis.legend(fontsize=7)
    return _save(figure, path)


def plot_loss_matrix(losses, path):
    """The Interference Matrix paper's Figure 8: the loss matrix L (row: evaluated language, column: the language
    trained with it; diagonal: the monolingual loss), languages sorted by family."""
    order = sort_by_family(losses.index)
    figure = _figure(max(6, 0.2 * len(order) + 2), max(5, 0.2 * len(order) + 1.5))
    axis = figure.subplots()
    image = _heatmap(axis, losses.loc[order, order], "Loss matrix L (sorted by family)", annotate=len(order) <= 12)
    figure.colorbar(image, ax=axis, label="devtest MLM loss of the row language")
    return _save(figure, path)


def encoder_slug(label):
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_") or "encoder"


# ---- everything at once -------------------------------------------------------------------------------------------
def _plain(value):
    """JSON-ready: NaN -> None, numpy scalars -> Python, tuples -> lists."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.generic, float)):
        value = value.item() if isinstance(value, np.generic) else value
        return None if isinstance(value, float) and not np.isfinite(value) else value
    return value


@dataclass
class InterferenceResults:
    """Everything computed from the loss matrix L, once: the analysis writes it, the dataset writer writes it, the
    card shows it; nothing downstream recomputes a part of it."""

    losses: pd.DataFrame
    interference: pd.DataFrame
    summary: pd.DataFrame
    bounds: dict
    outliers: list
    families: pd.DataFrame
    scripts: pd.DataFrame
    resources: pd.DataFrame
    asymmetry_summary: dict
    asymmetry_pairs: pd.DataFrame
    missing: list
    similarity: pd.DataFrame | None = None
    correlation: pd.DataFrame | None = None
    similarities: dict | None = None  # encoder label -> S, every encoder of the run (the first is `similarity`)
    correlations: dict | None = None

    @classmethod
    def compute(cls, losses, similarity=None):
        """`similarity`: None, one S, or {encoder label: S} for several encoders (the first is the primary one)."""
        interference = interference_matrix(losses)
        summary = language_summary(losses, interference)
        outliers = list(summary.index[summary["outlier"]])
        asymmetry_summary, pairs = asymmetry(interference, outliers)
        similarities = similarity if isinstance(similarity, dict) or similarity is None else {"encoder": similarity}
        correlations = {label: similarity_correlation(interference, frame, outliers)
                        for label, frame in (similarities or {}).items()} or None
        similarity = next(iter(similarities.values())) if similarities else None
        return cls(
            similarities=similarities, correlations=correlations,
            losses=losses, interference=interference, summary=summary, bounds=iqr_bounds(summary["mean_loss"]),
            outliers=outliers, families=group_interference(interference, "family", outliers),
            scripts=group_interference(interference, "script", outliers), resources=resource_levels(summary),
            asymmetry_summary=asymmetry_summary, asymmetry_pairs=pairs, missing=missing_cells(losses),
            similarity=similarity,
            correlation=next(iter(correlations.values())) if correlations else None,
        )


def analyse(results, out_dir, similarity=None):
    """Write every table (CSV) and figure (PNG) of Sections 3.2-3.6 (and 4, given a similarity matrix S over the
    same languages) to `out_dir`, plus report.json; return the report. `results`: an `InterferenceResults`, or the
    loss matrix L to compute them from."""
    if not isinstance(results, InterferenceResults):
        results = InterferenceResults.compute(results, similarity)
    r = results
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    r.losses.to_csv(out / "loss_matrix.csv")
    r.interference.to_csv(out / "interference_matrix.csv")
    r.summary.to_csv(out / "languages.csv", index=False)
    r.families.to_csv(out / "family_interference.csv")
    r.scripts.to_csv(out / "script_interference.csv")
    r.resources.to_csv(out / "resource_levels.csv")
    r.asymmetry_pairs.to_csv(out / "asymmetry_pairs.csv", index=False)
    plot_mean_loss(r.summary, r.bounds, out / "figure1_mean_loss.png")
    plot_interference(r.interference, out / "figure2_interference_matrix.png")
    plot_loss_matrix(r.losses, out / "figure8_loss_matrix.png")
    plot_robustness_friendliness(r.summary, out / "figure3_robustness_friendliness.png")
    plot_groups(r.families, "family", out / "figure4_family.png")
    plot_groups(r.scripts, "script", out / "figure5_script.png")
    plot_resource_levels(r.resources, out / "figure6_resource_levels.png")
    plot_asymmetry(r.asymmetry_pairs, r.asymmetry_summary, out / "asymmetry.png")

    report = {
        "languages": list(r.losses.index),
        "complete": not r.missing,
        "missing_cells": r.missing,
        "outlier_bounds": r.bounds,
        "outliers": r.outliers,
        "excluded_from_aggregates": r.outliers,
        "families": list(r.families.index),
        "scripts": list(r.scripts.index),
        "positive_interference": positive_entries(r.interference),
        "asymmetry": r.asymmetry_summary,
    }
    if r.similarity is not None:
        r.similarity.to_csv(out / "similarity_matrix.csv")
        r.correlation.to_csv(out / "similarity_correlation.csv")
        plot_similarity(r.correlation, r.interference, r.similarity, out / "figure7_similarity.png")
        report["similarity_correlation"] = {"mean_spearman": r.correlation["spearman"].mean(),
                                            "per_language": r.correlation["spearman"].to_dict()}
        encoders = []
        for label, frame in r.similarities.items():  # every encoder: its S, its rho per language, every row plotted
            folder = out / "similarity" / encoder_slug(label)
            folder.mkdir(parents=True, exist_ok=True)
            frame.to_csv(folder / "similarity_matrix.csv")
            r.correlations[label].to_csv(folder / "similarity_correlation.csv")
            plot_similarity_rows(r.correlations[label], r.interference, frame, folder / "rows")
            encoders.append({"encoder": label, "folder": str(folder.relative_to(out)),
                             "mean_spearman": r.correlations[label]["spearman"].mean()})
        pd.DataFrame(encoders).to_csv(out / "similarity_encoders.csv", index=False)
        plot_similarity_encoders(r.correlations, out / "figure7_similarity_encoders.png")
        report["similarity_encoders"] = encoders
    report["files"] = sorted(path.name for path in out.iterdir() if path.suffix in (".csv", ".png")) + ["report.json"]
    report = _plain(report)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report
