"""SEMANTIC mode as one wing: the codec (codec.py), its body and fit, and everything it uses
(extractive selection, summaries, quality, the embedder, entities, near-duplicate groups)."""

from .body import keep_extract, pack_body, required_entities, residual_facts, unpack_body
from .codec import SemanticCodec

__all__ = [
    "SemanticCodec",
    "keep_extract",
    "pack_body",
    "required_entities",
    "residual_facts",
    "unpack_body",
]
