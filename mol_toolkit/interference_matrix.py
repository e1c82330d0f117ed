"""Reading an interference matrix I (rows: affected language, columns: added language) from the dataset that
build_interference.py publishes: its `interference` config, one row per ordered pair with columns `language`,
`added_language`, `interference`. Accepted sources: a Hub dataset repo id, a local folder in the Hub layout
(`interference/*.parquet`), or one parquet/CSV file of those rows.
"""

from pathlib import Path

import numpy as np


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
    table = rows.pivot_table(index="language", columns="added_language", values="interference", aggfunc="mean")
    table = table.reindex(index=codes, columns=codes)
    matrix = table.to_numpy(dtype=float, copy=True)
    np.fill_diagonal(matrix, 0.0)
    holes = [(a, b) for i, a in enumerate(codes) for j, b in enumerate(codes) if i != j and np.isnan(matrix[i, j])]
    if holes:
        raise ValueError(f"The interference matrix {source} misses {len(holes)} pairs, e.g. {holes[:5]}: "
                         "finish the sweep (build_interference.py) before grouping by it.")
    return matrix
