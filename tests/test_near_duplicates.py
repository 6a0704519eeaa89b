"""Near-duplicate detection: MinHash/LSH candidates checked by exact shingle Jaccard."""

from __future__ import annotations

import itertools
import random

import pytest

from llmcompress_server.codecs.semantic.near_duplicates import (
    RECALL_AT_THRESHOLD,
    NearDuplicateIndex,
    candidate_probability,
    jaccard,
    lsh_shape,
    shingles,
    signature,
)
from tests.conftest import load_corpus


def test_jaccard_of_word_shingles() -> None:
    a = shingles("The ticket 4711 was closed by Ann on Monday.")
    b = shingles("the TICKET 4711 was closed by ann on monday")  # case and punctuation
    assert a == b
    c = shingles("The ticket 4712 was closed by Ann on Monday.")
    # One word of nine changed: 3 of 7 shingles differ on each side.
    assert jaccard(a, c) == pytest.approx(4 / 10)
    assert shingles("") == frozenset() and jaccard(frozenset(), frozenset()) == 1.0
    assert len(shingles("two words")) == 1


@pytest.mark.parametrize("threshold", [0.5, 0.8, 0.9, 0.95])
def test_lsh_shape_keeps_pairs_at_the_threshold(threshold: float) -> None:
    bands, rows = lsh_shape(threshold)
    assert bands * rows <= 128
    assert candidate_probability(threshold, bands, rows) >= RECALL_AT_THRESHOLD
    # The next larger row count would miss more pairs at the threshold.
    if rows < 128:
        more = rows + 1
        assert candidate_probability(threshold, 128 // more, more) < RECALL_AT_THRESHOLD


def test_minhash_agreement_estimates_jaccard() -> None:
    texts = [p["text"] for p in load_corpus()[:40]]
    rng = random.Random(7)
    for text in texts[:10]:
        words = text.split()
        for _ in range(3):  # replace a few words: a range of similarities
            words[rng.randrange(len(words))] = f"x{rng.randrange(10**6)}"
        a, b = shingles(text), shingles(" ".join(words))
        agree = float((signature(a) == signature(b)).mean())
        assert agree == pytest.approx(jaccard(a, b), abs=0.15)


def test_index_groups_near_duplicates_and_not_different_passages() -> None:
    passages = [p["text"] for p in load_corpus()]
    index = NearDuplicateIndex(threshold=0.8, capacity=len(passages))
    for i, text in enumerate(passages):
        assert index.match(text) is None, f"passage {i} matched another passage"
        index.add(i, text)
    # The same passage with one word changed finds its original.
    for i in (0, 50, 163):
        words = passages[i].split()
        words[len(words) // 2] = "Ticket-90210"
        found = index.match(" ".join(words))
        assert found is not None and found[0] == i and found[1] >= 0.8


def test_index_forgets_its_oldest_leaders_past_capacity() -> None:
    passages = [p["text"] for p in load_corpus()[:6]]
    index = NearDuplicateIndex(threshold=0.8, capacity=3)
    for i, text in enumerate(passages):
        index.add(i, text)
    assert len(index) == 3
    assert index.match(passages[0]) is None  # dropped out of the window
    found = index.match(passages[5])
    assert found is not None and found[0] == 5
    index.remove(5)
    assert index.match(passages[5]) is None
    with pytest.raises(ValueError, match="threshold"):
        NearDuplicateIndex(threshold=0.0, capacity=3)


def test_all_corpus_pairs_are_far_below_the_default_threshold() -> None:
    """The docstring's figure: different passages share few shingles."""
    sets = [shingles(p["text"]) for p in load_corpus()]
    top = max(jaccard(a, b) for a, b in itertools.combinations(sets, 2))
    assert top < 0.1
