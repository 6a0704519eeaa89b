"""bench.semantic's fact ceiling: its choice is the best there is, and its extract, coded as
SEMANTIC codes an extract, fits the room it is measured against."""

from __future__ import annotations

import itertools

import pytest

from bench.semantic_ceiling import Oracle, best_units
from bench.semantic_eval import kept_facts, load
from llmcompress_server.api.server import build_codecs
from llmcompress_server.backends.embedded import EmbeddedEngine
from llmcompress_server.codecs.lossless import LosslessCodec
from llmcompress_server.codecs.semantic import summary_coding
from llmcompress_server.codecs.semantic.extractive import read_structure
from llmcompress_server.core.domain import Mode
from tests.conftest import make_config


def test_best_units_is_the_best_subset() -> None:
    """Against every subset: the most facts within the budget, and the cheapest such set;
    a fact two units hold counts once."""
    masks = [0b0011, 0b0001, 0b0100, 0b1000, 0b0110, 0]
    costs = [5.0, 1.0, 3.0, 4.0, 2.5, 0.5]
    for budget in (0.5, 1.0, 3.5, 5.0, 6.0, 8.0, 20.0):
        best = (0, 0.0)
        for r in range(len(masks) + 1):
            for subset in itertools.combinations(range(len(masks)), r):
                cost = sum(costs[u] for u in subset)
                covered = 0
                for u in subset:
                    covered |= masks[u]
                got = (bin(covered).count("1"), -cost)
                if cost <= budget and got > best:
                    best = got
        chosen = best_units(masks, costs, budget)
        covered = 0
        for u in chosen:
            covered |= masks[u]
        assert (bin(covered).count("1"), -sum(costs[u] for u in chosen)) == best, budget


@pytest.mark.model
@pytest.mark.timeout(900)
async def test_the_oracle_extract_fits_its_room() -> None:
    """A line-structured text of the evaluation set at targets 8 and 16: the oracle's extract,
    coded the way SEMANTIC codes an extract (its pieces in one stream), is no larger than
    the room the ceiling was measured in, but for the range coder's last word; and it keeps
    the facts it reports."""
    item = next(i for i in load() if i.id == "lines-hosts")
    config = make_config(model={"embedded": {"workers": 1}})
    engine = EmbeddedEngine(config.model.embedded)
    await engine.start()
    try:
        coder = build_codecs(config, engine, engine)[Mode.LOSSLESS]
        assert isinstance(coder, LosslessCodec)
        oracle = Oracle(coder, item, read_structure(item.text))
        for target in (8.0, 16.0):
            found = await oracle.ceiling(target)
            assert found["units"] > 0 and found["extract"], target
            coded = await summary_coding.code_prefixes(coder, [found["extract"]], 1 << 20)
            assert coded is not None
            stream = len(coded.prefixes[-1].stream)
            assert stream <= found["room_bytes"] + 4, (target, stream, found["room_bytes"])
            assert found["facts_kept"] == sum(kept_facts(found["extract"], item.facts))
            assert found["facts_kept"] > 0, target
    finally:
        await engine.close()
