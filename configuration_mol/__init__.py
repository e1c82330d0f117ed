"""MoL configuration. The module file is copied flat into exported checkpoints as remote code."""

from .configuration_mol import GROUP_LAYOUTS, MOL_AUTO_MAP, MoLConfig, resolve_group_layers


__all__ = ["GROUP_LAYOUTS", "MOL_AUTO_MAP", "MoLConfig", "resolve_group_layers"]
