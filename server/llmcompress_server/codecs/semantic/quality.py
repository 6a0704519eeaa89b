"""Quality of a lossy reconstruction: embedding similarity, entity recall in its body, chrF,
and the overall score the quality gate compares with `model.quality_threshold`.

    overall = 0.5 * max(similarity, 0) + 0.3 * body_entity_recall + 0.2 * chrF / 100

- body_entity_recall (0.3): the share of the original's entities (dates, numbers, names, ...)
  found in the reconstruction's body, everything but its final "Facts:" line. Entities the
  body lacks are stored and listed on that line, so recall over the whole reconstruction is
  1.0 by construction and says nothing; in the body it is the runtime stand-in for fact
  retention, the share of a reader's questions the text still answers in context
  (bench/semantic_eval measures that with a hand-written fact list).
- similarity (0.5): meaning kept, but lenient (a bare list of five names scored 0.64 against
  its 700-byte original), and the extractive selector picks sentences with the same
  embedding, so it cannot decide alone.
- chrF (0.2): the original's wording kept, scored on characters by no model at all; a body
  with no sentence scores near 0.

The compression ratio is not part of quality. Similarity comes from the backend's embedding
endpoint when it has one, else from the bundled all-MiniLM-L6-v2 (`embedder.py`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from sacrebleu.metrics.chrf import CHRF

from llmcompress_proto.v1 import compression_pb2 as pb

from ...backends import TextBackend
from .embedder import MiniLMEmbedder, cosine
from .entities import Entity, missing_entities

W_SIMILARITY, W_BODY_RECALL, W_CHRF = 0.5, 0.3, 0.2
_CHRF = CHRF()

# Starts the line a reconstruction ends with when stored entities are missing from its body.
FACTS_LINE = "Facts: "


def body_of(reconstruction: str) -> str:
    """The reconstruction without its final Facts line."""
    if reconstruction.startswith(FACTS_LINE):
        return ""
    head, sep, _ = reconstruction.rpartition("\n" + FACTS_LINE)
    return head if sep else reconstruction


def with_facts_line(body: str, missing: Sequence[Entity]) -> str:
    """`body`, then a Facts line listing `missing` (if any)."""
    if not missing:
        return body
    facts = FACTS_LINE + "; ".join(e.text for e in missing)
    return f"{body}\n{facts}" if body else facts


def overall_score(similarity: float, body_entity_recall: float, chrf: float) -> float:
    return (
        W_SIMILARITY * max(similarity, 0.0)
        + W_BODY_RECALL * body_entity_recall
        + W_CHRF * chrf / 100.0
    )


def entity_recall(reconstruction: str, entities: Sequence[Entity]) -> float:
    if not entities:
        return 1.0
    return 1.0 - len(missing_entities(reconstruction, list(entities))) / len(entities)


def chrf(reconstruction: str, original: str) -> float:
    return float(_CHRF.sentence_score(reconstruction, [original]).score)


async def similarity(
    original: str,
    reconstruction: str,
    backend: TextBackend | None,
    embedder: MiniLMEmbedder,
    original_vector: npt.NDArray[np.float32] | None = None,
) -> tuple[float, str]:
    """Cosine similarity and the name of the embedding model that produced it.
    `original_vector`: the original's MiniLM embedding, when already computed."""
    if backend is not None:
        found = await backend.embed([original, reconstruction])
        if found is not None:
            return cosine(found.vectors[0], found.vectors[1]), found.model
    # A CPU-bound numpy forward pass: keep it off the event loop.
    if original_vector is None:
        a, b = await asyncio.to_thread(embedder.embed, [original, reconstruction])
        return cosine(a, b), embedder.name
    rebuilt = await asyncio.to_thread(embedder.embed_one, reconstruction)
    return cosine(original_vector, rebuilt), embedder.name


def _text_scores(
    original: str, reconstruction: str, entities: Sequence[Entity]
) -> tuple[float, float, float]:
    """Entity recall (whole and body only) and chrF."""
    return (
        entity_recall(reconstruction, entities),
        entity_recall(body_of(reconstruction), entities),
        chrf(reconstruction, original),
    )


async def score(
    original: str,
    reconstruction: str,
    entities: Sequence[Entity],
    backend: TextBackend | None,
    embedder: MiniLMEmbedder,
    original_vector: npt.NDArray[np.float32] | None = None,
) -> pb.QualityScores:
    sim, model = await similarity(original, reconstruction, backend, embedder, original_vector)
    # chrF is pure Python over character n-grams (tens of ms on a few KB): off the loop too.
    recall, in_body, ch = await asyncio.to_thread(_text_scores, original, reconstruction, entities)
    return pb.QualityScores(
        similarity=sim,
        entity_recall=recall,
        body_entity_recall=in_body,
        chrf=ch,
        overall=overall_score(sim, in_body, ch),
        embedding_model=model,
    )
