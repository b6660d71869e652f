"""Text generation on any runtime: chat templates, then the model's own stream.

Chat templates are rendered by transformers, which compiles them in Jinja's
ImmutableSandboxedEnvironment: a template cannot reach Python internals or
mutate the messages, so a hostile template fails instead of running code.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from slmkit.data.chat import chat_ids, literal_tokenizer
from slmkit.errors import SlmError
from slmkit.runtime.open import as_runtime
from slmkit.runtime.sampling import SamplingConfig

GENERATING_KINDS = ("causal-lm", "seq2seq")  # the kinds with a decoder that writes text


def require_generator(lm, task: str) -> None:
    """One-line refusal of a model that writes no text (an encoder, a classifier)."""
    if lm.kind not in GENERATING_KINDS:
        lm.require("causal-lm", task)  # the runtime's own refusal, naming what the model is


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


def applies_template(lm, use_template: bool = True) -> bool:
    """Whether the prompt is rendered with the model's chat template.

    Never for a seq2seq model: it is trained on plain input text (`input` records, tokenized as they are), so it
    gets the user's text, and for a conversation the plain transcript `render_prompt` writes without a
    template, even when its tokenizer carries one.
    """
    return use_template and lm.kind != "seq2seq" and bool(getattr(lm.tokenizer, "chat_template", None))


def prompt_ids(tokenizer, messages: list[dict], templated: bool) -> list[int]:
    """The token ids of a conversation, ending where the assistant speaks (`templated`: with the chat template,
    which writes its own special tokens, BOS included).

    Message contents are text: a special token's text in one stays text, so whoever writes a message cannot
    forge a turn; only the template's own markers are tokens (data.chat).
    """
    if not templated:
        return text_ids(tokenizer, render_prompt(tokenizer, messages, use_template=False))
    from jinja2 import TemplateError

    try:
        return chat_ids(tokenizer, messages, add_generation_prompt=True)
    except TemplateError as exc:  # includes SecurityError from the sandbox
        raise SlmError(f"the model's chat template failed: {exc}") from None


def text_ids(tokenizer, text: str) -> list[int]:
    """A plain prompt's token ids: all of it text, special tokens' text included, after the tokenizer's own
    special tokens (BOS)."""
    return literal_tokenizer(tokenizer)(text).input_ids


def generate(lm, prompt: str | list[dict], sampling: SamplingConfig | None = None, *, system: str | None = None,
             use_template: bool = True, cancel: threading.Event | None = None) -> Iterator[str]:
    """Stream the answer to a prompt, or to a conversation (a list of {"role", "content"} messages); setting
    `cancel` stops it before the next token.

    Example: `"".join(slmkit.generate(lm, "Hi", SamplingConfig(temperature=0)))`.
    """
    lm = as_runtime(lm)
    require_generator(lm, "generation")
    lm.require_tokenizer("generation")
    sampling = sampling or SamplingConfig()
    messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    messages = ([{"role": "system", "content": system}] if system else []) + messages
    templated = applies_template(lm, use_template)
    return lm.stream(prompt_ids(lm.tokenizer, messages, templated), sampling, cancel=cancel)
