"""SEMANTIC mode: the codec (codec.py), its body (body.py) and its fit to the target size."""

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
