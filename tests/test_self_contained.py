"""The repository stands on its own: nothing it runs or documents reads a path outside it.

`.ci/run` proves it by running `make test-fast` in a copy with nothing beside it; these
checks name the file and line at once, on any machine.
"""

from __future__ import annotations

import ast
import hashlib
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT

# The corpus's digests, as corpus/README.md gives them.
CORPUS_DIGESTS = {
    "passages.jsonl": "0b8135d0444491092e1dc5e3de818cb04b335962ee7440e7c43641c16039ec44",
    "alice29.txt": "7467306ee0feed4971260f3c87421154a05be571d944e9cb021a5713700c38f0",
}
# Committed reports record the command each was made with, paths as they were then;
# they are history, read by nobody's code (docs/benchmarks/README.md says so).
RECORDS = "docs/benchmarks/"
OUTSIDE_TEXT = re.compile(r"\.\./shared\b|[\"']shared[\"']\s*/|/work/(?:main|shared)\b")
# Build and CI files, and the folder their relative paths are resolved from.
RUNS_FROM = {"Makefile": ".", ".ci/run": ".", "examples/Makefile": "examples"}
RELATIVE = re.compile(r"(?:\.\./)+[\w.-]*")


def _tracked() -> list[str]:
    out = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=False
    )
    if out.returncode != 0:
        pytest.skip("not a git checkout: nothing to list")
    return [p for p in out.stdout.decode().split("\0") if p and (ROOT / p).is_file()]


def _text(path: str) -> str | None:
    try:
        return (ROOT / path).read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None


def test_corpus_is_in_the_repository_unchanged() -> None:
    for name, digest in CORPUS_DIGESTS.items():
        data = (ROOT / "corpus" / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest, f"corpus/{name} changed"
    assert (ROOT / "examples" / "seed-config.yaml").is_file()


def test_no_file_names_a_path_outside_the_repository() -> None:
    found = []
    for path in _tracked():
        if path.startswith(RECORDS):
            continue
        text = _text(path)
        if text is None:
            continue
        for n, line in enumerate(text.splitlines(), 1):
            if OUTSIDE_TEXT.search(line):
                found.append(f"{path}:{n}: {line.strip()}")
    assert not found, "paths outside the repository:\n" + "\n".join(found)


def test_build_and_ci_paths_stay_inside() -> None:
    found = []
    for path, base in RUNS_FROM.items():
        text = _text(path) or ""
        for n, line in enumerate(text.splitlines(), 1):
            for rel in RELATIVE.findall(line):
                target = (ROOT / base / rel).resolve()
                if not target.is_relative_to(ROOT):
                    found.append(f"{path}:{n}: {rel}")
    assert not found, "build or CI paths outside the repository:\n" + "\n".join(found)


def _climbs(node: ast.AST, depth: int) -> bool:
    """Whether `Path(__file__)...parents[N]` or `.parent` chains reach above the root."""
    steps = 0
    while True:
        if (
            isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "parents"
            and isinstance(node.slice, ast.Constant)
        ):
            steps += int(node.slice.value) + 1
            node = node.value.value
        elif isinstance(node, ast.Attribute) and node.attr == "parent":
            steps += 1
            node = node.value
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in {"resolve", "absolute"}
        ):
            node = node.func.value
        else:
            break
    rooted = isinstance(node, ast.Call) and any(
        isinstance(a, ast.Name) and a.id == "__file__" for a in node.args
    )
    # parents[0] is the file's folder: a file `depth` folders down reaches the root in depth + 1.
    return rooted and steps > depth + 1


def test_python_never_climbs_out_of_the_repository() -> None:
    found = []
    for path in _tracked():
        if not path.endswith(".py") or path.startswith(RECORDS):
            continue
        depth = path.count("/")
        tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if _climbs(node, depth):
                found.append(f"{path}:{getattr(node, 'lineno', '?')}")
            # A root found once and then left: ROOT.parent, HERE.parents[1].parent, ...
            if (
                isinstance(node, ast.Attribute)
                and node.attr in {"parent", "parents"}
                and isinstance(node.value, ast.Name)
                and node.value.id == "ROOT"
            ):
                found.append(f"{path}:{node.lineno}: ROOT.{node.attr}")
    assert not found, "code that climbs above the repository:\n" + "\n".join(found)


def test_the_checks_catch_what_they_look_for(tmp_path: Path) -> None:
    # Each check on a planted case, so a broken pattern cannot pass silently. The cases are
    # built here rather than written out, so this file names no outside path itself.
    beside = "shared"  # the folder that sat beside the checkout
    assert OUTSIDE_TEXT.search(f'SEED = ROOT.parent / "{beside}" / "examples"')
    assert OUTSIDE_TEXT.search(f"ALICE29 ?= ../{beside}/corpus/alice29.txt")
    assert not OUTSIDE_TEXT.search("the cache's shared tier")
    climb = ast.parse(f'Path(__file__).resolve().parents[1].parent / "{beside}"', mode="eval")
    assert _climbs(climb.body.left, depth=1)  # type: ignore[attr-defined]
    inside = ast.parse('Path(__file__).resolve().parents[1] / "corpus"', mode="eval")
    assert not _climbs(inside.body.left, depth=1)  # type: ignore[attr-defined]
    assert not (ROOT / "." / ".." / beside).resolve().is_relative_to(ROOT)
