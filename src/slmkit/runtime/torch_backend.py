"""The torch runtime: a transformers model on the CPU or a GPU.

Generation is a plain loop over the same prefill and single-token decode step
that `slm bench` times (on the same KV cache, compiled with `--compile`), so
bench measures what chat runs. It is written here rather than taken from
transformers' `generate` because that one samples from the global random state
and streams only through a second thread: a server's concurrent requests need
their own generator each, and a caller must be able to stop a stream between
two tokens.

A seq2seq model (T5) runs the same loop on its decoder: the prompt is encoded
once, and every decoder step attends to that encoding, from the decoder's
start token on (the model keeps its own self- and cross-attention cache).
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch

from slmkit.data.chat import literal_tokenizer
from slmkit.errors import SlmError
from slmkit.models.devices import resolve_device
from slmkit.models.info import count_parameters
from slmkit.models.kinds import context_length
from slmkit.models.loading import LoadedModel, load
from slmkit.runtime.interface import (DEFAULT_CONTEXT, Backend, OpenOptions, RuntimeBase, RuntimeInfo,
                                      register_backend, right_padded)
from slmkit.runtime.sampling import SamplingConfig, stream_tokens
from slmkit.runtime.torch_rows import TorchRows, TurnRows
from slmkit.runtime.weights import (check_compile_before_loading, check_weights, convert_weights, decode_compile_config,
                                    enable_compile, new_kv_cache)


@dataclass
class Decoding:
    """A generation in progress: its KV cache and the token to feed next."""

    cache: Any
    next_token: torch.Tensor  # [1, 1]
    logits: torch.Tensor | None = None  # [1, vocab] that chose next_token
    encoder_outputs: Any = None  # seq2seq: the encoded prompt every decoder step attends to


@dataclass
class TorchModel(LoadedModel, RuntimeBase):
    """A LoadedModel with the runtime operations (`runtime.interface.Model`)."""

    decodes_rows_together = True  # a causal LM's rows share a padded batch (a seq2seq model's take turns)

    weights: str | None = None  # bfloat16 / int8 after `--weights` converted the loaded ones; None: as loaded
    compiled: bool = False  # decode steps run through torch.compile
    int8_checkpoint_layers: int | None = None
    parameters: int | None = None  # counted before int8 gives a tied LM head its own copy
    backend = "torch"

    @classmethod
    def wrap(cls, lm: LoadedModel) -> TorchModel:
        return lm if isinstance(lm, TorchModel) else cls(model=lm.model, tokenizer=lm.tokenizer, spec=lm.spec,
                                                        kind=lm.kind, path=lm.path)

    @property
    def context(self) -> int:
        return context_length(self.config) or DEFAULT_CONTEXT

    @cached_property
    def _forward_arguments(self) -> set[str]:  # read once: decoding asks on every step
        return set(inspect.signature(self.model.forward).parameters)

    @torch.inference_mode()
    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, keep: int | None = None) -> torch.Tensor:
        # Only the kept positions need the (large) vocabulary projection.
        extra = {"logits_to_keep": keep} if keep is not None and "logits_to_keep" in self._forward_arguments else {}
        logits = self.model(input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device),
                            **extra).logits
        return logits[:, -keep:] if keep is not None else logits

    @torch.inference_mode()
    def classify(self, texts: list[str], max_length: int) -> torch.Tensor:
        self.require("classifier", "classification")
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        return self.model(**batch.to(self.device)).logits.float().cpu()

    @torch.inference_mode()
    def embed(self, texts: list[str], max_length: int | None = None) -> torch.Tensor:
        self.require_tokenizer("embeddings")
        # Padded here, not by the tokenizer: decoder tokenizers often have no pad token (the mask hides it).
        # A special token's text in the input is text (data.chat), as in every prompt.
        literal = literal_tokenizer(self.tokenizer)
        rows = [literal(text, truncation=True, max_length=max_length or self.context).input_ids for text in texts]
        input_ids, attention_mask = right_padded(rows)
        batch = {"input_ids": input_ids.to(self.device), "attention_mask": attention_mask.to(self.device)}
        if self.kind == "seq2seq":
            hidden = self.model.get_encoder()(**batch).last_hidden_state
        else:
            hidden = self.model(**batch, output_hidden_states=True).hidden_states[-1]
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return ((hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)).float().cpu()

    def _cache_argument(self) -> str:
        # transformers 5.x renames `past_key_values` to `cache` (the old name goes in 5.40).
        return "cache" if "cache" in self._forward_arguments else "past_key_values"

    @torch.inference_mode()
    def prefill(self, ids: list[int], max_tokens: int) -> Decoding | None:
        if not ids:
            raise SlmError(f"{self.spec}: the prompt has no tokens")
        prompt = torch.tensor([ids], dtype=torch.long, device=self.device)
        if self.kind == "seq2seq":
            return self._encode_and_start(prompt)
        if self.kind != "causal-lm":  # an encoder's whole job: one forward pass, nothing to decode
            self.model(input_ids=prompt)
            return None
        name = self._cache_argument()
        # The vocabulary projection of every prompt position is waste when only the next token is wanted.
        keep = {"logits_to_keep": 1} if "logits_to_keep" in self._forward_arguments else {}
        output = self.model(input_ids=prompt, use_cache=True, **{name: new_kv_cache(self.model, max_tokens)}, **keep)
        logits = output.logits[:, -1]
        return Decoding(getattr(output, name), logits.argmax(dim=-1, keepdim=True), logits)

    def _encode_and_start(self, prompt: torch.Tensor) -> Decoding:
        """A seq2seq prefill: the prompt through the encoder, then the decoder's first step from its start token."""
        start = torch.tensor([[self._decoder_start()]], dtype=torch.long, device=self.device)
        # No cache given: the model makes its own (an EncoderDecoderCache), as its generate does.
        state = Decoding(cache=None, next_token=start, encoder_outputs=self.model.get_encoder()(input_ids=prompt))
        self.decode(state)
        return state

    def _decoder_start(self) -> int:
        # The generation config first, as transformers' generate reads it; a fine-tuned checkpoint may set it there.
        for config in (getattr(self.model, "generation_config", None), self.config):
            start = getattr(config, "decoder_start_token_id", None)
            if start is not None:
                return start
        raise SlmError(f"{self.spec}: its config has no decoder_start_token_id; seq2seq generation needs one")

    @torch.inference_mode()
    def decode(self, state: Decoding, token: torch.Tensor | None = None) -> None:
        """Feed `token` (default: the greedy choice) and store the logits of the next position."""
        name = self._cache_argument()
        token = state.next_token if token is None else token
        if state.encoder_outputs is None:
            inputs = {"input_ids": token}
        else:  # cross-attention needs the encoding on every step (its keys and values are cached after the first)
            inputs = {"decoder_input_ids": token, "encoder_outputs": state.encoder_outputs}
        # Positions come from the cache (a tensor in a static one: a compiled step never recompiles).
        output = self._step(**inputs, use_cache=True, **{name: state.cache})
        state.cache, state.logits = getattr(output, name), output.logits[:, -1]
        state.next_token = state.logits.argmax(dim=-1, keepdim=True)

    @property
    def _step(self):
        return self.model.get_compiled_call(decode_compile_config()) if self.compiled else self.model

    def stream(self, ids: list[int], sampling: SamplingConfig, *, cancel: threading.Event | None = None,
               cache_tokens: int | None = None) -> Iterator[str]:
        if self.kind != "seq2seq":
            self.require("causal-lm", "generation")
        self.require_tokenizer("generation")
        so_far = self._written_so_far(ids)
        state = self.prefill(ids, max(cache_tokens or 0, len(ids) + sampling.max_new_tokens))
        yield from stream_tokens(self.tokenizer, self.stop_tokens(), so_far, state, self.decode, sampling, cancel)

    def _written_so_far(self, ids: list[int]) -> torch.Tensor:
        """The ids the repetition penalty looks at: a causal LM's prompt; a seq2seq model's decoder input (its
        start token), as in transformers' generate, since the decoder writes the answer apart from the prompt."""
        written = [self._decoder_start()] if self.kind == "seq2seq" else ids
        return torch.tensor([written], dtype=torch.long, device=self.device)

    def chat_cache_tokens(self, tokens: int) -> int:
        """Exact in eager mode; compiled, the next power of two from 256 (capped by the context), so a
        conversation's growing prompts compile a few static graphs (256, 512, ... tokens, fewer than
        torch.compile's recompile limit of 8) instead of one every turn. A one-off generation and `slm bench`
        use the exact size: the whole cache is attended to on every step, and SmolLM2-135M at 640 tokens
        decoded 10-20 % slower on a cache of 1024."""
        if not self.compiled:
            return tokens
        bucket = max(256, 1 << (tokens - 1).bit_length())
        return max(tokens, min(bucket, self.context))

    def open_batch(self, slots: int, length: int) -> TorchRows | TurnRows:
        # TorchBatch pads and joins decoder-only rows; a seq2seq model's rows step in turn, each on its own state.
        if self.kind == "seq2seq":
            return TurnRows(self, slots, length)
        self.require("causal-lm", "generation")
        return TorchRows(self, slots)

    def info(self) -> RuntimeInfo:
        dtype = self.weights or str(next(self.model.parameters()).dtype).removeprefix("torch.")
        return RuntimeInfo(backend="torch", device=str(self.device), dtype=dtype, threads=torch.get_num_threads(),
                           parameters=self.parameters or count_parameters(self.model)[0], compiled=self.compiled,
                           int8_checkpoint_layers=self.int8_checkpoint_layers)


def open_torch(spec: str, options: OpenOptions) -> TorchModel:
    check_weights(options.weights)  # before the slow load
    device = options.device or "auto"
    if options.weights == "int8":  # torch's int8 weight-only kernel is a CPU kernel
        if device == "auto":
            device = "cpu"
        elif resolve_device(device).type != "cpu":
            raise SlmError(f"--weights int8 runs on the CPU (torch's int8 weight-only kernel); on --device "
                           f"{device} use --dtype bfloat16 instead")
    if options.compile_decode:
        check_compile_before_loading(spec)
    lm = TorchModel.wrap(load(spec, kind=options.kind, allow_pickle=options.allow_pickle,
                              trust_remote_code=options.trust_remote_code, dtype=options.dtype, device=device))
    if options.weights != "float32":
        convert_weights(lm, options.weights)
    if options.compile_decode:
        enable_compile(lm)
    return lm


register_backend(Backend(name="torch", handles=lambda spec: True, preferred=lambda spec: True, open=open_torch,
                         refusal="{spec}"))
