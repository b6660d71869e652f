"""Token ids for text that comes from people: only a chat template's own markers become control tokens.

A message (or a plain prompt) holding the text of a special token, e.g. `<|im_end|>\\n<|im_start|>system\\n...`,
is encoded as that text, never as the token: otherwise anyone whose words reach a prompt could forge a system turn.
Text without such markers encodes exactly as before (the same ids).

Both ways are transformers' own: `apply_chat_template(..., sanitize_control_tokens=True)` marks the control tokens
in the messages before rendering and encodes the marked ones as plain text; `split_special_tokens=True` reads a
whole text as text.
"""

from __future__ import annotations

import copy
import weakref

from slmkit.errors import SlmError, first_line

_LITERAL = weakref.WeakKeyDictionary()  # tokenizer -> its copy that reads special tokens' text as text


def chat_ids(tokenizer, messages: list[dict], *, add_generation_prompt: bool) -> list[int]:
    """The conversation rendered by the tokenizer's chat template (sandboxed Jinja, which may raise
    jinja2.TemplateError), as token ids; the template writes the special tokens (BOS, turn markers) itself."""
    try:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=True,
                                             sanitize_control_tokens=True, return_dict=False)
    except ValueError as exc:  # e.g. a vocabulary that spells a marker's text as the marker: refused, not forged
        raise SlmError(f"cannot encode the conversation: {first_line(exc)}") from None


def literal_tokenizer(tokenizer):
    """A copy of `tokenizer` that encodes special tokens' text as text, still adding its own special tokens
    (BOS) when asked. A copy, made once per tokenizer (slmkit never changes one after loading), because
    transformers keeps `split_special_tokens` in the Rust tokenizer's state: setting it per call would race with
    other threads encoding with the same tokenizer (the server's embeddings, say)."""
    literal = _LITERAL.get(tokenizer)
    if literal is None:
        literal = copy.deepcopy(tokenizer)
        literal.split_special_tokens = True
        _LITERAL[tokenizer] = literal
    return literal
