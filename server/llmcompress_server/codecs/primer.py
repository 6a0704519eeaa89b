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
# Word n-grams of these lengths are what samples share.
GRAM_LENGTHS = (1, 2, 3)

_WORD = re.compile(r"\w+|[^\w\s]")

Gram = tuple[str, ...]
CountTokens = Callable[[str], Awaitable[int]]


def grams(text: str) -> set[Gram]:
    words = _WORD.findall(text)
    return {tuple(words[i : i + n]) for n in GRAM_LENGTHS for i in range(len(words) - n + 1)}


def looked_at(samples: Sequence[str]) -> list[str]:
    """The distinct non-blank samples, at most MAX_SAMPLES of them (a seeded subset, so
    the same samples always give the same primer)."""
    unique = list(dict.fromkeys(s for s in samples if s.strip()))
    if len(unique) > MAX_SAMPLES:
        unique = random.Random(0).sample(unique, MAX_SAMPLES)
    return unique


async def cover(samples: Sequence[str], budget: int, count_tokens: CountTokens) -> list[str]:
    """Samples in order of pick (greedy) within `budget` tokens: each adds the most weight
    of grams not yet covered per token, a gram weighing log2 of the number of samples it
    occurs in (grams of one sample weigh nothing: they help no other)."""
    pool = looked_at(samples)
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
