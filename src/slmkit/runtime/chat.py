"""The chat REPL: history that fits the context window, /reset and /exit."""

from __future__ import annotations

import sys
from typing import TextIO

from slmkit.runtime.generate import applies_template, prompt_ids, require_generator
from slmkit.runtime.open import as_runtime
from slmkit.runtime.sampling import SamplingConfig

HELP = "Type a message; /reset clears the conversation, /exit (or Ctrl-D) quits."


class ChatSession:
    """A conversation with one model; trims the oldest turns to fit its context."""

    def __init__(self, lm, sampling: SamplingConfig, system: str | None = None):
        self.lm, self.sampling, self.system = as_runtime(lm), sampling, system
        require_generator(self.lm, "chat")
        self.lm.require_tokenizer("chat")
        self.history: list[dict] = []
        self.context = self.lm.context

    def reset(self) -> None:
        self.history = []

    def _messages(self) -> list[dict]:
        return ([{"role": "system", "content": self.system}] if self.system else []) + self.history

    def _fitted_prompt(self) -> list[int]:
        templated = applies_template(self.lm)
        budget = self.context - self.sampling.max_new_tokens
        while True:
            ids = prompt_ids(self.lm.tokenizer, self._messages(), templated)
            if len(ids) <= budget or len(self.history) <= 2:
                return ids[-budget:] if len(ids) > budget else ids
            # Drop the oldest exchange (user + assistant) and try again.
            self.history = self.history[2:]

    def reply(self, message: str):
        """Stream the answer to `message`, then remember both."""
        self.history.append({"role": "user", "content": message})
        pieces = []
        prompt = self._fitted_prompt()
        cache_tokens = self.lm.chat_cache_tokens(len(prompt) + self.sampling.max_new_tokens)
        for piece in self.lm.stream(prompt, self.sampling, cache_tokens=cache_tokens):
            pieces.append(piece)
            yield piece
        self.history.append({"role": "assistant", "content": "".join(pieces).strip()})


def repl(lm, sampling: SamplingConfig, system: str | None = None, stdin: TextIO | None = None,
         stdout: TextIO | None = None) -> None:
    # The streams of the moment, not of import time (a test runner or a caller may have replaced them since).
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
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
