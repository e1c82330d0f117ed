"""MoL models. The module files are copied flat into exported checkpoints as remote code."""

from .modeling_mol import (
    MoLForMaskedLM,
    MoLForMultipleChoice,
    MoLForQuestionAnswering,
    MoLForSequenceClassification,
    MoLForTokenClassification,
    MoLModel,
    MoLPreTrainedModel,
)
from .mol_packing import MoLPackedBatch


__all__ = [
    "MoLForMaskedLM",
    "MoLForMultipleChoice",
    "MoLForQuestionAnswering",
    "MoLForSequenceClassification",
    "MoLForTokenClassification",
    "MoLModel",
    "MoLPackedBatch",
    "MoLPreTrainedModel",
]
