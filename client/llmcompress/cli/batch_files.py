"""The JSONL files of `llmc batch` / `llmc unbatch`: corpus in, envelopes out, resume.

Corpus lines are `{"id": ..., "text": ...}`, optionally with `"mode"` (zstd, lossless,
semantic, default), `"target_ratio"` (a number above 1) and `"dictionary"` (a corpus
dictionary's name or id) for that item instead of `--mode`, `--target-ratio` and
`--dictionary`. Output lines are
`{"id", "envelope" (base64), "stats": {...}}` or `{"id", "error": {"code", "message"}}`,
one per item, flushed as written, so a killed run leaves at most one torn
last line, which `--resume` cuts off.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .._errors import LLMCompressError
from .._results import BatchItem, CompressResult, Mode

MODE_NAMES = {m.value for m in Mode}


class CorpusError(ValueError):
    """A corpus line is not a JSON object with a string-able `id` and a string `text`."""


def read_corpus(stream: IO[str], name: str, skip: set[str]) -> Iterator[BatchItem]:
    """Items of a JSONL corpus, lazily; ids in `skip` are passed over."""
    for lineno, line in enumerate(stream, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CorpusError(f"{name}:{lineno}: not JSON ({exc.msg})") from None
        if not isinstance(obj, dict) or "id" not in obj or not isinstance(obj.get("text"), str):
            raise CorpusError(
                f'{name}:{lineno}: each line needs {{"id": ..., "text": "..."}}, '
                f"got keys {sorted(obj) if isinstance(obj, dict) else type(obj).__name__}"
            )
        mode = obj.get("mode")
        if mode is not None and mode not in MODE_NAMES:
            raise CorpusError(
                f"{name}:{lineno}: mode {mode!r} is not one of {', '.join(sorted(MODE_NAMES))}"
            )
        ratio = obj.get("target_ratio")
        if ratio is not None and (
            isinstance(ratio, bool) or not isinstance(ratio, int | float) or not ratio > 1
        ):
            raise CorpusError(
                f"{name}:{lineno}: target_ratio must be a number above 1, got {ratio!r}"
            )
        dictionary = obj.get("dictionary")
        if dictionary is not None and not isinstance(dictionary, str):
            raise CorpusError(
                f"{name}:{lineno}: dictionary must be a name or id (a string), got {dictionary!r}"
            )
        ident = str(obj["id"])
        if ident not in skip:
            yield BatchItem(
                ident, obj["text"], mode=mode, target_ratio=ratio, dictionary=dictionary
            )


def count_lines(path: Path) -> int:
    """Non-empty lines, read in chunks (a total for the progress bar)."""
    count = 0
    with path.open("rb") as f:
        last = b"\n"
        while chunk := f.read(1 << 20):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    return count + (last != b"\n")


def result_line(ident: str, result: CompressResult) -> str:
    s = result.stats
    stats: dict[str, Any] = {
        "mode": s.mode.value,
        "original_bytes": s.original_bytes,
        "compressed_bytes": s.compressed_bytes,
        "ratio": round(s.ratio, 4),
        "model": s.model,
        "degraded": s.degraded,
        "cache_hit": s.cache_hit,
        "reason": s.reason,
        "seconds": round(s.total_seconds, 6),
    }
    if s.quality is not None:
        stats["quality"] = round(s.quality.overall, 4)
    if s.dictionary:
        stats["dictionary"] = s.dictionary
    envelope = base64.b64encode(result.envelope).decode("ascii")
    return json.dumps({"id": ident, "envelope": envelope, "stats": stats}) + "\n"


def error_line(ident: str, error: LLMCompressError) -> str:
    return (
        json.dumps({"id": ident, "error": {"code": error.code.name, "message": error.details}})
        + "\n"
    )


@dataclass
class ResumeState:
    """What an earlier run left in OUT."""

    done: set[str] = field(default_factory=set)
    failed_dropped: int = 0
    torn_bytes: int = 0


def prepare_resume(out: Path) -> ResumeState:
    """Ids OUT already holds an envelope for; cuts a torn last line and drops
    error lines (those items are tried again)."""
    state = ResumeState()
    if not out.exists():
        return state
    keep_upto = 0  # byte offset after the last complete line
    has_errors = False
    with out.open("rb") as f:
        for raw in f:
            if not raw.endswith(b"\n"):
                break
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError:
                break  # a torn line followed by nothing usable
            keep_upto += len(raw)
            if "envelope" in obj:
                state.done.add(str(obj["id"]))
            else:
                has_errors = True
    size = out.stat().st_size
    state.torn_bytes = size - keep_upto
    if not has_errors:
        if state.torn_bytes:
            with out.open("r+b") as f:
                f.truncate(keep_upto)
        return state
    # Rewrite without the error lines so every id ends with one line.
    tmp = out.with_name(out.name + ".resume-tmp")
    with out.open("rb") as src, tmp.open("wb") as dst:
        read = 0
        for raw in src:
            read += len(raw)
            if read > keep_upto:
                break
            if b'"envelope"' in raw and "envelope" in json.loads(raw):
                dst.write(raw)
            else:
                state.failed_dropped += 1
    os.replace(tmp, out)
    return state


@dataclass(frozen=True)
class OutLine:
    id: str
    envelope: bytes | None
    error: str | None


def read_out(stream: IO[str], name: str) -> Iterator[OutLine]:
    """Lines of a `llmc batch` output, lazily."""
    for lineno, line in enumerate(stream, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            ident = str(obj["id"])
        except (json.JSONDecodeError, KeyError, TypeError):
            raise CorpusError(f"{name}:{lineno}: not a `llmc batch` output line") from None
        if "envelope" in obj:
            yield OutLine(ident, base64.b64decode(obj["envelope"]), None)
        else:
            err = obj.get("error") or {}
            yield OutLine(ident, None, f"{err.get('code')}: {err.get('message')}")
