"""SEMANTIC's evaluation set: texts with hand-written facts, and the checks that score a
reconstruction against them (fact retention outside the Facts line, misattributed sentences).

See README.md in this folder for how the set was made and its file format.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
FACTS = HERE / "facts.json"
# The development set: the same format, for tuning SEMANTIC; this set stays held out.
DEV_FACTS = HERE.parent / "semantic_dev" / "facts.json"
CORPUS = HERE.parents[1] / "corpus" / "passages.jsonl"

# The line SEMANTIC's extractive reconstruction appends with the stored entities
# its sentences lack (codecs/semantic.py, keep_extract). It is a list of names
# out of context, so a fact found only there does not count as kept.
FACTS_LINE = "Facts: "


@dataclass(frozen=True)
class Fact:
    question: str
    answer: str  # a short verbatim string of the original
    speaker: str | None = None  # dialogue: who said it
    sentence: str | None = None  # dialogue: the sentence that says it, verbatim


@dataclass(frozen=True)
class EvalText:
    id: str
    kind: str  # "dialogue", "lines" or "prose"
    text: str
    facts: tuple[Fact, ...]
    speaker_pattern: re.Pattern[str] | None  # dialogue only: group "speaker" names a turn's speaker

    @property
    def dialogue(self) -> bool:
        return self.speaker_pattern is not None


def normalize(text: str) -> str:
    """Whitespace runs as one space: hard-wrapped prose matches an answer written on one line."""
    return " ".join(text.split())


def body_of(reconstruction: str) -> str:
    """The reconstruction without its trailing Facts line."""
    if reconstruction.startswith(FACTS_LINE):
        return ""
    head, sep, _ = reconstruction.rpartition("\n" + FACTS_LINE)
    return head if sep else reconstruction


@dataclass(frozen=True)
class Turn:
    speaker: str | None  # None: text outside any turn (headers, narration)
    text: str  # the turn's words without its label (and timestamp)


def turns(text: str, pattern: re.Pattern[str]) -> list[Turn]:
    """The text as turns: a line matching `pattern` opens one, which runs over the following
    lines up to a blank line, a header (`#`) or the next turn; other lines stand alone."""
    out: list[Turn] = []
    speaker: str | None = None
    lines: list[str] = []

    def close() -> None:
        if lines:
            out.append(Turn(speaker, normalize(" ".join(lines))))
        lines.clear()

    for line in text.split("\n"):
        m = pattern.match(line)
        if m:
            close()
            speaker = m.group("speaker")
            lines.append(line[m.end() :])
        elif not line.strip() or line.lstrip().startswith("#"):
            close()
            speaker = None
            if line.strip():
                lines.append(line)
                close()
        else:
            if speaker is None:
                close()
            lines.append(line)
            if speaker is None:
                close()
    close()
    return out


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def sentences(turn_text: str) -> list[str]:
    return [s for s in _SENTENCE_END.split(turn_text) if s.strip()]


@dataclass(frozen=True)
class Attribution:
    kept: int  # sentences of the body found in the original
    misattributed: list[tuple[str, str | None, list[str | None]]]  # (sentence, got, want)


def attribution(original: str, body: str, pattern: re.Pattern[str]) -> Attribution:
    """Every sentence of the body that occurs in the original, checked for its speaker: the
    body's turn that holds it must be one the original gives it to (None = no speaker)."""
    source = turns(original, pattern)
    kept = 0
    wrong: list[tuple[str, str | None, list[str | None]]] = []
    for turn in turns(body, pattern):
        for s in sentences(turn.text):
            owners = sorted({t.speaker for t in source if s in t.text}, key=str)
            if not owners:
                continue  # not from the original (or cut across turns): not a kept sentence
            kept += 1
            if turn.speaker not in owners:
                wrong.append((s, turn.speaker, owners))
    return Attribution(kept, wrong)


def kept_facts(body: str, facts: tuple[Fact, ...]) -> list[bool]:
    """Whether each fact's answer appears verbatim (whitespace aside) in the body."""
    flat = normalize(body)
    return [normalize(f.answer) in flat for f in facts]


def _load_text(entry: dict[str, str], corpus: dict[str, str], folder: Path) -> str:
    if "file" in entry:
        return (folder / entry["file"]).read_text(encoding="utf-8")
    text = corpus[entry["corpus"]]
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    if digest != entry["sha256"]:
        raise ValueError(
            f"{entry['id']}: corpus passage {entry['corpus']} changed (sha256 {digest[:12]}..., "
            f"the facts were written for {entry['sha256'][:12]}...)"
        )
    return text


def validate(item: EvalText) -> None:
    """ValueError unless every answer is in the text and every dialogue fact's sentence is
    in a turn of its speaker and holds its answer."""
    flat = normalize(item.text)
    source = turns(item.text, item.speaker_pattern) if item.speaker_pattern else []
    for f in item.facts:
        where = f"{item.id}: fact {f.question!r}"
        if normalize(f.answer) not in flat:
            raise ValueError(f"{where}: answer {f.answer!r} is not in the text")
        if f.speaker is None:
            continue
        if f.sentence is None or normalize(f.answer) not in normalize(f.sentence):
            raise ValueError(f"{where}: its sentence does not hold the answer")
        if not any(t.speaker == f.speaker and normalize(f.sentence) in t.text for t in source):
            raise ValueError(f"{where}: no turn of {f.speaker} holds {f.sentence!r}")


def load(facts: Path = FACTS, corpus_path: Path = CORPUS) -> list[EvalText]:
    """The evaluation set (or another set in its format, such as the development set
    `DEV_FACTS`), checked against its texts."""
    spec = json.loads(facts.read_text(encoding="utf-8"))
    patterns = {k: re.compile(v) for k, v in spec["speaker_patterns"].items()}
    corpus: dict[str, str] = {}
    if any("corpus" in e for e in spec["texts"]):
        for line in corpus_path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                corpus[row["id"]] = row["text"]
    items = []
    for entry in spec["texts"]:
        facts_of = tuple(
            Fact(f["q"], f["a"], f.get("speaker"), f.get("sentence")) for f in entry["facts"]
        )
        pattern = patterns[entry["speakers"]] if "speakers" in entry else None
        text = _load_text(entry, corpus, facts.parent)
        item = EvalText(entry["id"], entry["kind"], text, facts_of, pattern)
        validate(item)
        items.append(item)
    return items
