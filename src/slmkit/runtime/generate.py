"""Text generation with the torch backend: chat templates, sampling flags, streaming.

Chat templates are rendered by transformers, which compiles them in Jinja's
ImmutableSandboxedEnvironment: a template cannot reach Python internals or
mutate the messages, so a hostile template fails instead of running code.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import torch

from slmkit.errors import SlmError
from slmkit.runtime.weights import decode_compile_config, static_cache_fits


@dataclass
class SamplingConfig:
    """How to pick each next token. temperature 0 means greedy decoding.

    Args:
        temperature: softmax temperature; 0 picks the most likely token.
        top_p: keep the smallest set of tokens whose probability sums to top_p.
        top_k: keep the k most likely tokens; 0 keeps all.
        min_p: drop tokens less likely than min_p x the top token's probability.
        repetition_penalty: >1 discourages tokens already in the text (CTRL paper).
        seed: makes sampling repeatable.
        max_new_tokens: stop after this many tokens.
    """

    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    max_new_tokens: int = 256

    def __post_init__(self):
        checks = [
            (self.temperature >= 0, f"--temperature must be >= 0, got {self.temperature}"),
            (0 < self.top_p <= 1, f"--top-p must be in (0, 1], got {self.top_p}"),
            (self.top_k >= 0, f"--top-k must be >= 0, got {self.top_k}"),
            (0 <= self.min_p < 1, f"--min-p must be in [0, 1), got {self.min_p}"),
            (self.repetition_penalty > 0, f"--repetition-penalty must be > 0, got {self.repetition_penalty}"),
            (self.max_new_tokens > 0, f"--max-new-tokens must be positive, got {self.max_new_tokens}"),
        ]
        for ok, message in checks:
            if not ok:
                raise SlmError(message)

    def generate_kwargs(self) -> dict:
        if self.temperature == 0:
            return {"do_sample": False, "max_new_tokens": self.max_new_tokens,
                    "repetition_penalty": self.repetition_penalty,
                    # unset the model's sampling defaults so greedy means greedy
                    "temperature": None, "top_p": None, "top_k": None}
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k,
                "min_p": self.min_p or None, "repetition_penalty": self.repetition_penalty,
                "max_new_tokens": self.max_new_tokens}

    def to_dict(self) -> dict:
        return asdict(self)


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


def prompt_ids(tokenizer, text: str, templated: bool) -> torch.Tensor:
    # A rendered template already holds its special tokens (BOS etc.).
    return tokenizer(text, add_special_tokens=not templated, return_tensors="pt").input_ids


def stream(lm, input_ids: torch.Tensor, sampling: SamplingConfig, cache_tokens: int | None = None) -> Iterator[str]:
    """Yield text pieces as the model produces them; `cache_tokens` sizes a static KV cache (torch backend)
    for more than this prompt and answer (see runtime.weights.chat_cache_tokens)."""
    from transformers import TextIteratorStreamer, set_seed

    lm.require("causal-lm", "generation")
    if lm.backend == "llamacpp":
        yield from _stream_llamacpp(lm, input_ids[0].tolist(), sampling)
        return
    if sampling.seed is not None:
        set_seed(sampling.seed)
    streamer = TextIteratorStreamer(lm.tokenizer, skip_prompt=True, skip_special_tokens=True)
    failure: list[BaseException] = []
    pad_id = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else lm.tokenizer.eos_token_id

    # The same KV cache and decode step `slm bench` measures (runtime.weights.new_kv_cache, decode_step).
    cache = {"cache_implementation": "static"} if static_cache_fits(lm.model) else {}
    if lm.extra.get("compile"):
        cache["compile_config"] = decode_compile_config()
    if cache_tokens is not None and "cache_implementation" in cache:
        # generate keeps a static cache at least as long as the last one: a size seen before recompiles nothing.
        cache["max_cache_len"] = cache_tokens

    def run() -> None:
        try:
            with torch.inference_mode():
                lm.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                  streamer=streamer, pad_token_id=pad_id, **cache, **sampling.generate_kwargs())
        except BaseException as exc:  # surfaced in the caller's thread below
            failure.append(exc)
            streamer.end()

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    yield from streamer
    worker.join()
    if failure:
        raise failure[0]


def _stream_llamacpp(lm, ids: list[int], sampling: SamplingConfig) -> Iterator[str]:
    """llama.cpp's own sampler with the same settings; it stops at the end-of-generation tokens."""
    lm.llm.reset()
    chunks = lm.llm.create_completion(
        ids, max_tokens=sampling.max_new_tokens, temperature=sampling.temperature, top_p=sampling.top_p,
        top_k=sampling.top_k, min_p=sampling.min_p, repeat_penalty=sampling.repetition_penalty,
        seed=sampling.seed, stream=True)
    for chunk in chunks:
        yield chunk["choices"][0]["text"]


def generate(lm, prompt: str, sampling: SamplingConfig | None = None, *, system: str | None = None,
             use_template: bool = True) -> Iterator[str]:
    """Stream the answer to one prompt. Example: `"".join(slmkit.generate(lm, "Hi", SamplingConfig(temperature=0)))`."""
    sampling = sampling or SamplingConfig()
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    templated = use_template and bool(getattr(lm.tokenizer, "chat_template", None))
    text = render_prompt(lm.tokenizer, messages, use_template)
    return stream(lm, prompt_ids(lm.tokenizer, text, templated), sampling)
