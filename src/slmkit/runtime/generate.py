"""Text generation on any runtime: chat templates, then the model's own stream.

Chat templates are rendered by transformers, which compiles them in Jinja's
ImmutableSandboxedEnvironment: a template cannot reach Python internals or
mutate the messages, so a hostile template fails instead of running code.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from slmkit.errors import SlmError
from slmkit.runtime.open import as_runtime
from slmkit.runtime.sampling import SamplingConfig


def render_prompt(tokenizer, messages: list[dict], use_template: bool = True) -> str:
    """The text the model sees for a conversation, ending where the assistant speaks."""
    if use_template and getattr(tokenizer, "chat_template", None):
        from jinja2 import TemplateError

        try:
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except TemplateError as exc:  # includes SecurityError from the sandbox
            raise SlmError(f"the model's chat template failed: {exc}") from None
    # No template: a plain transcript that base models continue sensibly.
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n".join(lines) + "\nAssistant:"


def prompt_ids(tokenizer, text: str, templated: bool) -> list[int]:
    # A rendered template already holds its special tokens (BOS etc.).
    return tokenizer(text, add_special_tokens=not templated).input_ids


def generate(lm, prompt: str | list[dict], sampling: SamplingConfig | None = None, *, system: str | None = None,
             use_template: bool = True, cancel: threading.Event | None = None) -> Iterator[str]:
    """Stream the answer to a prompt, or to a conversation (a list of {"role", "content"} messages); setting
    `cancel` stops it before the next token.

    Example: `"".join(slmkit.generate(lm, "Hi", SamplingConfig(temperature=0)))`.
    """
    lm = as_runtime(lm)
    lm.require("causal-lm", "generation")
    lm.require_tokenizer("generation")
    sampling = sampling or SamplingConfig()
    messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    messages = ([{"role": "system", "content": system}] if system else []) + messages
    templated = use_template and bool(getattr(lm.tokenizer, "chat_template", None))
    text = render_prompt(lm.tokenizer, messages, use_template)
    return lm.stream(prompt_ids(lm.tokenizer, text, templated), sampling, cancel=cancel)
