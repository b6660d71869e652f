"""The chat REPL: history that fits the context window, /reset and /exit."""

from __future__ import annotations

import sys
from typing import TextIO

from slmkit.evaluate.loglikelihood import context_length
from slmkit.runtime.generate import SamplingConfig, prompt_ids, render_prompt, stream
from slmkit.runtime.weights import chat_cache_tokens

HELP = "Type a message; /reset clears the conversation, /exit (or Ctrl-D) quits."


class ChatSession:
    """A conversation with one model; trims the oldest turns to fit its context."""

    def __init__(self, lm, sampling: SamplingConfig, system: str | None = None):
        self.lm, self.sampling, self.system = lm, sampling, system
        self.history: list[dict] = []
        self.context = getattr(lm, "context", None) or context_length(lm.config) or 2048

    def reset(self) -> None:
        self.history = []

    def _messages(self) -> list[dict]:
        return ([{"role": "system", "content": self.system}] if self.system else []) + self.history

    def _fitted_prompt(self):
        templated = bool(getattr(self.lm.tokenizer, "chat_template", None))
        budget = self.context - self.sampling.max_new_tokens
        while True:
            ids = prompt_ids(self.lm.tokenizer, render_prompt(self.lm.tokenizer, self._messages()), templated)
            if ids.shape[1] <= budget or len(self.history) <= 2:
                return ids[:, -budget:] if ids.shape[1] > budget else ids
            # Drop the oldest exchange (user + assistant) and try again.
            self.history = self.history[2:]

    def reply(self, message: str):
        """Stream the answer to `message`, then remember both."""
        self.history.append({"role": "user", "content": message})
        pieces = []
        prompt = self._fitted_prompt()
        cache_tokens = (chat_cache_tokens(self.lm, prompt.shape[1] + self.sampling.max_new_tokens)
                        if self.lm.backend == "torch" else None)
        for piece in stream(self.lm, prompt, self.sampling, cache_tokens):
            pieces.append(piece)
            yield piece
        self.history.append({"role": "assistant", "content": "".join(pieces).strip()})


def repl(lm, sampling: SamplingConfig, system: str | None = None, stdin: TextIO = sys.stdin,
         stdout: TextIO = sys.stdout) -> None:
    session = ChatSession(lm, sampling, system)
    interactive = stdin.isatty()
    if interactive:
        print(HELP, file=stdout)
    while True:
        if interactive:
            print(">>> ", end="", file=stdout, flush=True)
        line = stdin.readline()
        if not line:
            break
        message = line.strip()
        if not message:
            continue
        if message == "/exit":
            break
        if message == "/reset":
            session.reset()
            print("(conversation cleared)", file=stdout, flush=True)
            continue
        if message.startswith("/"):
            print(f"unknown command {message.split()[0]}; {HELP}", file=stdout, flush=True)
            continue
        for piece in session.reply(message):
            print(piece, end="", file=stdout, flush=True)
        print(file=stdout, flush=True)
