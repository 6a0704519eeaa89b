"""Choosing a corpus dictionary's primer: the training samples LOSSLESS reads before every
text coded with the dictionary, picked for what they share with the others.

Measuring each sample's effect on the others' code length with the model costs one
coding pass per candidate (minutes for a thousand samples on a CPU), so the choice is
made on the text: a greedy cover of the word n-grams many samples share, each gram
worth log2 of the number of samples it occurs in, per token the sample costs
(`bench/primer.py` measures it against other choices).
"""

from __future__ import annotations

import heapq
import math
import random
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence

# Between samples, and after the last: the text coded next starts a record of its own.
SEPARATOR = "\n\n"
# Samples looked at, at most (a fixed pseudo-random subset beyond): bounds the work.
MAX_SAMPLES = 4000
# Characters a token covers, about, in English text: sizes the pieces of long samples.
CHARS_PER_TOKEN = 4
# Word n-grams of these lengths are what samples share.
GRAM_LENGTHS = (1, 2, 3)

_WORD = re.compile(r"\w+|[^\w\s]")

Gram = tuple[str, ...]
CountTokens = Callable[[str], Awaitable[int]]


def grams(text: str) -> set[Gram]:
    words = _WORD.findall(text)
    return {tuple(words[i : i + n]) for n in GRAM_LENGTHS for i in range(len(words) - n + 1)}


def pieces(sample: str, most: int) -> list[str]:
    """`sample` whole when it has at most `most` characters, else its paragraphs (blank-line
    separated), and a paragraph still over `most` as runs of its lines: a corpus of long
    records (multi-entry changelogs, chat sessions) offers pieces a small budget can hold."""
    if len(sample) <= most:
        return [sample]
    out: list[str] = []
    for paragraph in sample.split("\n\n"):
        if len(paragraph) <= most:
            out.append(paragraph)
            continue
        run: list[str] = []
        for line in paragraph.split("\n"):
            if run and len("\n".join([*run, line])) > most:
                out.append("\n".join(run))
                run = []
            run.append(line[:most])
        out.append("\n".join(run))
    return out


def looked_at(samples: Sequence[str], most: int | None = None) -> list[str]:
    """The distinct non-blank samples (or their pieces of at most `most` characters), at
    most MAX_SAMPLES of them (a seeded subset, so the same samples always give the same
    primer)."""
    split = (p for s in samples for p in (pieces(s, most) if most else [s]))
    unique = list(dict.fromkeys(s for s in split if s.strip()))
    if len(unique) > MAX_SAMPLES:
        unique = random.Random(0).sample(unique, MAX_SAMPLES)
    return unique


async def cover(samples: Sequence[str], budget: int, count_tokens: CountTokens) -> list[str]:
    """Samples in order of pick (greedy) within `budget` tokens: each adds the most weight
    of grams not yet covered per token, a gram weighing log2 of the number of samples it
    occurs in (grams of one sample weigh nothing: they help no other)."""
    # Pieces of at most about the budget (a token is ~4 characters of English): a sample
    # longer than the whole budget could never be picked.
    pool = looked_at(samples, budget * CHARS_PER_TOKEN)
    sets = [grams(s) for s in pool]
    df = Counter(g for gs in sets for g in gs)
    weight = {g: math.log2(n) for g, n in df.items() if n > 1}
    costs = [await count_tokens(s + SEPARATOR) for s in pool]
    covered: set[Gram] = set()

    def gain(i: int) -> float:
        return sum(weight.get(g, 0.0) for g in sets[i] - covered) / max(1, costs[i])

    # Lazy greedy: a sample's gain only falls as grams get covered, so a stale heap
    # entry that is still the best after recomputing is the best.
    heap = [(-gain(i), i) for i in range(len(pool))]
    heapq.heapify(heap)
    picked: list[str] = []
    left = budget
    while heap and left > 0:
        _, i = heapq.heappop(heap)
        if costs[i] > left:
            continue
        now = gain(i)
        if heap and now < -heap[0][0]:
            heapq.heappush(heap, (-now, i))
            continue
        if now <= 0:
            break
        picked.append(pool[i])
        covered |= sets[i]
        left -= costs[i]
    return picked


def primer_text(picked: Sequence[str]) -> str:
    """The primer of samples picked best first: the best nearest the text that follows."""
    return "".join(s + SEPARATOR for s in reversed(picked))


async def choose_primer(samples: Sequence[str], budget: int, count_tokens: CountTokens) -> str:
    """A primer of at most `budget` tokens from `samples` ("" when none helps)."""
    picked = await cover(samples, budget, count_tokens)
    # Tokens can merge across a separator: drop the last picks until the whole fits.
    while picked and await count_tokens(primer_text(picked)) > budget:
        picked.pop()
    return primer_text(picked)


__all__ = ["SEPARATOR", "choose_primer", "cover", "grams", "looked_at", "primer_text"]
