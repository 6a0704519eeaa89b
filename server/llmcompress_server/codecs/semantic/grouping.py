"""Near-duplicate groups in one BatchCompress stream: which SEMANTIC items share a summary.

The first item of a group (its leader) makes the summary; later items whose
text reaches `compression.group_similar_threshold` against it (Jaccard of
word shingles, `near_duplicates.py`) join it and wait for that summary
instead of asking the model for their own. Each member then stores the
leader's summary adapted to its own text (`adapt`: the words where the two
texts differ swapped in) plus its own residual facts, so its envelope is
complete on its own; see the SEMANTIC codec for the per-item quality check.
What tells the items of a group apart is kept in each one (`difference`): a
member's own words where it differs from its leader, and the leader's own
words where it differs from the members that joined before it was stored.
"""

from __future__ import annotations

import asyncio
import difflib
import functools
import re
from collections.abc import Hashable
from dataclasses import dataclass, field

from ...backends import ChatResult
from .entities import Entity, extract_entities
from .near_duplicates import NearDuplicateIndex

# Words, numbers and single symbols, with their positions in the text.
_TOKEN = re.compile(r"\w+|[^\w\s]")
# A leader is told apart from at most this many of its members' texts.
MEMBER_TEXTS = 8
# Punctuation around a whitespace-delimited word that is not part of it ("4711," -> 4711).
_EDGE = "\"'()[]{}<>.,;:!?"


@dataclass(frozen=True)
class SharedSummary:
    """A leader's summary and the text it summarizes."""

    text: str
    summary: str
    result: ChatResult


class Group:
    """One group of near-duplicates: its leader's id, and what its members await from the
    leader: the summary, then (quality gate on) the leader's reconstruction of it."""

    def __init__(self, leader_id: str, leader_text: str = "") -> None:
        self.leader_id = leader_id
        self.leader_text = leader_text
        self.members = 1
        # The texts of the first members to join: what the leader is told apart from.
        self.member_texts: list[str] = []
        # Why the leader got no valid summary from the model (None: it did, or has not
        # tried yet): a near-duplicate asking again would fail the same way.
        self.failure: str | None = None
        loop = asyncio.get_running_loop()
        self._summary: asyncio.Future[SharedSummary | None] = loop.create_future()
        self._rebuilt: asyncio.Future[str | None] = loop.create_future()

    def publish(self, shared: SharedSummary | None) -> None:
        """The leader's summary (None: it has none); only the first call counts."""
        if not self._summary.done():
            self._summary.set_result(shared)

    def publish_rebuilt(self, rebuilt: str | None) -> None:
        """The leader's reconstruction from the shared summary, as decode gives it back (None:
        it has none); only the first call counts."""
        if not self._rebuilt.done():
            self._rebuilt.set_result(rebuilt)

    def fail(self, reason: str) -> None:
        """The model gave the leader no valid summary; members store their text another way."""
        self.failure = reason
        self.close()

    def close(self) -> None:
        """The leader is done: members still waiting make their own summaries and expansions."""
        self.publish(None)
        self.publish_rebuilt(None)

    async def summary(self) -> SharedSummary | None:
        return await asyncio.shield(self._summary)

    async def rebuilt(self) -> str | None:
        return await asyncio.shield(self._rebuilt)


@dataclass
class Membership:
    """How one stream item is grouped: its group, whether it leads it, and (set by the codec)
    whether its envelope holds the group's shared summary."""

    group: Group
    leader: bool
    similarity: float = 1.0
    shared: bool = False


@dataclass
class StreamGroups:
    """The groups of one stream: the last `window` leaders per set of options, findable by
    near-duplicate text."""

    threshold: float
    window: int
    _indexes: dict[Hashable, NearDuplicateIndex[int]] = field(default_factory=dict)
    # By leader: (options, the leader's number in the stream; ids may repeat).
    _groups: dict[tuple[Hashable, int], Group] = field(default_factory=dict)
    _joined: int = 0

    def join(self, item_id: str, text: str, options: Hashable) -> Membership:
        """The group `text` joins among items asked with the same `options` (a new one it
        leads when no leader is similar enough)."""
        index = self._indexes.get(options)
        if index is None:
            index = self._indexes[options] = NearDuplicateIndex[int](self.threshold, self.window)
        self._joined += 1
        found = index.match(text)
        if found is not None:
            leader, similarity, _ = found
            group = self._groups[(options, leader)]
            group.members += 1
            if len(group.member_texts) < MEMBER_TEXTS:
                group.member_texts.append(text)
            return Membership(group, leader=False, similarity=similarity)
        group = self._groups[(options, self._joined)] = Group(item_id, text)
        for gone in index.add(self._joined, text):  # leaders that left the window
            self._groups.pop((options, gone))
        return Membership(group, leader=True)


def _spans(text: str) -> list[tuple[str, int, int]]:
    return [(m.group(), m.start(), m.end()) for m in _TOKEN.finditer(text)]


def substitutions(leader_text: str, text: str) -> list[tuple[str, str]]:
    """Where `text` differs from `leader_text` by replaced words: (leader's words, its words),
    as they are written in each text."""
    a, b = _spans(leader_text), _spans(text)
    matcher = difflib.SequenceMatcher(None, [t for t, _, _ in a], [t for t, _, _ in b], False)
    pairs = []
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "replace":
            old = leader_text[a[i1][1] : a[i2 - 1][2]]
            new = text[b[j1][1] : b[j2 - 1][2]]
            pairs.append((old, new))
    return pairs


def adapt(shared: SharedSummary, text: str) -> str | None:
    """The leader's summary with the leader's words swapped for this text's where the two
    differ; None when it would still state a fact (a number, date, name, ...) of the
    leader's text that `text` does not have."""
    swaps: dict[str, str] = {}
    for old, new in _substitutions(shared.text, text):
        swaps.setdefault(old, new)  # a leader's word replaced two ways: the first one
    summary = shared.summary
    if swaps:
        # One pass, longest first, whole words only (4711 must not match inside 47110), so
        # a swapped-in word is never swapped again.
        olds = sorted(swaps, key=len, reverse=True)
        pattern = r"(?<!\w)(?:" + "|".join(map(re.escape, olds)) + r")(?!\w)"
        summary = re.sub(pattern, lambda m: swaps[m.group()], summary)
    return None if any(_mentions(summary, e) for e in _leader_only(shared.text, text)) else summary


# A member's summary and then its gate's expansion are adapted with the same two texts:
# the diff and the entity scan (tens of ms on the event loop) are made once.
@functools.lru_cache(maxsize=64)
def _substitutions(leader_text: str, text: str) -> tuple[tuple[str, str], ...]:
    return tuple(substitutions(leader_text, text))


@functools.lru_cache(maxsize=64)
def _leader_only(leader_text: str, text: str) -> tuple[str, ...]:
    """The entities of the leader's text that `text` does not mention."""
    return tuple(e.text for e in extract_entities(leader_text) if not _mentions(text, e.text))


def _mentions(text: str, words: str) -> bool:
    return re.search(r"(?<!\w)" + re.escape(words) + r"(?!\w)", text) is not None


def own_words(reference: str, text: str) -> list[Entity]:
    """The words of `text` where it differs from `reference` (replaced or inserted), each
    widened to its whole whitespace-delimited word (TICKET-1011, not 1011) and stripped of
    edge punctuation, in order, each once: kind "own"."""
    return [Entity("own", w) for w in _own_words(reference, text)]


@functools.lru_cache(maxsize=256)
def _own_words(reference: str, text: str) -> tuple[str, ...]:
    a, b = _spans(reference), _spans(text)
    matcher = difflib.SequenceMatcher(None, [t for t, _, _ in a], [t for t, _, _ in b], False)
    out: list[str] = []
    end = -1
    for tag, _, _, j1, j2 in matcher.get_opcodes():
        if tag not in ("replace", "insert"):
            continue
        start, stop = b[j1][1], b[j2 - 1][2]
        while start > 0 and not text[start - 1].isspace():
            start -= 1
        while stop < len(text) and not text[stop].isspace():
            stop += 1
        if start < end:  # the same word as the last difference
            continue
        end = stop
        for word in text[start:stop].split():
            word = word.strip(_EDGE)
            if word and word not in out:
                out.append(word)
    return tuple(out)


def difference(membership: Membership, text: str) -> list[Entity]:
    """What tells this item apart from its group: a member's own words against its leader,
    a leader's own words against the members that have joined it so far."""
    group = membership.group
    references = list(group.member_texts) if membership.leader else [group.leader_text]
    out: list[Entity] = []
    for reference in references:
        for word in own_words(reference, text):
            if word not in out:
                out.append(word)
    return out
