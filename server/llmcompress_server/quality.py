"""Quality of a lossy reconstruction: embedding similarity, entity recall, chrF, overall score.

overall = 0.6 * max(similarity, 0) + 0.25 * entity_recall + 0.15 * chrF / 100

Similarity (meaning) weighs most; entity recall guards the facts users search
for; chrF rewards keeping the original wording. The compression ratio is not
part of quality. Similarity comes from the backend's embedding endpoint when
it has one, else from the bundled all-MiniLM-L6-v2 (`embedder.py`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from sacrebleu.metrics.chrf import CHRF

from llmcompress.v1 import compression_pb2 as pb

from .backends import TextBackend
from .embedder import MiniLMEmbedder, cosine
from .entities import Entity, missing_entities

W_SIMILARITY, W_RECALL, W_CHRF = 0.6, 0.25, 0.15
_CHRF = CHRF()


def overall_score(similarity: float, entity_recall: float, chrf: float) -> float:
    return W_SIMILARITY * max(similarity, 0.0) + W_RECALL * entity_recall + W_CHRF * chrf / 100.0


def entity_recall(reconstruction: str, entities: Sequence[Entity]) -> float:
    if not entities:
        return 1.0
    return 1.0 - len(missing_entities(reconstruction, list(entities))) / len(entities)


def chrf(reconstruction: str, original: str) -> float:
    return float(_CHRF.sentence_score(reconstruction, [original]).score)


async def similarity(
    original: str, reconstruction: str, backend: TextBackend | None, embedder: MiniLMEmbedder
) -> tuple[float, str]:
    """Cosine similarity and the name of the embedding model that produced it."""
    if backend is not None:
        found = await backend.embed([original, reconstruction])
        if found is not None:
            return cosine(found.vectors[0], found.vectors[1]), found.model
    # A CPU-bound numpy forward pass: keep it off the event loop.
    a, b = await asyncio.to_thread(embedder.embed, [original, reconstruction])
    return cosine(a, b), embedder.name


async def score(
    original: str,
    reconstruction: str,
    entities: Sequence[Entity],
    backend: TextBackend | None,
    embedder: MiniLMEmbedder,
) -> pb.QualityScores:
    sim, model = await similarity(original, reconstruction, backend, embedder)
    recall = entity_recall(reconstruction, entities)
    ch = chrf(reconstruction, original)
    return pb.QualityScores(
        similarity=sim,
        entity_recall=recall,
        chrf=ch,
        overall=overall_score(sim, recall, ch),
        embedding_model=model,
    )
