"""How a text's tokens split into coded streams: pure functions of what the envelope stores.

A stream is coded in one engine slot with its own range coder, from the
start token (BOS) at position 0. The decoder rebuilds the layout from
n_tokens, the stream count (entries of `chunk_words`) and the schedule.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Schedule(enum.IntEnum):
    """`EngineFingerprint.schedule_id`: how streams are laid out and evaluated.

    T1: today's format before the engine: width 1, streams are consecutive
    chunks of n_ctx tokens. RESET: streams of near-equal length, each at most
    n_ctx tokens. SLIDE: streams of near-equal length, of any length; a stream
    that fills its n_ctx context drops its oldest tokens (after the start token)
    and shifts the rest down.
    """

    T1 = 1
    RESET = 2
    SLIDE = 3


# A stream shorter than this costs more in lost context than it gains in
# parallelism (see `stream_count`).
MIN_STREAM_TOKENS = 512


@dataclass(frozen=True)
class Layout:
    """What a decoder needs to rebuild the streams of one coded text."""

    schedule: Schedule
    n_ctx: int

    def lengths(self, n_tokens: int, n_streams: int) -> list[int]:
        """The token count of each stream, in order."""
        if self.schedule is Schedule.T1:
            return [min(self.n_ctx, n_tokens - i) for i in range(0, n_tokens, self.n_ctx)] or [0]
        base, extra = divmod(n_tokens, n_streams)
        return [base + (i < extra) for i in range(n_streams)]

    def valid_count(self, n_tokens: int, n_streams: int) -> bool:
        """Whether `n_streams` streams can hold `n_tokens` under this schedule."""
        if n_streams < 1:
            return False
        if self.schedule is Schedule.T1:
            return n_streams == len(self.lengths(n_tokens, 0))
        if n_streams > max(1, n_tokens):
            return False
        return self.schedule is Schedule.SLIDE or -(-n_tokens // n_streams) <= self.n_ctx

    def stream_count(self, n_tokens: int, width: int, min_stream: int = MIN_STREAM_TOKENS) -> int:
        """The encoder's choice: enough streams to fill the width when each stays at least
        `min_stream` long, and (RESET) enough that none exceeds n_ctx, rounded up to
        whole rounds of the width so one text's last round is not half empty."""
        if self.schedule is Schedule.T1:
            return len(self.lengths(n_tokens, 0))
        count = max(1, min(width, n_tokens // min_stream))
        if self.schedule is Schedule.RESET:
            needed = -(-n_tokens // self.n_ctx)
            if needed > count:
                count = -(-needed // width) * width
        return max(1, min(count, n_tokens))
