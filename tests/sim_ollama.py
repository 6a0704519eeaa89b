"""A simulated Ollama server (raw asyncio HTTP/1.1) for protocol, fault and load tests.

It speaks the documented Ollama API closely enough for the service's backend:

    POST /api/chat      {"model", "messages", "stream"=true, "format", "options", "keep_alive"}
                        stream: NDJSON lines {"message": {"content": ...}, "done": false} ...
                        then a final {"done": true, "done_reason": "stop", durations in ns,
                        "prompt_eval_count", "eval_count"}; non-stream: one such object.
    POST /api/generate  {"model", "prompt", "stream", "format", "options"} -> "response" field.
    POST /api/embed     {"model", "input": str | [str]} -> {"embeddings": [[float]]}
                        (hashed bag of words, unit length: similar texts get similar vectors).
    GET  /api/tags      {"models": [{"name", "model", "digest", "size", "details"}]}
    GET  /api/ps        models used so far.
    GET  /api/version   {"version": "0.12.6"}
    POST /v1/chat/completions, /v1/embeddings, GET /v1/models: Ollama's OpenAI-compatible
                        API (`response_format` json_schema respected; `api_key` checked).
    GET  /sim/stats     the stats below as JSON (for a sim running in another process).

Replies: `format` as a JSON schema gets a valid instance of that schema (strings
are taken from the last user message); `format: "json"` gets `{}`; otherwise the
reply is the first `num_predict` words of the last user message (or
`SimOptions.reply(request_body) -> str` when set). With `summary_skips_first_line`,
a summary request's strings leave the document's first line out, as a real
model's summary often leaves out an identifier line (`--summary-skips-first-line`).

Behaviour, as in Ollama: `slots` requests run at once (OLLAMA_NUM_PARALLEL),
up to `max_queue` more wait (OLLAMA_MAX_QUEUE; beyond it 503 "server busy"),
each call holds its slot `latency` seconds, unknown models get 404 "model ...
not found, try pulling it first". Faults for model calls (chat, generate,
embed), chosen per call from `script` first (a list consumed in order), then
by the rates: "503" (HTTP 503), "error" (an error line after some content in a
stream, HTTP 500 without stream), "hang" (never answers), "drop" (closes the
connection without answering), "garbage" (HTTP 200 with non-JSON), "ok".
`SimOptions` can be changed while the server runs (`sim.options.fail_rate = 0`).

Token counts are what a BPE tokenizer and a chat template would give, roughly
(`count_tokens`, `prompt_tokens`): a token per short word or punctuation mark,
more for long words, a few per message for the template, one more for the end
of the answer; never the word count, never a constant. Each model's reported
totals are in `stats.input_tokens` / `stats.output_tokens`.

Stats (`sim.stats`): `calls` (model calls received), `in_flight`/`max_in_flight`
(model requests open at the server, queued or running), `running`/`max_running`
(holding a slot), `cancelled` (the client went away first), `faults` per kind,
`paths` per path. A client disconnect is noticed at once and frees the slot.

Use it from tests with the `sim_ollama` fixture (tests/conftest.py):

    sim = await sim_ollama(slots=8, latency=0.05, fail_rate=0.3)
    sim.url        # "http://127.0.0.1:PORT"
    sim.stats.max_in_flight

or standalone for benchmarks: `python -m tests.sim_ollama --port P --slots 8 --latency 0.05`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import math
import random
import re
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

DEFAULT_MODELS = (
    # The seed's ModelSelector tiers, and an embedding model.
    "gemma3:4b",
    "qwen2.5:7b-instruct-q4_k_m",
    "llama3.1:8b",
    "nomic-embed-text",
)
FAULTS = ("503", "error", "hang", "drop", "garbage")
EMBED_DIM = 256
MODEL_PATHS = {
    "/api/chat",
    "/api/generate",
    "/api/embed",
    "/v1/chat/completions",
    "/v1/embeddings",
}


@dataclass
class SimOptions:
    slots: int = 1
    max_queue: int = 512
    latency: float = 0.05
    models: tuple[str, ...] = DEFAULT_MODELS
    fail_rate: float = 0.0  # 503
    error_rate: float = 0.0  # error line mid-stream / HTTP 500
    hang_rate: float = 0.0
    drop_rate: float = 0.0
    garbage_rate: float = 0.0
    script: list[str] = field(default_factory=list)
    seed: int = 0
    # When set, /v1/* requests need "Authorization: Bearer <api_key>" (else 401).
    api_key: str | None = None
    reply: Callable[[dict[str, Any]], str] | None = None
    summary_skips_first_line: bool = False


@dataclass
class SimStats:
    calls: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    running: int = 0
    max_running: int = 0
    cancelled: int = 0
    completed: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    paths: Counter[str] = field(default_factory=Counter)
    models_used: set[str] = field(default_factory=set)
    # Tokens reported in successful answers, per model.
    input_tokens: Counter[str] = field(default_factory=Counter)
    output_tokens: Counter[str] = field(default_factory=Counter)


class _Disconnected(Exception):
    """The client closed the connection before the answer was written."""


def _digest(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def _words(body: dict[str, Any]) -> list[str]:
    if "messages" in body:
        users = [m.get("content", "") for m in body["messages"] if m.get("role") == "user"]
        text = users[-1] if users else ""
    else:
        text = str(body.get("prompt", ""))
    # Plain words only, like a model's prose: echoing prompt delimiters (quotes,
    # fences) would make answers that a real client rightly rejects.
    return re.findall(r"[\w'.,$%-]+", text) or ["ok"]


# A chat template's cost per message (role header and end marks), and before the answer.
TEMPLATE_TOKENS_PER_MESSAGE = 4
TEMPLATE_TOKENS_ANSWER = 3


def count_tokens(text: str) -> int:
    """About what a BPE tokenizer counts: one token per word of up to 6 characters and one
    more per 6 after that, one per punctuation mark or symbol."""
    return sum(
        1 + (len(piece) - 1) // 6 if piece[0].isalnum() else 1
        for piece in re.findall(r"\w+|[^\w\s]", text)
    )


def prompt_tokens(body: dict[str, Any]) -> int:
    """A chat's prompt tokens (every message plus the template), or a prompt's."""
    if "messages" in body:
        messages = body.get("messages") or []
        text_tokens = sum(count_tokens(str(m.get("content", ""))) for m in messages)
        return text_tokens + TEMPLATE_TOKENS_PER_MESSAGE * len(messages) + TEMPLATE_TOKENS_ANSWER
    return count_tokens(str(body.get("prompt", ""))) + TEMPLATE_TOKENS_ANSWER


def instance_for(schema: Any, words: list[str], budget: int = 24) -> Any:
    """A small valid instance of a JSON schema (the subset LLM `format` schemas use)."""
    if not isinstance(schema, dict):
        return {}
    if "enum" in schema:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return instance_for(schema[key][0], words, budget)
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        props = schema.get("properties", {})
        return {name: instance_for(sub, words, budget) for name, sub in props.items()}
    if kind == "array":
        count = max(1, int(schema.get("minItems", 1)))
        return [instance_for(schema.get("items", {}), words, budget) for _ in range(count)]
    if kind == "string":
        text = " ".join(words[:budget])
        low, high = int(schema.get("minLength", 0)), schema.get("maxLength")
        text = text.ljust(low, "x")
        return text[: int(high)] if high is not None else text
    if kind == "integer":
        return int(schema.get("minimum", 0))
    if kind == "number":
        return float(schema.get("minimum", 0.0))
    if kind == "boolean":
        return False
    return None


class SimOllama:
    def __init__(self, options: SimOptions | None = None, host: str = "127.0.0.1") -> None:
        self.options = options or SimOptions()
        self.stats = SimStats()
        self.host = host
        self.port = 0
        self._rng = random.Random(self.options.seed)
        self._server: asyncio.Server | None = None
        self._slots: asyncio.Semaphore | None = None
        self._slot_count = 0
        self._waiting = 0
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def host_port(self) -> str:
        """As OLLAMA_HOST is usually written: "host:port", no scheme."""
        return f"{self.host}:{self.port}"

    async def start(self, port: int = 0) -> SimOllama:
        self._server = await asyncio.start_server(self._connection, self.host, port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    def reset_stats(self) -> None:
        self.stats = SimStats()

    def stats_dict(self) -> dict[str, Any]:
        s = self.stats
        return {
            "calls": s.calls,
            "in_flight": s.in_flight,
            "max_in_flight": s.max_in_flight,
            "running": s.running,
            "max_running": s.max_running,
            "cancelled": s.cancelled,
            "completed": s.completed,
            "faults": dict(s.faults),
            "paths": dict(s.paths),
            "input_tokens": dict(s.input_tokens),
            "output_tokens": dict(s.output_tokens),
        }

    # -- HTTP plumbing -------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {
                    k.strip().lower(): v.strip()
                    for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)
                }
                size = int(headers.get("content-length", "0"))
                raw = await reader.readexactly(size) if size else b""
                path = path.split("?")[0]
                key = self.options.api_key
                if (
                    path.startswith("/v1/")
                    and key
                    and headers.get("authorization") != f"Bearer {key}"
                ):
                    self.stats.paths[path] += 1
                    await self._send_json(writer, 401, {"error": {"message": "bad API key"}})
                    continue
                keep = await self._request(method, path, raw, reader, writer)
                if not keep or headers.get("connection", "").lower() == "close":
                    return
        except (_Disconnected, ConnectionError, asyncio.IncompleteReadError):
            return
        except asyncio.CancelledError:
            # Shutdown; Python 3.11's start_server callback chokes on a cancelled handler.
            return
        finally:
            self._writers.discard(writer)
            writer.close()

    @staticmethod
    async def _send(
        writer: asyncio.StreamWriter, status: int, body: bytes, ctype: str = "application/json"
    ) -> None:
        reason = {200: "OK", 404: "Not Found", 500: "Internal Server Error"}.get(status, "Error")
        if status == 503:
            reason = "Service Unavailable"
        head = (
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        writer.write(head.encode() + body)
        await writer.drain()

    @staticmethod
    async def _send_json(writer: asyncio.StreamWriter, status: int, obj: Any) -> None:
        await SimOllama._send(writer, status, json.dumps(obj).encode())

    @staticmethod
    async def _stream(writer: asyncio.StreamWriter, lines: list[bytes]) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        for line in lines:
            writer.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async def _until_gone(self, reader: asyncio.StreamReader) -> None:
        """Returns when the client closes its side (httpx never pipelines requests)."""
        with contextlib.suppress(ConnectionError):
            while await reader.read(1):
                pass

    async def _hold(self, reader: asyncio.StreamReader, work: Any) -> Any:
        """Run `work` unless the client disconnects first (then _Disconnected)."""
        gone = asyncio.ensure_future(self._until_gone(reader))
        task = asyncio.ensure_future(work)
        try:
            await asyncio.wait({gone, task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            # The reader allows one waiter: let the cancelled read finish first.
            with contextlib.suppress(asyncio.CancelledError):
                await gone
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            raise _Disconnected
        return task.result()

    # -- the API -------------------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        raw: bytes,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        self.stats.paths[path] += 1
        if method == "GET" and path == "/api/version":
            await self._send_json(writer, 200, {"version": "0.12.6"})
        elif method == "GET" and path == "/api/tags":
            await self._send_json(
                writer, 200, {"models": [self._tag(m) for m in self.options.models]}
            )
        elif method == "GET" and path == "/api/ps":
            used = sorted(self.stats.models_used)
            await self._send_json(writer, 200, {"models": [self._tag(m) for m in used]})
        elif method == "GET" and path == "/v1/models":
            models = [{"id": m, "object": "model"} for m in self.options.models]
            await self._send_json(writer, 200, {"object": "list", "data": models})
        elif method == "GET" and path == "/sim/stats":
            await self._send_json(writer, 200, self.stats_dict())
        elif method == "GET" and path == "/":
            await self._send(writer, 200, b"Ollama is running", "text/plain")
        elif method == "POST" and path in MODEL_PATHS:
            return await self._model_call(path, raw, reader, writer)
        else:
            await self._send(writer, 404, b"404 page not found", "text/plain")
        return True

    def _tag(self, name: str) -> dict[str, Any]:
        return {
            "name": name,
            "model": name,
            "modified_at": "2026-01-01T00:00:00Z",
            "size": 1000,
            "digest": _digest(name),
            "details": {"format": "gguf", "family": name.split(":")[0]},
        }

    def _fault(self) -> str:
        opts = self.options
        if opts.script:
            return opts.script.pop(0)
        roll = self._rng.random()
        for kind, rate in zip(
            FAULTS,
            (opts.fail_rate, opts.error_rate, opts.hang_rate, opts.drop_rate, opts.garbage_rate),
            strict=True,
        ):
            if roll < rate:
                return kind
            roll -= rate
        return "ok"

    def _slot(self) -> asyncio.Semaphore:
        if self._slots is None or self._slot_count != self.options.slots:
            self._slots, self._slot_count = (
                asyncio.Semaphore(self.options.slots),
                self.options.slots,
            )
        return self._slots

    async def _model_call(
        self, path: str, raw: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        stats = self.stats
        stats.calls += 1
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        try:
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                await self._send_json(writer, 400, {"error": "invalid JSON body"})
                return True
            model = str(body.get("model", ""))
            if model not in self.options.models and f"{model}:latest" not in self.options.models:
                await self._send_json(
                    writer, 404, {"error": f'model "{model}" not found, try pulling it first'}
                )
                return True
            fault = self._fault()
            if fault != "ok":
                stats.faults[fault] += 1
            if fault == "503":
                await self._send_json(writer, 503, {"error": "server busy, please try again"})
                return True
            if self._waiting >= self.options.max_queue:
                stats.faults["queue-full"] += 1
                await self._send_json(
                    writer,
                    503,
                    {"error": "server busy, please try again.  maximum pending requests exceeded"},
                )
                return True
            try:
                await self._hold(reader, self._run(fault))
            except _Disconnected:
                stats.cancelled += 1
                return False
            if fault == "drop":
                return False
            stats.models_used.add(model)
            await self._answer(path, body, fault, writer)
            stats.completed += 1
            return True
        finally:
            stats.in_flight -= 1

    async def _run(self, fault: str) -> None:
        """Wait for a slot (queued, like Ollama), then hold it for the latency."""
        slots = self._slot()
        self._waiting += 1
        try:
            await slots.acquire()
        finally:
            self._waiting -= 1
        stats = self.stats
        stats.running += 1
        stats.max_running = max(stats.max_running, stats.running)
        try:
            if fault == "hang":
                await asyncio.Event().wait()
            await asyncio.sleep(self.options.latency)
        finally:
            stats.running -= 1
            slots.release()

    def _content(self, body: dict[str, Any]) -> str:
        if "max_tokens" in body or "response_format" in body:  # OpenAI-style request
            fmt = (body.get("response_format") or {}).get("json_schema", {}).get("schema")
            body = {**body, "format": fmt, "options": {"num_predict": body.get("max_tokens")}}
        if self.options.reply is not None:
            return self.options.reply(body)
        fmt = body.get("format")
        last = [m for m in body.get("messages") or [] if m.get("role") == "user"][-1:]
        if (
            self.options.summary_skips_first_line
            and isinstance(fmt, dict)
            and last
            and "Summarize the document" in str(last[0].get("content", ""))
        ):
            # "Document:", the fence, the document's first line: the summary starts after.
            content = str(last[0]["content"]).split("\n", 3)[-1]
            body = {**body, "messages": [{"role": "user", "content": content}]}
        words = _words(body)
        budget = int((body.get("options") or {}).get("num_predict", 24) or 24)
        budget = budget if budget > 0 else 24
        if isinstance(fmt, dict):
            return json.dumps(instance_for(fmt, words, budget))
        if fmt == "json":
            return "{}"
        return " ".join(words[:budget])

    async def _answer(
        self, path: str, body: dict[str, Any], fault: str, writer: asyncio.StreamWriter
    ) -> None:
        if fault == "garbage":
            await self._send(writer, 200, b"<html>not json at all", "application/json")
            return
        if path == "/v1/embeddings":
            inputs = body.get("input", "")
            texts = [inputs] if isinstance(inputs, str) else list(inputs)
            data = [
                {"object": "embedding", "index": i, "embedding": self._embedding(t)}
                for i, t in enumerate(texts)
            ]
            usage = {"prompt_tokens": self._counted(body, sum(count_tokens(t) for t in texts))}
            await self._send_json(writer, 200, {"data": data, "usage": usage})
            return
        if path == "/v1/chat/completions":
            content = self._content(body)
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
            usage = {
                "prompt_tokens": self._counted(body, prompt_tokens(body)),
                "completion_tokens": self._counted(body, count_tokens(content) + 1, output=True),
            }
            answer = {"object": "chat.completion", "model": body["model"], "choices": [choice]}
            await self._send_json(writer, 200, {**answer, "usage": usage})
            return
        if path == "/api/embed":
            if fault == "error":
                await self._send_json(writer, 500, {"error": "simulated embedding failure"})
                return
            inputs = body.get("input", "")
            texts = [inputs] if isinstance(inputs, str) else list(inputs)
            await self._send_json(
                writer,
                200,
                {
                    "model": body["model"],
                    "embeddings": [self._embedding(t) for t in texts],
                    "total_duration": int(self.options.latency * 1e9),
                    "prompt_eval_count": self._counted(body, sum(count_tokens(t) for t in texts)),
                },
            )
            return
        content = self._content(body)
        stream = body.get("stream", True)  # Ollama streams unless told not to
        pieces = re.findall(r"\S+\s*|\s+", content) or [""]
        ns = int(self.options.latency * 1e9)
        final: dict[str, Any] = {
            "model": body["model"],
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "done": True,
            "done_reason": "stop",
            "total_duration": ns,
            "load_duration": ns // 10,
            "prompt_eval_count": prompt_tokens(body),
            "prompt_eval_duration": ns * 3 // 10,
            "eval_count": count_tokens(content) + 1,  # the answer and its end token
            "eval_duration": ns * 6 // 10,
        }

        def part(text: str) -> dict[str, Any]:
            if path == "/api/chat":
                return {"message": {"role": "assistant", "content": text}}
            return {"response": text}

        if not stream:
            if fault == "error":
                await self._send_json(writer, 500, {"error": "llama runner process has terminated"})
                return
            self._count(body, final)
            await self._send_json(writer, 200, {**final, **part(content)})
            return
        lines = [
            json.dumps({"model": body["model"], "done": False, **part(p)}).encode() + b"\n"
            for p in pieces
        ]
        if fault == "error":
            lines = lines[: max(1, len(lines) // 2)]
            lines.append(b'{"error":"llama runner process has terminated: exit status 2"}\n')
        else:
            self._count(body, final)
            lines.append(json.dumps({**final, **part("")}).encode() + b"\n")
        await self._stream(writer, lines)

    def _counted(self, body: dict[str, Any], tokens: int, output: bool = False) -> int:
        """Record `tokens` reported for `body`'s model; returns them."""
        totals = self.stats.output_tokens if output else self.stats.input_tokens
        totals[str(body.get("model", ""))] += tokens
        return tokens

    def _count(self, body: dict[str, Any], final: dict[str, Any]) -> None:
        self._counted(body, int(final["prompt_eval_count"]))
        self._counted(body, int(final["eval_count"]), output=True)

    @staticmethod
    def _embedding(text: str) -> list[float]:
        vec = [0.0] * EMBED_DIM
        for word in re.findall(r"\w+", text.lower()):
            h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=4).digest(), "big")
            vec[h % EMBED_DIM] += 1.0 if h & 1 << 31 else -1.0
        norm = math.sqrt(sum(v * v for v in vec)) or 1.0
        return [v / norm for v in vec]


async def _main() -> None:
    parser = argparse.ArgumentParser(description="simulated Ollama for tests and benchmarks")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11434, help="0: any free port (printed)")
    parser.add_argument("--slots", type=int, default=1)
    parser.add_argument("--max-queue", type=int, default=512)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--fail-rate", type=float, default=0.0)
    parser.add_argument("--error-rate", type=float, default=0.0)
    parser.add_argument("--summary-skips-first-line", action="store_true")
    parser.add_argument("--duration", type=float, default=0.0, help="stop after N s (0: never)")
    args = parser.parse_args()
    sim = SimOllama(
        SimOptions(
            slots=args.slots,
            max_queue=args.max_queue,
            latency=args.latency,
            fail_rate=args.fail_rate,
            error_rate=args.error_rate,
            summary_skips_first_line=args.summary_skips_first_line,
        ),
        host=args.host,
    )
    await sim.start(args.port)
    print(f"simulated Ollama on {sim.url} ({args.slots} slots, {args.latency}s/call)", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if args.duration:
        loop.call_later(args.duration, stop.set)
    await stop.wait()
    await sim.close()
    s = sim.stats
    print(
        f"calls={s.calls} completed={s.completed} max_in_flight={s.max_in_flight} "
        f"max_running={s.max_running} cancelled={s.cancelled} faults={dict(s.faults)}"
    )


if __name__ == "__main__":
    asyncio.run(_main())
