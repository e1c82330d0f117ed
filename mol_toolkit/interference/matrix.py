"""The interference matrix as a Hub dataset: reading it (rows: affected language, columns: added language), and
writing and publishing the dataset that build_interference.py produces.

The dataset has three parquet configs, declared in its README.md so that `load_dataset(repo, "interference")` works:
`interference` (one row per ordered pair: `language`, `added_language`, `interference`, `loss_mono`, `loss_pair`),
`languages` (one row per language) and `runs` (one row per trained model), plus `analysis/` (tables and figures).
Accepted sources for reading: a Hub dataset repo id, a local folder in the Hub layout (`interference/*.parquet`),
or one parquet/CSV file of those rows.
"""

from pathlib import Path

import numpy as np

from model_cards import template_path


COLUMNS = ("language", "added_language", "interference")


def _rows(source):
    import pandas as pd

    path = Path(source)
    if path.is_dir():
        files = sorted((path / "interference").glob("*.parquet")) or sorted(path.glob("interference*.parquet"))
        if not files:
            raise ValueError(f"{source} holds no interference/*.parquet (the layout build_interference.py publishes).")
        return pd.concat([pd.read_parquet(f) for f in files])
    if path.suffix == ".parquet" and path.is_file():
        return pd.read_parquet(path)
    if path.suffix == ".csv" and path.is_file():
        return pd.read_csv(path)
    looks_like_repo = str(source).count("/") == 1 and not str(source).startswith((".", "/"))
    if path.exists() or not looks_like_repo:
        raise ValueError(f"Cannot read an interference matrix from {source}: give a Hub dataset id (org/name), "
                         "a folder with interference/*.parquet, or a .parquet or .csv file of its rows.")
    from datasets import load_dataset

    try:
        return load_dataset(str(source), "interference", split="train").to_pandas()
    except Exception as error:
        raise ValueError(f"Cannot load the interference dataset {source!r} from the Hub: {error}") from error


def check_interference_values(rows, source, codes):
    """Every value between two of `codes` a finite number and every such pair given once (or twice with the same
    value): never averaged, never passed on to scipy as NaN, inf or text. A missing pair is a missing row."""
    import pandas as pd

    wanted = set(codes)
    rows = rows[rows["language"].isin(wanted) & rows["added_language"].isin(wanted)
                & (rows["language"] != rows["added_language"])]
    values = pd.to_numeric(rows["interference"], errors="coerce")
    for index in rows.index:
        value, raw = values[index], rows.at[index, "interference"]
        if raw is None or (isinstance(raw, float) and np.isnan(raw)) or not np.isfinite(value) or isinstance(raw, (str, bool)):
            pair = (rows.at[index, "language"], rows.at[index, "added_language"])
            shown = repr(raw) if isinstance(raw, str) or raw is None else float(raw)
            raise ValueError(f"The interference matrix {source} has the value {shown} for {pair}: every value must be "
                             "a finite number (a missing pair is a missing row, not NaN).")
    for pair, group in rows.assign(value=values).groupby(["language", "added_language"]):
        if group["value"].nunique() > 1:
            raise ValueError(f"The interference matrix {source} gives {pair} twice with different values "
                             f"{sorted(group['value'].tolist())}: keep one row per pair.")


def load_interference_matrix(source, codes):
    """The (len(codes) x len(codes)) matrix I for `codes`, diagonal 0. Every requested pair must be present."""
    rows = _rows(source)
    missing_columns = [c for c in COLUMNS if c not in rows.columns]
    if missing_columns:
        raise ValueError(f"{source} lacks columns {missing_columns}; an interference table has {list(COLUMNS)}.")
    known = set(rows["language"]) | set(rows["added_language"])
    absent = [c for c in codes if c not in known]
    if absent:
        raise ValueError(f"The interference matrix {source} has no row for {absent}; it covers {sorted(known)}.")
    check_interference_values(rows, source, codes)
    table = rows.pivot_table(index="language", columns="added_language", values="interference", aggfunc="first")
    table = table.reindex(index=codes, columns=codes)
    matrix = table.to_numpy(dtype=float, copy=True)
    np.fill_diagonal(matrix, 0.0)
    holes = [(a, b) for i, a in enumerate(codes) for j, b in enumerate(codes) if i != j and np.isnan(matrix[i, j])]
    if holes:
        raise ValueError(f"The interference matrix {source} misses {len(holes)} pairs, e.g. {holes[:5]}: "
                         "finish the sweep (build_interference.py) before grouping by it.")
    return matrix


# ---- writing and publishing the dataset ---------------------------------------------------------------------------
CARD_TEMPLATE = template_path("dataset_card.md")
CONFIGS = ("interference", "languages", "runs")
SHARD = "train-00000-of-00001.parquet"  # the Hub's shard naming: configs read `<config>/train-*.parquet`


def dataset_configs():
    """The card's `configs:` metadata: what lets `load_dataset(repo_or_folder, "interference")` find each table."""
    return [{"config_name": name, "data_files": [{"split": "train", "path": f"{name}/train-*.parquet"}],
             **({"default": True} if name == "interference" else {})} for name in CONFIGS]


def _records(frame):
    """DataFrame -> row dicts with None (a parquet null) where a value is missing, never NaN."""
    return frame.astype(object).where(frame.notna(), None).to_dict("records")


def _write_table(folder, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), folder / SHARD)


def interference_rows(losses, interference):
    """One row per ordered pair A != B, in the matrix's order; missing cells are nulls."""
    import pandas as pd

    codes = list(losses.index)
    frame = pd.DataFrame([{"language": a, "added_language": b, "interference": interference.at[a, b],
                           "loss_mono": losses.at[a, a], "loss_pair": losses.at[a, b]}
                          for a in codes for b in codes if a != b])
    return _records(frame)


def runs_rows(results, codes):
    """One row per trained model from the sweep's result rows (one per model and evaluated language): `run`,
    `languages`, `eval_languages`, `losses`, then the run's own fields (steps, seed, wall time, settings...); nested
    values are JSON strings so that every run has the same columns."""
    import json

    from .analysis import check_result_row

    runs = {}
    for row in results.to_dict("records") if hasattr(results, "to_dict") else results:
        trained, evaluated, loss = check_result_row(row)
        if not set(trained) <= set(codes):
            continue
        run = runs.setdefault("+".join(trained), {"run": "+".join(trained), "languages": trained,
                                                  "eval_languages": [], "losses": []})
        run["eval_languages"].append(evaluated)
        run["losses"].append(loss)
        for key, value in row.items():
            if key not in ("languages", "eval_language", "loss") and key not in run:
                run[key] = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list, tuple)) else value
    if not runs:
        raise ValueError(f"No result row is about a model over {list(codes)}: nothing to publish as `runs`.")
    columns = list(dict.fromkeys(key for run in runs.values() for key in run))
    return [{key: run.get(key) for key in columns} for run in runs.values()]


def _incomplete_error(missing, what, unit):
    shown = ", ".join(f"{a}/{b}" for a, b in missing[:10]) + (" ..." if len(missing) > 10 else "")
    return ValueError(f"{what} misses {len(missing)} {unit} ({shown}): finish the sweep, or pass "
                      "allow_incomplete=True (--allow-incomplete) to publish it anyway, marked incomplete in the card.")


def _check_replaceable(folder):
    """Only a new or empty folder, or one this module wrote, is replaced: never a folder of other files."""
    if folder.exists() and any(folder.iterdir()) and not ((folder / "README.md").is_file()
                                                          and (folder / "interference").is_dir()):
        raise ValueError(f"{folder} exists and is not a dataset folder written by write_dataset_folder; give a new "
                         "or empty folder.")


def _format(value):
    return "" if value is None or value != value else f"{value:.4f}"


def size_category(rows):
    """The Hub's size_categories bucket for a dataset of `rows` rows."""
    for bound, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if rows < bound:
            return name
    return "1M<n<10M"


def write_card(folder, losses, summary, report, settings, num_runs, repo_id=None):
    """README.md from model_cards/dataset_card.md: YAML metadata (configs, languages), method, settings,
    languages, findings, how to load; an incomplete matrix says so first."""
    from huggingface_hub import DatasetCard, DatasetCardData

    codes = list(losses.index)
    complete = report["complete"]
    pretty_name = f"Interference Matrix ({len(codes)} languages{'' if complete else ', incomplete'})"
    card_data = DatasetCardData(
        pretty_name=pretty_name, language=sorted({code.split("_")[0] for code in codes}),
        license="apache-2.0",  # the project's licence: the matrix is its measurement, no third-party text inside
        task_categories=["fill-mask"], size_categories=[size_category(len(codes) ** 2)],
        tags=["interference-matrix", "multilingual", "masked-language-modeling"] + ([] if complete else ["incomplete"]),
        configs=dataset_configs(),
    )
    languages = [{**row, **{key: _format(row[key]) for key in ("loss_mono", "robustness", "friendliness")}}
                 for row in _records(summary)]
    asymmetry = {key: _format(value) if isinstance(value, float) else value
                 for key, value in report["asymmetry"].items()}
    similarity = report.get("similarity_correlation")
    card = DatasetCard.from_template(
        card_data, template_path=str(CARD_TEMPLATE), pretty_name=pretty_name, complete=complete,
        missing=report["missing_cells"], num_cells=len(codes) ** 2, num_languages=len(codes),
        num_pairs=len(codes) * (len(codes) - 1) // 2, num_runs=num_runs, settings=dict(settings),
        bounds=report["outlier_bounds"], outliers=report["outliers"], languages=languages,
        positive=report["positive_interference"], asymmetry=asymmetry,
        similarity={"mean_spearman": _format(similarity["mean_spearman"])} if similarity else None,
        figures=sorted((n for n in report["files"] if n.endswith(".png")), key=lambda n: (not n.startswith("figure"), n)), repo_id=repo_id or "ORG/NAME",
    )
    card.save(folder / "README.md")


def write_dataset_folder(out_dir, losses, results, settings, allow_incomplete=False, similarity=None, repo_id=None,
                         computed=None):
    """Write the folder `publish_dataset` uploads: `interference/`, `languages/` and `runs/` parquet configs,
    `analysis/` (every table, figure and report.json of `analysis.analyse`) and README.md.

    `losses` is the loss matrix L (`analysis.loss_matrix`), `results` the sweep's result rows, `settings`
    the sweep's settings (shown in the card); `computed`: the `InterferenceResults` of L when the caller has them
    (computed from L here otherwise, once). A matrix with missing cells is refused, before anything is written,
    unless `allow_incomplete`. The folder is built aside and swapped in whole: no stale file survives a rewrite.
    Returns the analysis report."""
    import shutil
    import tempfile

    from .analysis import InterferenceResults, analyse

    computed = computed or InterferenceResults.compute(losses, similarity)
    interference, missing = computed.interference, computed.missing
    if missing and not allow_incomplete:
        raise _incomplete_error(missing, "The interference matrix", "cells of the loss matrix")
    runs = runs_rows(results, list(losses.index))
    out = Path(out_dir)
    _check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        report = analyse(computed, staging / "analysis")
        summary = computed.summary
        _write_table(staging / "interference", interference_rows(losses, interference))
        _write_table(staging / "languages", _records(summary))
        _write_table(staging / "runs", runs)
        write_card(staging, losses, summary, report, settings, len(runs), repo_id)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return report


def publish_dataset(folder, repo_id, private=False, allow_incomplete=False, token=None):
    """Upload a folder from `write_dataset_folder` as the Hub dataset `repo_id` (created if needed). Files of the
    dataset's own folders that the new version no longer has are deleted. An incomplete matrix needs
    `allow_incomplete`. Returns the commit info."""
    from huggingface_hub import HfApi

    folder = Path(folder)
    rows = _rows(folder)
    if not (folder / "README.md").is_file():
        raise ValueError(f"{folder} has no README.md: write it with write_dataset_folder before publishing.")
    holes = rows[rows["interference"].isna()]
    if len(holes) and not allow_incomplete:
        raise _incomplete_error(list(zip(holes["language"], holes["added_language"])),
                                f"The dataset in {folder}", "pairs of the interference matrix")
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    return api.upload_folder(
        repo_id=repo_id, repo_type="dataset", folder_path=folder,
        commit_message=f"Interference matrix over {rows['language'].nunique()} languages",
        delete_patterns=[f"{name}/*" for name in (*CONFIGS, "analysis")],
    )


def matrix_from_dataset(source, values="interference"):
    """The N x N matrix from a published dataset (Hub id, folder or file of its `interference` rows), in the order
    the rows were written. `values="interference"`: I, diagonal 0 (NaN for a language without a monolingual run,
    when the rows give `loss_mono`); `values="loss"`: L, diagonal the monolingual loss. Missing cells are NaN.
    I alone needs only the `language`, `added_language` and `interference` columns (a hand-made table)."""
    import pandas as pd

    column = {"interference": "interference", "loss": "loss_pair"}.get(values)
    if column is None:
        raise ValueError(f"values={values!r}: choose 'interference' (I) or 'loss' (L).")
    rows = _rows(source)
    required = (*COLUMNS, "loss_mono", "loss_pair") if values == "loss" else COLUMNS
    needed = [c for c in required if c not in rows.columns]
    if needed:
        raise ValueError(f"{source} lacks columns {needed}: it is not a dataset written by write_dataset_folder.")
    repeated = rows[rows.duplicated(["language", "added_language"])]
    if len(repeated):
        raise ValueError(f"{source} has more than one row for pairs {list(zip(repeated['language'], repeated['added_language']))[:5]}.")
    codes = list(dict.fromkeys([*rows["language"], *rows["added_language"]]))
    matrix = rows.pivot(index="language", columns="added_language", values=column).reindex(index=codes, columns=codes)
    if "loss_mono" in rows.columns:
        mono = rows.groupby("language")["loss_mono"].first().reindex(codes)
        diagonal = mono if values == "loss" else mono * 0.0  # 0 where the monolingual run exists, else NaN
    else:
        diagonal = pd.Series(0.0, index=codes)
    for code in codes:
        matrix.at[code, code] = diagonal[code]
    return matrix.astype(float)
