"""Deterministic entity extraction for SEMANTIC mode: regexes and capitalisation heuristics.

Finds e-mails, URLs, identifiers (codes such as TICKET-1003 or INV-2024-0042,
versions such as v2.3.1, file paths and names), dates, times, money,
percentages, numbers and proper names in English prose and chat logs, verbatim
and in order of first appearance. No model is involved, so compress and
reconstruct agree on it.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass

_MONTHS = (
    "January|February|March|April|May|June|July|August|September|October|November|December|"
    "Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec"
)
_WEEKDAYS = "Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday"
_NUM = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?"
# File extensions a bare file name is recognised by ("report.pdf"); a path needs none.
_EXTENSIONS = (
    "py|txt|md|rst|json|yaml|yml|toml|ini|cfg|conf|csv|tsv|log|pdf|docx?|xlsx?|pptx?|png|jpe?g|"
    "gif|svg|zip|tar|gz|tgz|bz2|xz|sh|c|h|cc|cpp|hpp|rs|go|java|js|ts|tsx|html?|css|xml|sql|"
    "proto|lock|exe|dll|so|whl|deb|rpm|bin|dat|bak|tmp"
)
# Identifiers: what tells one record from its near-duplicates. A code is capitals (and
# digits) joined to more parts by - _ or #, with a digit somewhere (TICKET-1003,
# INV-2024-0042, ABC_12; not NATO or well-known); a version has two dots or a leading v
# (v2.3.1, 1.4.0, v2.3; not an IP address, 10.20.4.11, which names a host, not a record:
# kept at any cost, a hosts list would be kept whole); a path has a slash between two
# parts (/etc/hosts, ~/a/b,
# src/main.py, C:\\logs\\a.txt); a file name ends in a known extension.
_IDENTIFIER = re.compile(
    r"(?<![\w/\\.~-])(?:"
    r"(?=[A-Z0-9]*[-_#])(?=[\w#-]*\d)[A-Z][A-Z0-9]*(?:[-_#][A-Za-z0-9]+)+"
    r"|v\d+(?:\.\d+)+(?:-[A-Za-z0-9]+(?:\.[A-Za-z0-9]+)*)?"
    r"|\d+(?:\.\d+){2}(?:-[A-Za-z0-9]+(?:\.[A-Za-z0-9]+)*)?"
    r"|(?:~|\.{1,2})?/[\w.-]*\w(?:/[\w.-]*\w)+|[A-Za-z]:(?:\\[\w.-]*\w)+"
    r"|[\w-]+(?:/[\w.-]+)+\.(?:" + _EXTENSIONS + r")"
    r"|[\w-]+(?:\.[\w-]+)*\.(?:" + _EXTENSIONS + r")"
    r")(?![\w/\\#-]|\.\w)"
)

# Order matters: earlier kinds claim their span first, so "$5.2 million" is
# money, not the number 5.2, and "10:30" is a time, not two numbers. A leading
# lookahead names the characters a match can start with: the regex engine then
# skips other positions quickly (3x faster on prose), and matches the same.
_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("email", re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}\b")),
    ("url", re.compile(r"\b(?:https?://|ftp://|www\.)[^\s<>()\"']+[^\s<>()\"'.,;:!?]")),
    ("id", _IDENTIFIER),
    (
        "date",
        re.compile(
            rf"(?=[A-Z\d])(?:\b(?:(?:{_WEEKDAYS}),?\s+)?(?:(?:{_MONTHS})\.?\s+\d{{1,2}}(?:st|nd|rd|th)?"
            rf"(?:,?\s+\d{{4}})?|\d{{1,2}}(?:st|nd|rd|th)?\s+(?:{_MONTHS})\.?(?:,?\s+\d{{4}})?"
            rf"|(?:{_MONTHS})\.?\s+\d{{4}})\b"
            r"|\b\d{4}-\d{2}-\d{2}\b|\b\d{1,2}/\d{1,2}/\d{2,4}\b)"
        ),
    ),
    (
        "time",
        re.compile(
            r"(?=\d)(?:\b\d{1,2}:\d{2}(?::\d{2})?(?:\s?[AaPp]\.?[Mm]\.?)?(?![\w:])"
            r"|\b\d{1,2}\s?[AaPp]\.?[Mm]\.?(?!\w))"
        ),
    ),
    (
        "money",
        re.compile(
            rf"(?=[$£€¥\d])(?:(?:[$£€¥]\s?(?:{_NUM})(?:\s?(?:million|billion|thousand|[kKmMbB])\b)?)"
            rf"|\b(?:{_NUM})\s?(?:dollars|pounds|euros|cents|USD|EUR|GBP)\b)"
        ),
    ),
    ("percent", re.compile(rf"(?=\d)\b(?:{_NUM})\s?(?:%|percent\b|per cent\b)")),
    # Years like 1990 and the 1990s are numbers too; keep the decade suffix.
    ("number", re.compile(rf"(?=[-\d])(?<![\w.])-?(?:{_NUM})(?:s\b|(?:st|nd|rd|th)\b)?(?![\w])")),
]
# Something every match of a kind contains, found by a quick scan: a text without
# it skips that kind's (much slower) pattern. Same results, less CPU per text.
_HINTS: dict[str, tuple[re.Pattern[str], ...]] = {
    "email": (re.compile("@"),),
    "url": (re.compile(r"://|www\."),),
    "id": (
        re.compile(r"[A-Z0-9][-_#][A-Za-z0-9]"),
        re.compile(r"\d\.\d+\.\d|v\d\.\d"),
        re.compile(r"\w/\w|[A-Za-z]:\\"),
        re.compile(r"\w\.(?:" + _EXTENSIONS + r")\b"),
    ),
    "date": (re.compile(_MONTHS), re.compile(r"\d[-/]\d")),
    "time": (re.compile(r"\d(?::\d|\s?[AaPp]\.?[Mm])"),),
    "money": (
        re.compile("[$£€¥]"),
        re.compile(r"\d\s?(?:dollars|pounds|euros|cents|USD|EUR|GBP)"),
    ),
    "percent": (re.compile(r"\d\s?(?:%|per)"),),
    "number": (re.compile(r"\d"),),
}

# Capitalised words that start sentences or are function words, not names.
_STOP = frozenset(
    """a an the and or but if then so of in on at to for from by with as is are was were be
    been i i'm i've i'll i'd me my we our you your he him his she her it its they them their
    this that these those there here what which who whom whose when where why how all any
    some no not yes oh ah well now then do does did done can could will would shall should
    may might must let said say says one two three first next last also however after before
    while though although because since until unless upon into out up down over under again
    very just only mr mrs ms dr st sir madam lord lady god""".split()  # noqa: SIM905
)
_NAME_WORD = r"[A-Z][a-zA-Z'\u2019\-]*[a-zA-Z]|[A-Z]\."
_NAME_LINK = r"(?:de|da|del|van|von|der|la|le|of|and|&)"
# Names never span a line break: in lists and transcripts lines are separate entries.
_GAP = r"[ \t]+"
_NAME = re.compile(
    rf"(?=[A-Z])(?<![\w'\u2019])(?:{_NAME_WORD})(?:{_GAP}(?:{_NAME_LINK}{_GAP})?(?:{_NAME_WORD}))*"
    r"(?![\w'\u2019])"
)
# A chat or play speaker tag at the start of a line: "ORLANDO  I am..." or "alice: hi".
_SPEAKER = re.compile(r"^[ \t]*([A-Z][A-Z'\-]+(?: [A-Z][A-Z'\-]+)?)(?=[ \t]+\S|:)", re.M)
_CHAT_SPEAKER = re.compile(
    r"^[ \t]*(?:\[[^\]\n]{1,30}\][ \t]*)?([A-Za-z][\w.\-]{1,30}):[ \t]", re.M
)
_ACRONYM = re.compile(r"[A-Z][A-Z'\-]+")
_NAME_LINK_WORD = re.compile(_NAME_LINK)
_INITIAL = re.compile(r"[A-Z]\.")
_LOWER_WORD = re.compile(r"[a-z']+")
_SENTENCE_START = re.compile(r"(?:^|[.!?:;\"\u201c`'(\-]\s*|\n\s*)$")


@dataclass(frozen=True)
class Entity:
    kind: str  # email, url, id, date, time, money, percent, number, name
    text: str


def _sentence_initial(text: str, start: int) -> bool:
    return bool(_SENTENCE_START.search(text[max(0, start - 4) : start]))


def _trim_name(words: list[str]) -> list[str]:
    while words and words[0].lower().strip(".") in _STOP:
        words = words[1:]
    while words and (
        words[-1].lower().strip(".") in _STOP
        or _NAME_LINK_WORD.fullmatch(words[-1])
        or _INITIAL.fullmatch(words[-1])
    ):
        words = words[:-1]
    return words


class _Claimed:
    """Spans claimed by earlier kinds: disjoint, so sorted by start they are sorted by end
    too, and an overlap test is one bisection instead of a scan of every span."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []

    def overlaps(self, start: int, end: int) -> bool:
        i = bisect_left(self.starts, end)  # the spans starting before `end`
        return i > 0 and self.ends[i - 1] > start

    def add(self, start: int, end: int) -> None:
        i = bisect_left(self.starts, start)
        self.starts.insert(i, start)
        self.ends.insert(i, end)


def _names(text: str, taken: _Claimed) -> list[tuple[int, str]]:
    # A word capitalised mid-sentence anywhere marks it as a name everywhere,
    # including at sentence starts ("Alice was ..." once "said Alice" is seen).
    mid_sentence: set[str] = set()
    candidates: list[tuple[int, str, bool, list[str]]] = []
    for m in _NAME.finditer(text):
        start, end = m.span()
        if taken.overlaps(start, end):
            continue
        initial = _sentence_initial(text, start)
        span = m.group(0)
        words = span.split()
        candidates.append((start, span, initial, words))
        for word in words[1:] if initial else words:
            if word.lower().strip(".") not in _STOP:
                mid_sentence.add(word)
    found: list[tuple[int, str]] = []
    for start, span, initial, words in candidates:
        # All-caps surnames open sentences in transcripts ("TWOHIG stressed ...").
        # A sentence's first word is capitalised anyway: it counts as part of a
        # name only when a capitalised word follows it ("Maria Lopez approved").
        if (
            initial
            and len(words) == 1
            and words[0] not in mid_sentence
            and not _ACRONYM.fullmatch(words[0])
        ):
            words = words[1:]
        words = _trim_name(words)
        if not words:
            continue
        name = " ".join(words)
        if len(words) == 1 and (len(name) < 2 or name.endswith(".")):
            continue
        found.append((start + span.index(words[0]), name))
    return found


def extract_entities(text: str) -> list[Entity]:
    """Typed entities in order of first appearance, each distinct (kind, text) once."""
    spans: list[tuple[int, int, str, str]] = []
    taken = _Claimed()
    for kind, pattern in _PATTERNS:
        if not any(hint.search(text) for hint in _HINTS[kind]):
            continue
        for m in pattern.finditer(text):
            start, end = m.span()
            if taken.overlaps(start, end):
                continue
            value = " ".join(m.group(0).split())
            if kind == "number" and len(value.lstrip("-")) < 2:
                continue  # single digits are everywhere and say little
            spans.append((start, end, kind, value))
            taken.add(start, end)
    speakers: set[str] = set()
    for pattern in (_SPEAKER, _CHAT_SPEAKER):
        tags = list(pattern.finditer(text))
        if pattern is _CHAT_SPEAKER and len(tags) < 2:
            continue
        if pattern is _CHAT_SPEAKER and len(tags) < _nonblank_lines(text) // 4:
            continue  # "education: you have..." once in prose is not a chat log
        for m in tags:
            name = m.group(1)
            start, end = m.span(1)
            if name.lower() in _STOP or taken.overlaps(start, end):
                continue
            speakers.add(name)
            spans.append((start, end, "name", name))
            taken.add(start, end)
    words: set[str] | None = None

    def lowered(word: str) -> bool:
        nonlocal words
        if words is None:
            words = set(_LOWER_WORD.findall(text))
        return word.lower() in words or word.lower() in _STOP

    for start, name in _names(text, taken):
        if name.isupper() and " " not in name and name not in speakers and lowered(name):
            continue  # a shouted word ("WOULD"), not an acronym or a surname like TWOHIG
        spans.append((start, start + len(name), "name", name))
    spans.sort()
    seen: set[str] = set()
    out: list[Entity] = []
    for _, _, kind, value in spans:
        if value in seen:
            continue
        seen.add(value)
        out.append(Entity(kind, value))
    return out


def _nonblank_lines(text: str) -> int:
    return max(1, sum(1 for line in text.splitlines() if line.strip()))


def missing_entities(text: str, entities: Sequence[Entity]) -> list[Entity]:
    """The entities whose text does not occur in `text` (runs of whitespace count as one space)."""
    flat = " ".join(text.split())
    return [e for e in entities if " ".join(e.text.split()) not in flat]
