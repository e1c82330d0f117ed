"""MoL models. The module files are copied flat into exported checkpoints as remote code."""

from .modeling_mol import (
    MoLForMaskedLM,
    MoLForSequenceClassification,
    MoLModel,
    MoLPackedBatch,
    MoLPreTrainedModel,
)


__all__ = ["MoLForMaskedLM", "MoLForSequenceClassification", "MoLModel", "MoLPackedBatch", "MoLPreTrainedModel"]
