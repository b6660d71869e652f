"""A request's rows in flight: submitted to the app's engine, their events come back as one whole answer or as a
stream of server-sent events. /v1/chat/completions and /v1/completions share this and differ only in how they
word an answer (their `Shape`)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import ClassVar

from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from slmkit.server.engine import Done, Failed, Piece, QueueFull, Row
from slmkit.server.grammar import Grammar
from slmkit.server.protocol import ApiError, Sampling

KEEPALIVE_S = 0.5  # an idle stream writes a comment this often: a client that left is noticed on the write
POLL_S = 0.25  # a whole answer checks this often whether its client left


class Collected:
    """The rows' answers as their events arrive."""

    def __init__(self, rows: int):
        self.texts, self.reasons = [""] * rows, [None] * rows
        self.logprobs: list[list[dict]] = [[] for _ in range(rows)]
        self.done = self.tokens = 0
        self.first_token: float | None = None

    def add(self, index: int, event) -> None:
        if isinstance(event, Piece):
            self.texts[index] += event.text
            self.logprobs[index] += event.logprobs
        elif isinstance(event, Done):
            self.reasons[index] = event.finish_reason


@dataclass
class Shape:
    """How one endpoint words its answers: ids and object names, a streamed chunk, a whole answer's choice."""

    model: str  # the served name, in every answer
    answer_id: str
    top: int | None  # top logprobs asked for per token; None: no logprobs at all
    kind: ClassVar[str]  # a whole answer's object name
    chunk_kind: ClassVar[str]  # a streamed chunk's

    def envelope(self, kind: str, choices: list, usage_slot: bool = False, **extra) -> dict:
        """An answer or a chunk of one; `usage_slot`: a chunk's `usage: null` (include_usage asks for it)."""
        return {"id": self.answer_id, "object": kind, "created": int(time.time()), "model": self.model,
                "choices": choices, **({"usage": None} if usage_slot else {}), **extra}

    def chunk(self, index: int, event, include_usage: bool, first: bool = False) -> dict | None:
        """A streamed chunk for one row's event; `first`: the opening chunk (None: the endpoint sends none)."""
        raise NotImplementedError

    def choice(self, index: int, collected: Collected) -> dict:
        """One row's choice in a whole answer."""
        raise NotImplementedError


class ChatShape(Shape):
    kind, chunk_kind = "chat.completion", "chat.completion.chunk"

    def chunk(self, index, event, include_usage, first=False):
        delta = {"role": "assistant", "content": ""} if first else {}
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": None}
        if isinstance(event, Piece):
            choice["delta"] = {"content": event.text}
            if self.top is not None:
                choice["logprobs"] = {"content": chat_logprobs(event.logprobs)}
        elif isinstance(event, Done):
            choice["finish_reason"] = event.finish_reason
        return self.envelope(self.chunk_kind, [choice], include_usage)

    def choice(self, index, collected):
        logprobs = {"content": chat_logprobs(collected.logprobs[index])} if self.top is not None else None
        return {"index": index, "message": {"role": "assistant", "content": collected.texts[index]},
                "logprobs": logprobs, "finish_reason": collected.reasons[index]}


class CompletionShape(Shape):
    kind = chunk_kind = "text_completion"

    def chunk(self, index, event, include_usage, first=False):
        if first:
            return None
        choice = {"index": index, "text": "", "logprobs": None, "finish_reason": None}
        if isinstance(event, Piece):
            choice["text"] = event.text
            if self.top is not None:
                choice["logprobs"] = completion_logprobs(event.logprobs)
        elif isinstance(event, Done):
            choice["finish_reason"] = event.finish_reason
        return self.envelope(self.chunk_kind, [choice], include_usage)

    def choice(self, index, collected):
        return {"index": index, "text": collected.texts[index], "finish_reason": collected.reasons[index],
                "logprobs": completion_logprobs(collected.logprobs[index]) if self.top is not None else None}


class InFlight:
    """One request's rows in the engine: their events in arrival order, its deadline, what it adds to the metrics.
    Made before its rows, which send their events to its `emit`."""

    def __init__(self, request: Request, prompt_tokens: int):
        state = request.app.state
        self.request, self.engine, self.metrics, self.settings = request, state.engine, state.metrics, state.settings
        self.prompt_tokens = prompt_tokens
        self.loop, self.events, self.start = asyncio.get_running_loop(), asyncio.Queue(), time.monotonic()
        self.deadline = self.start + self.settings.timeout if self.settings.timeout else None
        self.rows: list[Row] = []
        self.collected = Collected(0)

    async def answer(self, rows: list[Row], body: Sampling, shape: Shape, grammar: Grammar | None):
        """Submit the rows, then stream chunks or return the whole answer."""
        self.submit(rows)
        if not body.stream:
            return await self.whole(shape, grammar)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(self.stream(shape, include_usage), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    def emit(self, index: int, event) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, (index, event))  # from the engine's thread

    def submit(self, rows: list[Row]) -> None:
        try:
            self.engine.submit(rows)
        except QueueFull:
            raise ApiError(429, f"the queue is full ({self.settings.max_queue} rows wait); retry shortly",
                           "rate_limit_error", code="queue_full", headers={"Retry-After": "1"}) from None
        self.rows, self.collected = rows, Collected(len(rows))
        self.metrics.prompt_tokens.inc(self.prompt_tokens)

    def cancel(self) -> None:
        """Frees the slots of rows still decoding (a no-op for finished ones)."""
        self.engine.withdraw(self.rows)

    async def next_event(self, idle: float):
        """The next row event; None when `idle` seconds pass without one. Raises when time runs out."""
        wait = idle if self.deadline is None else max(0.0, min(idle, self.deadline - time.monotonic()))
        try:
            return await asyncio.wait_for(self.events.get(), wait)
        except TimeoutError:
            if self.deadline is not None and time.monotonic() >= self.deadline:
                self.cancel()
                raise ApiError(504, f"the request ran past --timeout {self.settings.timeout:g} s and was stopped",
                               "timeout_error", code="timeout") from None
            return None

    def account(self, index: int, event) -> None:
        """Counts an event into the metrics; a failed row fails the whole request."""
        collected = self.collected
        if isinstance(event, Piece) and collected.first_token is None:
            collected.first_token = time.monotonic() - self.start
            self.metrics.first_token.observe(collected.first_token)
        if isinstance(event, Failed):
            self.cancel()
            raise ApiError(event.status, event.message, "server_error")
        if isinstance(event, Done):
            collected.done += 1
            collected.tokens += event.tokens
            self.metrics.generated_tokens.inc(event.tokens)
            if collected.done == len(self.rows):
                self.metrics.latency.observe(time.monotonic() - self.start)

    def usage(self) -> dict:
        completion_tokens = self.collected.tokens
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": self.prompt_tokens + completion_tokens}

    async def whole(self, shape: Shape, grammar: Grammar | None):
        collected = self.collected
        try:
            while collected.done < len(self.rows):
                item = await self.next_event(POLL_S)
                if item is None:
                    if await self.request.is_disconnected():
                        self.cancel()
                        return Response(status_code=499)
                    continue
                self.account(*item)
                collected.add(*item)
        finally:
            self.cancel()  # frees the slots of a request that failed or left
        check_format(grammar, collected)
        return shape.envelope(shape.kind, [shape.choice(index, collected) for index in range(len(self.rows))],
                              usage=self.usage())

    async def stream(self, shape: Shape, include_usage: bool) -> AsyncIterator[str]:
        try:
            for index in range(len(self.rows)):
                yield sse_line(shape.chunk(index, None, include_usage, first=True))
            while self.collected.done < len(self.rows):
                try:
                    item = await self.next_event(KEEPALIVE_S)
                    if item is None:
                        yield ": keep-alive\n\n"
                        continue
                    self.account(*item)
                except ApiError as exc:
                    yield sse_line(exc.body)
                    return
                index, event = item
                yield sse_line(shape.chunk(index, event, include_usage))
            if include_usage:
                yield sse_line(shape.envelope(shape.chunk_kind, [], usage=self.usage()))
            yield "data: [DONE]\n\n"
        finally:
            self.cancel()


def check_format(grammar: Grammar | None, collected: Collected) -> None:
    """A constrained answer that ended by itself must satisfy its format (one cut by max_tokens cannot)."""
    if grammar is None:
        return
    for text, reason in zip(collected.texts, collected.reasons):
        problem = grammar.problem(text) if reason == "stop" else None
        if problem:
            raise ApiError(500, f"constrained output failed validation: {problem}", "server_error")


def chat_logprobs(entries: list[dict]) -> list[dict]:
    def one(token, logprob):
        return {"token": token, "logprob": logprob, "bytes": list(token.encode())}

    return [{**one(entry["token"], entry["logprob"]), "top_logprobs": [one(*pair) for pair in entry["top"]]}
            for entry in entries]


def completion_logprobs(entries: list[dict]) -> dict:
    offsets, at = [], 0
    for entry in entries:
        offsets.append(at)
        at += len(entry["token"])
    return {"tokens": [entry["token"] for entry in entries], "token_logprobs": [entry["logprob"] for entry in entries],
            "top_logprobs": [dict(entry["top"]) for entry in entries], "text_offset": offsets}


def sse_line(payload: dict | None) -> str:
    return "" if payload is None else f"data: {json.dumps(payload)}\n\n"
