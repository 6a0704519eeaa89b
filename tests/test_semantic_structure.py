"""Extractive structure: speakers, records, lists and headers survive any extract; then round
trips of the evaluation set's dialogue and line-structured texts through the real model."""

from __future__ import annotations

import asyncio
import itertools
import re
from typing import Any

import pytest

from bench.semantic_eval import attribution, load
from llmcompress_server.api.server import build_codecs
from llmcompress_server.backends.embedded import EmbeddedEngine
from llmcompress_server.codecs import CompressOptions
from llmcompress_server.codecs.semantic import SemanticCodec
from llmcompress_server.codecs.semantic.extractive import Ranked, read_structure, render
from llmcompress_server.codecs.semantic.quality import body_of
from llmcompress_server.core.domain import Mode
from llmcompress_server.core.envelope import open_envelope, seal
from llmcompress_server.core.errors import CannotEncode
from llmcompress_server.telemetry.stages import StageClock
from tests.conftest import make_config

CHAT = (
    "## Standup, 3 June\n"
    "\n"
    "[09:01] Ana: I loved that book as a kid. It made me cry twice.\n"
    "[09:02] Ben: It made me appreciate my friends. I read it in 1998.\n"
    "[09:03] Ana: Same here. The sequel came out on March 3, 2001.\n"
)

RECORDS = "host: db-01\nrole: primary\nip: 10.0.0.1\n\nhost: db-02\nrole: replica\nip: 10.0.0.2\n"

LOG = (
    "2026-05-11T08:00:01Z INFO  scheduler  started job id=7731\n"
    "2026-05-11T08:04:29Z WARN  export     slow query took 48.2s (threshold 30s)\n"
    "2026-05-11T08:21:10Z ERROR uploader   upload failed: 503 SlowDown\n"
)

PLAY = (
    "ORLANDO What passion hangs these weights upon my tongue?\n"
    " I cannot speak to her, yet she urged conference.\n"
    "\n"
    "LE BEAU Good sir, I do in friendship counsel you\n"
    " To leave this place.\n"
    "\n"
    "CELIA Why, cousin! why, Rosalind!\n"
)

SPEAKER = re.compile(r"^(?:\[[^\]]*\] )?(\w+): |^([A-Z]{2,}(?: [A-Z]{2,})*) ")


def speakers_of(text: str) -> dict[str, str | None]:
    """Each sentence of `text` -> the speaker of the line holding it."""
    out: dict[str, str | None] = {}
    who: str | None = None
    for line in text.split("\n"):
        m = SPEAKER.match(line)
        if m:
            who = m.group(1) or m.group(2)
            line = line[m.end() :]
        elif not line.startswith(" "):
            who = None
        for s in re.split(r"(?<=[.!?])\s+", line.strip()):
            if s:
                out[s] = who
    return out


def test_every_subset_of_a_chat_keeps_speakers_and_lines() -> None:
    s = read_structure(CHAT)
    original = speakers_of(CHAT)
    units = range(len(s.units))
    for k in range(1, len(s.units) + 1):
        for kept in itertools.combinations(units, k):
            body = render(s, kept)
            for sentence, who in speakers_of(body).items():
                if sentence in original:
                    assert original[sentence] == who, (kept, body)


def test_chat_units_and_labels() -> None:
    s = read_structure(CHAT)
    assert s.blocks[0].header and s.units[0].text == "## Standup, 3 June"
    turns = [b for b in s.blocks if not b.header]
    assert [b.label for b in turns] == ["[09:01] Ana: ", "[09:02] Ben: ", "[09:03] Ana: "]
    assert all(b.frame == 0 for b in turns)  # the header frames every turn
    # "Ben: It made me appreciate my friends." kept alone keeps its label.
    i = next(i for i, u in enumerate(s.units) if u.text.startswith("It made me appreciate"))
    assert render(s, [i]) == "[09:02] Ben: It made me appreciate my friends."


def test_timestamps_are_written_when_the_budget_allows() -> None:
    """A turn's speaker is part of its sentences; its timestamp, like a header, frames them
    and is kept only with room to spare."""
    s = read_structure(CHAT)
    i = next(i for i, u in enumerate(s.units) if u.text.startswith("It made me appreciate"))
    assert s.blocks[s.units[i].block].stamp == "[09:02] "
    ranked = Ranked(s, [i])
    tight = len("Ben: It made me appreciate my friends.") + 1
    assert ranked.pick(tight) == "Ben: It made me appreciate my friends."
    roomy = ranked.pick(tight + len("[09:02] ") + len("## Standup, 3 June") + 1)
    assert roomy == "## Standup, 3 June\n[09:02] Ben: It made me appreciate my friends."


def test_records_frame_their_fields() -> None:
    s = read_structure(RECORDS)
    ip2 = next(i for i, u in enumerate(s.units) if u.text == "10.0.0.2")
    head = s.blocks[s.units[ip2].block].frame
    assert s.blocks[head].label == "host: " and s.units[head].text == "db-02"
    assert render(s, [head, ip2]) == "host: db-02\nip: 10.0.0.2"


def test_log_lines_are_whole_units() -> None:
    s = read_structure(LOG)
    assert [u.text for u in s.units] == LOG.strip().split("\n")
    assert render(s, [0, 2]) == "\n".join(LOG.strip().split("\n")[::2])


def test_play_turns_run_over_indented_lines() -> None:
    s = read_structure(PLAY)
    labels = [s.blocks[u.block].label for u in s.units]
    assert labels[:2] == ["ORLANDO ", "ORLANDO "]
    assert s.units[1].text == "I cannot speak to her, yet she urged conference."
    assert render(s, [1]) == "ORLANDO I cannot speak to her, yet she urged conference."
    # Adjacent kept units keep their line wrap and indent.
    assert render(s, [0, 1]) == PLAY.split("\n\n")[0]


def test_full_render_is_the_original() -> None:
    for text in (CHAT, RECORDS, LOG, PLAY):
        s = read_structure(text)
        assert " ".join(render(s, range(len(s.units))).split()) == " ".join(text.split())


# ---- round trips on the evaluation set's texts (the real model) ------------------------------

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_LEAD = re.compile(r"^(?:[-*]|\d+[.)])\s+")


async def _round_trips(ids: set[str] | None, kind: str) -> list[tuple[Any, float, str]]:
    """(text, target, reconstruction) for the set's texts of `kind` at targets 8 and 16 through
    the default SEMANTIC codec (extractive, model-coded); texts too short or below the gate at
    a target are skipped (the pipeline stores them in another mode)."""
    config = make_config(model={"embedded": {"workers": 2}})
    engine = EmbeddedEngine(config.model.embedded)
    await engine.start()
    codec = build_codecs(config, engine, engine)[Mode.SEMANTIC]
    assert isinstance(codec, SemanticCodec)
    items = [i for i in load() if i.kind == kind and (ids is None or i.id in ids)]
    gate = asyncio.Semaphore(2)
    out: list[tuple[Any, float, str]] = []

    async def one(item: Any, target: float) -> None:
        async with gate:
            try:
                enc = await codec.encode(
                    item.text, CompressOptions(target_ratio=target), StageClock()
                )
            except CannotEncode:
                return
            blob = seal(item.text.encode("utf-8"), enc.envelope, enc.model)
            back = await codec.decode(open_envelope(blob), StageClock())
            out.append((item, target, back.text))

    try:
        await asyncio.gather(*(one(i, t) for i in items for t in (8.0, 16.0)))
    finally:
        await engine.close()
    return out


@pytest.mark.model
@pytest.mark.timeout(3600)
async def test_dialogue_round_trips_keep_every_speaker() -> None:
    """Every dialogue text of the evaluation set at targets 8 and 16: each kept sentence is
    under the speaker who said it (bench.semantic_eval's attribution check)."""
    trips = await _round_trips(None, "dialogue")
    kept = 0
    for item, target, text in trips:
        found = attribution(item.text, body_of(text), item.speaker_pattern)
        assert found.misattributed == [], (item.id, target, found.misattributed)
        kept += found.kept
    assert len(trips) >= 10 and kept >= 30, (len(trips), kept)


@pytest.mark.model
@pytest.mark.timeout(3600)
async def test_line_structured_texts_keep_their_lines() -> None:
    """Logs, `key: value` records, lists and release notes at targets 8 and 16: every line of
    the body is a line of the original, or a list item's bullet with some of that item's
    sentences."""
    trips = await _round_trips(None, "lines")
    assert trips
    for item, target, text in trips:
        lines = [line.strip() for line in item.text.splitlines() if line.strip()]
        for line in body_of(text).splitlines():
            line = line.strip()
            if not line or line in lines:
                continue
            bullet = _LEAD.match(line)
            assert bullet, (item.id, target, line)
            parts = _SENTENCE_END.split(line[bullet.end() :])
            assert any(
                o.startswith(bullet.group(0)) and all(p in o for p in parts) for o in lines
            ), (item.id, target, line)
