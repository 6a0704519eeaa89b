"""Token and cost accounting: `cost.prices` per model, and the ledger of a server's model work.

Every model call reports the tokens its backend counted (Ollama's
`prompt_eval_count`/`eval_count`, OpenAI's `usage`, llama.cpp's own counts;
a LOSSLESS coding pass is its token count of evaluations, as input tokens).
Cost is input x `input` + output x `output` per million tokens of the model's
price; a model without a price costs 0. The saving compares the chat calls'
cost with the same tokens at `cost.reference`'s prices: what the same
summaries would cost on that model (an estimate: its tokenizer counts
differently). Embeddings and coding have no such counterpart and stay out of it.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass

from llmcompress_proto.v1 import compression_pb2 as pb

from ..core.config import CostConfig, ModelPrice
from ..core.events import ModelCallEnded, NullSink

PER_MILLION = 1_000_000
# The operation whose tokens a reference model (a chat API) would also spend.
REFERENCE_OPERATION = "chat"


@dataclass(frozen=True)
class Pricing:
    """Prices per million tokens by model name, and the reference model for the saving."""

    prices: Mapping[str, ModelPrice]
    reference: str | None = None

    @classmethod
    def from_config(cls, cost: CostConfig) -> Pricing:
        return cls(dict(cost.prices), cost.reference)

    def cost(self, model: str, input_tokens: int, output_tokens: int) -> float:
        price = self.prices.get(model)
        if price is None:
            return 0.0
        return (input_tokens * price.input + output_tokens * price.output) / PER_MILLION

    def reference_cost(self, input_tokens: int, output_tokens: int) -> float:
        """The same tokens at the reference model's prices (0 without a reference)."""
        if self.reference is None:
            return 0.0
        return self.cost(self.reference, input_tokens, output_tokens)


@dataclass(frozen=True)
class CostSummary:
    """Totals over every row, and the saving over the chat calls against the reference."""

    cost: float
    reference: str
    chat_cost: float
    reference_cost: float

    @property
    def saving(self) -> float | None:
        """1 - chat cost / reference cost; None without a reference or chat tokens."""
        if self.reference_cost <= 0:
            return None
        return 1.0 - self.chat_cost / self.reference_cost


class UsageLedger(NullSink):
    """Counts a server's model calls per (backend, model, operation); GetStats reads it.

    One per server, a sink of its `Events`. Failed and cancelled calls are not
    counted (the metrics count those as backend errors)."""

    def __init__(self, pricing: Pricing) -> None:
        self.pricing = pricing
        self._rows: dict[tuple[str, str, str], list[int]] = {}
        self._lock = threading.Lock()

    def model_called(self, call: ModelCallEnded) -> None:
        if call.failed:
            return
        key = (call.backend, call.model, call.operation)
        with self._lock:
            row = self._rows.setdefault(key, [0, 0, 0])
            row[0] += 1
            row[1] += call.input_tokens
            row[2] += call.output_tokens

    def usage(self) -> list[pb.ModelUsage]:
        """One row per (backend, model, operation), as GetStats sends it."""
        with self._lock:
            rows = {key: list(values) for key, values in self._rows.items()}
        out = []
        for (backend, model, operation), (calls, tokens_in, tokens_out) in sorted(rows.items()):
            usage = pb.ModelUsage(backend=backend, model=model, operation=operation, calls=calls)
            usage.input_tokens, usage.output_tokens = tokens_in, tokens_out
            usage.cost = self.pricing.cost(model, tokens_in, tokens_out)
            if operation == REFERENCE_OPERATION:
                usage.reference_cost = self.pricing.reference_cost(tokens_in, tokens_out)
            out.append(usage)
        return out

    def summary(self, usage: list[pb.ModelUsage] | None = None) -> CostSummary:
        rows = self.usage() if usage is None else usage
        chat = [u for u in rows if u.operation == REFERENCE_OPERATION]
        return CostSummary(
            cost=sum(u.cost for u in rows),
            reference=self.pricing.reference or "",
            chat_cost=sum(u.cost for u in chat),
            reference_cost=sum(u.reference_cost for u in chat),
        )
