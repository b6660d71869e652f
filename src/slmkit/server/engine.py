"""The server's decoding loop: requests wait in a bounded queue, and the rows admitted are decoded together,
one forward pass per token for all of them, in one thread that owns the model.

The model's runtime decodes the rows (`Model.open_batch`, a `RowBatch`): with continuous batching a new row
joins the running ones at the next step, and each row leaves as soon as it ends (a torch causal LM: one
left-padded KV cache; llama.cpp: one context, a sequence per slot); a seq2seq model's rows take turns, one
token each per step. No row ever cancels another.

Every row picks its tokens the same way whatever runs it (`RowSampler`): penalties, the grammar's mask, the
request's own seeded generator, stop strings, logprobs. A row whose `cancel` is set (the client went away, or
its time ran out) leaves at the next step.
"""

from __future__ import annotations

import queue
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from slmkit.runtime.interface import Model
from slmkit.runtime.sampling import SamplingConfig, TextPieces, TokenPicker
from slmkit.server.grammar import Grammar


class QueueFull(Exception):
    """More rows wait than --max-queue allows."""


@dataclass
class Piece:
    """Text a row produced since its last piece, with the logprobs of the tokens behind it (when asked)."""

    text: str
    logprobs: list[dict] = field(default_factory=list)


@dataclass
class Done:
    finish_reason: str  # stop | length
    tokens: int  # tokens generated, an end-of-generation token not counted


@dataclass
class Failed:
    status: int
    message: str


@dataclass
class Row:
    """One answer to write: a prompt, how to pick its tokens, where its events go."""

    ids: list[int]
    sampler: RowSampler
    max_tokens: int
    emit: Callable[[Piece | Done | Failed], None]  # called from the engine's thread
    cancel: threading.Event = field(default_factory=threading.Event)
    counted: bool = False  # holds a place in the queue (from `submit` until taken or withdrawn)


class RowSampler:
    """How one row picks each token, and the text it has written so far.

    Logprobs are the model's own (log-softmax of its raw logits), as vLLM reports them by default, not those
    of the distribution after penalties and temperature."""

    def __init__(self, tokenizer, sampling: SamplingConfig, end_tokens: set[int], *, presence: float = 0.0,
                 frequency: float = 0.0, stops: list[str] = (), grammar: Grammar | None = None,
                 top_logprobs: int | None = None):
        self.tokenizer = tokenizer
        self.picker = TokenPicker(sampling)
        self.presence, self.frequency, self.stop_strings = presence, frequency, list(stops)
        self.matcher = grammar.matcher() if grammar is not None else None
        self.top_logprobs = top_logprobs
        self.end_tokens = end_tokens  # the model's end-of-generation tokens (`stop_tokens()`)
        self.tokens: list[int] = []
        self.written: torch.Tensor | None = None  # prompt + answer: the repetition penalty's window
        self.text, self.sent = "", 0  # the answer's text, and how much of it went out
        self.pending_logprobs: list[dict] = []
        self.pieces = TextPieces(self.tokenizer)

    def begin(self, ids: list[int]) -> None:
        self.written = torch.tensor([ids], dtype=torch.long)

    def choose(self, logits: torch.Tensor) -> int | None:
        """The next token from this row's logits [vocab] (None: the model ended the answer)."""
        raw = logits.float().unsqueeze(0).cpu()
        scores = raw.clone()
        if self.tokens and (self.presence or self.frequency):
            counts = Counter(self.tokens)
            ids = torch.tensor(list(counts))
            seen = torch.tensor([float(count) for count in counts.values()])
            scores[0, ids] -= self.presence + self.frequency * seen
        if self.matcher is not None:
            self.matcher.mask(scores)
        token = int(self.picker(self.written, scores))
        if self.top_logprobs is not None:
            self.pending_logprobs.append(self._logprob_entry(raw, token))
        if token in self.end_tokens:
            return None
        if self.matcher is not None:
            self.matcher.consume(token)
        self.tokens.append(token)
        self.written = torch.cat([self.written, torch.tensor([[token]])], dim=1)
        self.text += "".join(self.pieces.add(token))
        return token

    def _logprob_entry(self, raw: torch.Tensor, token: int) -> dict:
        logprobs = torch.log_softmax(raw[0], dim=-1)
        top = torch.topk(logprobs, self.top_logprobs) if self.top_logprobs else None
        alternatives = [] if top is None else [(self._token_text(int(i)), float(v))
                                               for v, i in zip(top.values, top.indices)]
        return {"token": self._token_text(token), "logprob": float(logprobs[token]), "top": alternatives}

    def _token_text(self, token: int) -> str:
        return self.tokenizer.decode([token], skip_special_tokens=False)

    def stopped_by_string(self) -> bool:
        """Whether a stop string appeared; the text is cut before it."""
        cuts = [self.text.find(stop) for stop in self.stop_strings if stop in self.text]
        if not cuts:
            return False
        self.text = self.text[:min(cuts)]
        return True

    def grammar_finished(self) -> bool:
        return self.matcher is not None and self.matcher.finished()

    def piece(self, final: bool = False) -> Piece | None:
        """The text that may go out now: all of it at the end; before that, never a tail that could be the
        start of a stop string."""
        end = len(self.text)
        if not final:
            for stop in self.stop_strings:
                for size in range(min(len(stop) - 1, end), 0, -1):
                    if self.text.endswith(stop[:size]):
                        end = min(end, len(self.text) - size)
                        break
        if end <= self.sent and not (final and self.pending_logprobs):
            return None
        piece = Piece(self.text[self.sent:end], self.pending_logprobs)
        self.sent, self.pending_logprobs = end, []
        return piece

    def flush(self) -> None:
        self.text += "".join(self.pieces.end())


class Engine:
    """The decoding thread: `submit` rows (all or none of a request's), they run as slots free up."""

    def __init__(self, lm: Model, *, slots: int, max_queue: int, length: int):
        self.lm, self.slots, self.max_queue, self.length = lm, slots, max_queue, length
        self.rows = lm.open_batch(slots, length)
        self._waiting: queue.Queue[Row] = queue.Queue()
        self._lock = threading.Lock()
        self._queued = 0
        self.busy = 0  # rows being decoded
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slm-serve-engine", daemon=True)
        self._thread.start()

    @property
    def queued(self) -> int:
        return self._queued

    def submit(self, rows: list[Row]) -> None:
        with self._lock:
            if self._queued + len(rows) > self.max_queue:
                raise QueueFull()
            self._queued += len(rows)
            for row in rows:
                row.counted = True
        for row in rows:
            self._waiting.put(row)

    def withdraw(self, rows: list[Row]) -> None:
        """Stop rows (their client left, or their time ran out): running ones leave at the next step, waiting
        ones give their place in the queue back at once instead of when the engine reaches them."""
        with self._lock:
            for row in rows:
                row.cancel.set()
                if row.counted:
                    row.counted = False
                    self._queued -= 1

    def close(self) -> None:
        self._closing.set()
        self._thread.join(timeout=10)

    def _take(self, block: bool) -> Row | None:
        try:
            row = self._waiting.get(timeout=0.1) if block else self._waiting.get_nowait()
        except queue.Empty:
            return None
        with self._lock:
            if row.counted:
                row.counted = False
                self._queued -= 1
        return row

    def _run(self) -> None:
        live: dict[int, Row] = {}  # slot -> row
        while not self._closing.is_set():
            new: list[tuple[int, Row]] = []
            if self.rows.admits(len(live)):
                free = [slot for slot in range(self.slots) if slot not in live]
                while free:
                    row = self._take(block=not live and not new)
                    if row is None:
                        break
                    if not row.cancel.is_set():
                        new.append((free.pop(0), row))
            for slot in [slot for slot, row in live.items() if row.cancel.is_set()]:
                self.rows.release(slot)
                del live[slot]
            self.busy = len(live) + len(new)
            if not new and not live:
                continue
            order = new + list(live.items())
            try:
                for _, row in new:
                    row.sampler.begin(row.ids)
                logits = self.rows.advance([(slot, row.ids) for slot, row in new],
                                           [(slot, row.sampler.tokens[-1]) for slot, row in live.items()])
            except Exception as exc:  # a failed step fails its rows, not the server
                for slot, row in order:
                    row.emit(Failed(500, f"decoding failed: {exc}"))
                    self.rows.release(slot)
                live.clear()
                continue
            live = {}
            for (slot, row), row_logits in zip(order, logits):
                if self._step(row, row_logits):
                    live[slot] = row
                else:
                    self.rows.release(slot)
            self.busy = len(live)

    def _step(self, row: Row, logits: torch.Tensor) -> bool:
        """Pick the row's next token and send what it wrote; False when the row is done."""
        sampler = row.sampler
        try:
            token = sampler.choose(logits)
        except Exception as exc:  # one row's failure (a grammar error, a bad draw) ends that row only
            row.emit(Failed(500, f"choosing the next token failed: {exc}"))
            return False
        if token is None or sampler.grammar_finished():
            reason = "stop"
        elif len(sampler.tokens) >= row.max_tokens:
            reason = "length"
        else:
            reason = None
        if reason is not None:
            sampler.flush()
        if sampler.stopped_by_string():
            reason = "stop"
        piece = sampler.piece(final=reason is not None)
        if piece is not None:
            row.emit(piece)
        if reason is not None:
            row.emit(Done(reason, len(sampler.tokens)))
            return False
        return True
