"""Run configs shipped with the project: train_mlm.py presets (`*.yaml`), interference sweep presets
(`interference/*.yaml`) and accelerate launch configs (`accelerate/`). A package so that an installed copy has them."""

from pathlib import Path


CONFIGS = Path(__file__).resolve().parent
SWEEP_PRESETS = CONFIGS / "interference"


def sweep_preset_path(name):
    """The YAML file of a sweep preset name (tiny, paper), or `name` itself when it is a path to a YAML file."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ValueError(f"The sweep config {name!r} does not exist.")
        return path
    preset = SWEEP_PRESETS / f"{name}.yaml"
    known = sorted(p.stem for p in SWEEP_PRESETS.glob("*.yaml") if p.stem != "sweep_runs")
    if name == "sweep_runs" or not preset.is_file():
        raise ValueError(f"Unknown preset {name!r}: use one of {known}, or a path to a sweep YAML file.")
    return preset
