"""Near-duplicate groups of a stream, and a shared summary adapted to each member's own text."""

from __future__ import annotations

import asyncio

from llmcompress_server.backends import ChatResult
from llmcompress_server.envelope import ModelIdentity
from llmcompress_server.grouping import SharedSummary, StreamGroups, adapt, substitutions
from tests.conftest import load_corpus

LEADER = (
    "Ticket 48213: the printer on floor 3 jams every Monday since March 4, reported by "
    "Ann Lee. The vendor was called twice and replaced the fuser; the jams went on."
)
MEMBER = (
    LEADER.replace("48213", "48977").replace("March 4", "March 9").replace("Ann Lee", "Bob Stone")
)
SUMMARY = "Ticket 48213: floor 3 printer jams on Mondays since March 4 (Ann Lee); fuser replaced."


def shared(summary: str = SUMMARY, text: str = LEADER) -> SharedSummary:
    result = ChatResult(text=summary, model=ModelIdentity("m", "0" * 64), backend="ollama")
    return SharedSummary(text=text, summary=summary, result=result)


def test_substitutions_are_the_replaced_words() -> None:
    assert substitutions(LEADER, MEMBER) == [
        ("48213", "48977"),
        ("4", "9"),
        ("Ann Lee", "Bob Stone"),
    ]
    assert substitutions(LEADER, LEADER) == []


def test_adapt_swaps_the_members_facts_in() -> None:
    adapted = adapt(shared(), MEMBER)
    assert adapted == (
        "Ticket 48977: floor 3 printer jams on Mondays since March 9 (Bob Stone); fuser replaced."
    )
    # Whole words only: the leader's "4" is not swapped inside 48213 or 1934.
    text = "In 1934 ticket 48213 said 4 printers jam."
    other = "In 1934 ticket 48213 said 5 printers jam."
    assert adapt(shared("1934: ticket 48213, 4 printers.", text), other) == (
        "1934: ticket 48213, 5 printers."
    )


def test_adapt_refuses_a_summary_that_keeps_a_leader_only_fact() -> None:
    # The member has no date and no reporter: the summary would state the leader's.
    member = "Ticket 48977: the printer on floor 3 jams every Monday. The vendor was called."
    assert adapt(shared(), member) is None
    # A leader fact the summary does not mention is no obstacle.
    assert adapt(shared("Floor 3 printer jams on Mondays."), member) == (
        "Floor 3 printer jams on Mondays."
    )


async def test_groups_form_per_options_within_the_window() -> None:
    passages = [p["text"] for p in load_corpus()[:3]]
    groups = StreamGroups(threshold=0.8, window=2)
    a = groups.join("a", passages[0], "x")
    b = groups.join("b", passages[0].replace("the", "a", 1), "x")
    c = groups.join("c", passages[0], "other options")
    assert a.leader and not b.leader and b.group is a.group and b.similarity >= 0.8
    assert c.leader and c.group is not a.group
    assert a.group.leader_id == "a" and a.group.members == 2
    # Two more leaders push "a" out of the window of 2: its near-duplicate leads anew.
    groups.join("d", passages[1], "x")
    groups.join("e", passages[2], "x")
    late = groups.join("f", passages[0], "x")
    assert late.leader and late.group.leader_id == "f"


async def test_members_get_the_published_summary_or_none() -> None:
    # Three facts changed in a 30-word text: J = 0.51, a near-duplicate only at a low bar.
    groups = StreamGroups(threshold=0.5, window=8)
    lead = groups.join("1", LEADER, ())
    member = groups.join("2", MEMBER, ())
    assert not member.leader and member.group is lead.group
    waiting = asyncio.ensure_future(member.group.summary())
    await asyncio.sleep(0)
    assert not waiting.done()
    lead.group.publish(shared())
    lead.group.close()  # after a publish, closing changes nothing
    assert (await waiting) == shared()
    other = groups.join("3", "A different text entirely, about gardens and bees.", ())
    other.group.close()  # its leader finished without a summary
    assert await other.group.summary() is None
