"""SEMANTIC bodies coded with the LOSSLESS coder: the summary and facts as one model-coded text.

The coder compresses the summary 3-5x on these passages where brotli gets
~2x, so at the same envelope size the summary keeps about twice the text.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmcompress.v1 import compression_pb2 as pb

from ...entities import Entity
from ...errors import DataLoss
from ...tokens import Unrepresentable
from ..lossless import LosslessCodec

# Starts the facts after the summary; a control byte, so no summary contains it.
FACTS_MARK = "\n\x1e"


def coded_text(summary: str, facts: list[Entity]) -> str | None:
    """The text the coder stores, or None when these parts cannot be laid out unambiguously."""
    if "\x1e" in summary or any(
        "\n" in f.text or "\x1e" in f.text or "\t" in f.kind or "\n" in f.kind or not f.kind
        for f in facts
    ):
        return None
    if not facts:
        return summary
    return summary + FACTS_MARK + "\n".join(f"{f.kind}\t{f.text}" for f in facts)


def parse_coded_text(text: str) -> pb.SemanticBody:
    summary, mark, rest = text.partition(FACTS_MARK)
    body = pb.SemanticBody(summary=summary)
    if mark:
        for line in rest.split("\n"):
            kind, tab, value = line.partition("\t")
            if not tab:
                raise DataLoss("the SEMANTIC envelope's coded facts are malformed: it is corrupted")
            body.facts.append(pb.Entity(kind=kind, text=value))
    return body


@dataclass(frozen=True)
class CodedSummary:
    body: pb.LosslessBody
    text_bytes: int
    # Bytes carried by non-canonical tokens (see `tokens.ExactTokenizer`).
    piecewise_bytes: int = 0


async def code(coder: LosslessCodec, text: str) -> CodedSummary | None:
    """`text` coded by the model; None when the model's vocabulary cannot reproduce a
    byte of it."""
    data = text.encode("utf-8")
    try:
        tokenized = await coder.tokenize(data)
    except Unrepresentable:
        return None
    body = await coder.encode_tokens(tokenized.tokens)
    return CodedSummary(body, len(data), tokenized.piecewise_bytes)


async def decode_text(coder: LosslessCodec, env: pb.Envelope) -> str:
    """The coded text of a SEMANTIC envelope; PreconditionFailed when this server's model
    or engine differs from the one that coded it, DataLoss when it is corrupt."""
    await coder.engine.start()
    coder.check_model(env.model)
    coded = env.semantic.coded
    coder.check_fingerprint(coded.fingerprint)
    # The coded text is at most the summary plus the facts, both bounded by
    # the original; the slack covers the layout's separators.
    bound = 2 * env.original_length + 1024
    tokens = await coder.decode_tokens(coded, bound)
    data = await coder.detokenize(tokens)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise DataLoss(
            "the SEMANTIC envelope's coded summary is not UTF-8: it is corrupted"
        ) from None


async def round_trips(coder: LosslessCodec, coded: CodedSummary, text: str) -> bool:
    """Decode what was just coded: True only when it gives `text` back exactly."""
    try:
        tokens = await coder.decode_tokens(coded.body, 2 * coded.text_bytes + 1024)
    except DataLoss:
        return False
    return await coder.detokenize(tokens) == text.encode("utf-8")
