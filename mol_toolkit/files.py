"""Every file the toolkit writes is written whole or not at all: to `NAME.partial` beside it, then renamed over it
(os.replace is atomic on one file system), so a kill or a full disk never leaves a half-written result."""

import json
import os
from pathlib import Path


def atomic_write_text(path, text):
    path = Path(path)
    partial = Path(f"{path}.partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def write_json(path, value):
    """`value` as indented JSON (the parent folder created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(value, indent=2, ensure_ascii=False, default=str))


def write_jsonl(path, rows):
    """All of `rows` (dicts) as JSON lines."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(partial, path)
