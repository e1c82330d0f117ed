"""Card templates for the repos MoL publishes: models (`model_card.md`), the interference matrix dataset
(`dataset_card.md`) and the grouped-GEMM kernel (`kernel_card.md`). Jinja templates rendered by huggingface_hub's
card classes; shipped inside the installed package so that an installed copy writes cards too."""

from pathlib import Path


TEMPLATES = Path(__file__).resolve().parent


def template_path(name):
    path = TEMPLATES / name
    if not path.is_file():
        raise FileNotFoundError(f"No card template {name!r} in {TEMPLATES}: have {sorted(p.name for p in TEMPLATES.glob('*.md'))}.")
    return path
