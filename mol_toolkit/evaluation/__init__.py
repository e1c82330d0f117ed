"""The papers' evaluation: sentence embeddings that keep each text's language, mteb tasks routed by their subsets'
languages, and the papers' aggregation of the scores."""

from .encoder import EncoderLoadError, SentenceEncoder
from .mteb_encoder import MoLMTEBEncoder, mteb_encoder


__all__ = ["EncoderLoadError", "MoLMTEBEncoder", "SentenceEncoder", "mteb_encoder"]
