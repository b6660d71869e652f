"""The one model interface every runtime implements, and the registry of runtimes.

Callers (evaluation, bench, generation, chat, the server) ask a `Model` for what
they need, never branch on which runtime runs it and never reach into the engine
under it: torch (runtime.torch_backend), llama.cpp for GGUF files
(runtime.llamacpp), onnxruntime for ONNX exports (runtime.onnx). A runtime
registers itself with `register_backend` in its own module.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from slmkit.errors import ModelLoadError, SlmError
from slmkit.models.kinds import check_kind, require_kind
from slmkit.runtime.sampling import SamplingConfig
from slmkit.runtime.weights import check_weights

DEFAULT_CONTEXT = 2048  # when a model's config does not say


@dataclass
class OpenOptions:
    """How to open a model; each runtime refuses the options that do not apply to it.

    Args:
        kind: the head to load (causal-lm, encoder, seq2seq, classifier); default: what the checkpoint says.
        device: torch only: auto | cpu | cuda | cuda:N | mps.
        dtype: torch only: auto | float32 | bfloat16 | float16.
        weights: torch only: convert the loaded weights to bfloat16 or int8 (float32: as loaded).
        compile_decode: torch only: run each decode step through torch.compile.
        n_ctx: llama.cpp only: the context size (default: the trained context, at most 4096).
        logits_all: llama.cpp only: keep every position's logits (scoring needs them).
        allow_pickle, trust_remote_code: torch only: the loading safety switches.
    """

    kind: str | None = None
    device: str | None = "auto"
    dtype: str | None = "auto"
    weights: str = "float32"
    compile_decode: bool = False
    n_ctx: int | None = None
    logits_all: bool = False
    allow_pickle: bool = False
    trust_remote_code: bool = False

    def __post_init__(self):
        check_weights(self.weights)  # before any slow load
        check_kind(self.kind)


@dataclass
class RuntimeInfo:
    """What runs a model, as `slm bench` reports it."""

    backend: str
    device: str
    dtype: str  # weight format: float32, bfloat16, int8, or a GGUF's file type (q4_0, ...)
    threads: int
    parameters: int | None
    compiled: bool = False
    int8_checkpoint_layers: int | None = None  # --weights int8 on a calibrated checkpoint: layers kept exactly


class RowBatch(Protocol):
    """Rows decoded together, one forward pass per step for all of them (`Model.open_batch`); each row is known
    by its slot (0 to slots - 1) from its prompt until `release`."""

    def admits(self, running: int) -> bool:
        """Whether new rows may join now, while `running` rows are live."""

    def advance(self, new: list[tuple[int, list[int]]], going: list[tuple[int, int]]) -> torch.Tensor:
        """Prefill the `new` rows ((slot, prompt ids)) and feed each `going` row ((slot, the token it chose)):
        next-token logits [rows, vocab], the new rows first, each group in the order given. A live row left
        out of `going` has left the batch."""

    def release(self, slot: int) -> None:
        """The row in `slot` is done (or failed): the slot is free for another row."""


@runtime_checkable
class Model(Protocol):
    """A model opened for running. Token ids are plain lists; tensors come back on the CPU or the model's device.

    Life cycle of a generation: `stream(ids, sampling)` yields text pieces until the model ends its answer,
    `max_new_tokens` is reached, or `cancel` is set (checked before every token).
    """

    spec: str
    kind: str
    backend: str
    tokenizer: Any
    path: Path | None
    config: Any
    context_name: str  # whose limit `context` is, as errors name it: "the model's", "llama.cpp's"
    decodes_rows_together: bool  # whether `open_batch` runs its rows in one forward pass per step

    @property
    def context(self) -> int:
        """The most tokens one sequence may hold."""

    def require(self, kind: str, task: str) -> None:
        """One-line refusal when a task needs another kind of model."""

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, keep: int | None = None) -> torch.Tensor:
        """[batch, keep or width, vocab] next-token logits of right-padded rows (the last `keep` positions)."""

    def classify(self, texts: list[str], max_length: int) -> torch.Tensor:
        """[batch, labels] logits of a sequence classifier."""

    def embed(self, texts: list[str], max_length: int | None = None) -> torch.Tensor:
        """[batch, hidden] mean of the last hidden states over each text's tokens (sentence-transformers' pooling)."""

    def stream(self, ids: list[int], sampling: SamplingConfig, *, cancel: threading.Event | None = None,
               cache_tokens: int | None = None) -> Iterator[str]:
        """Text pieces of the continuation of `ids`; `cache_tokens` sizes a KV cache for more than this answer."""

    def prefill(self, ids: list[int], max_tokens: int) -> Any:
        """One forward pass over a prompt; a causal LM also picks its first token (greedy) and returns the
        state `decode` advances (a seq2seq model: the encoder's pass and the decoder's first step). Sized for
        `max_tokens` in all (what bench times as prefill)."""

    def decode(self, state: Any) -> None:
        """One greedy single-token step on the state `prefill` returned (what bench times as decode)."""

    def chat_cache_tokens(self, tokens: int) -> int | None:
        """The KV cache size for a chat turn of `tokens` tokens (None: the runtime sizes its own)."""

    def open_batch(self, slots: int, length: int) -> RowBatch:
        """Up to `slots` rows of at most `length` tokens each, decoded together (the server's engine); refused
        by a model or runtime that cannot write text that way."""

    def info(self) -> RuntimeInfo:
        """Which runtime, device, weight format and thread count run the model."""


class RuntimeBase:
    """What every runtime shares: kind checks and the refusals of operations a kind does not have."""

    spec: str
    kind: str
    backend: str
    config: Any
    tokenizer: Any
    context_name = "the model's"
    decodes_rows_together = False  # whether `open_batch` runs its rows in one forward pass per step

    def require(self, kind: str, task: str) -> None:
        require_kind(self.spec, kind, self.kind, getattr(self.config, "model_type", None), task)

    def require_tokenizer(self, task: str) -> None:
        if self.tokenizer is None:
            raise SlmError(f"{self.spec}: has no tokenizer files; {task} needs them")

    def chat_cache_tokens(self, tokens: int) -> int | None:
        return None

    def open_batch(self, slots: int, length: int) -> RowBatch:
        raise SlmError(f"{self.spec}: rows are decoded together (slm serve) on the torch and llama.cpp backends, "
                       f"not {self.backend}")


def scored_row_by_row(input_ids: torch.Tensor, attention_mask: torch.Tensor, keep: int | None, vocab: int,
                      check: Callable[[int], None], score: Callable[[list[int], int], torch.Tensor]) -> torch.Tensor:
    """`Model.logits` for a runtime that holds one sequence: each right-padded row's length `check`ed, then its
    tokens scored alone by `score(ids, first)` (the logits [len(ids) - first, vocab] of positions first..);
    positions past a row's length stay zero."""
    width = input_ids.shape[1]
    kept = keep or width
    first = max(0, width - kept)  # the first kept position
    out = torch.zeros(len(input_ids), kept, vocab)
    for row, (ids, mask) in enumerate(zip(input_ids.tolist(), attention_mask.tolist())):
        length = sum(mask)
        check(length)
        if length > first:
            out[row, :length - first] = score(ids[:length], first)
    return out


def right_padded(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) [rows, longest]: each row at the left, zeros after it (positions unchanged)."""
    width = max(map(len, rows))
    input_ids = torch.zeros(len(rows), width, dtype=torch.long)
    attention_mask = torch.zeros(len(rows), width, dtype=torch.long)
    for row, ids in enumerate(rows):
        input_ids[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, :len(ids)] = 1
    return input_ids, attention_mask


@dataclass
class Backend:
    """A runtime: which specs it runs, and how it opens one.

    `handles(spec)`: whether it can run this spec at all (`--backend NAME` refuses others with `refusal`);
    `preferred(spec)`: whether `--backend auto` picks it for this spec (the first registered that does).
    """

    name: str
    handles: Callable[[str], bool]
    preferred: Callable[[str], bool]
    open: Callable[[str, OpenOptions], Model]
    refusal: str  # "{spec}" is filled in


BACKENDS: dict[str, Backend] = {}  # `--backend auto` tries them in the order they registered


def torch_only_flag(options: OpenOptions) -> str | None:
    """The torch-only flag a runtime that runs its file's own weights must refuse: --weights, else --compile."""
    if options.weights != "float32":
        return f"--weights {options.weights}"
    return "--compile" if options.compile_decode else None


def check_cpu_only(options: OpenOptions, runtime: str) -> None:
    """--device and --dtype choose where and how torch runs a model; other runtimes refuse them when given."""
    if (options.device or "auto") not in ("auto", "cpu"):
        raise SlmError(f"--device {options.device} applies to the torch backend; {runtime} runs on the CPU here")
    if (options.dtype or "auto") != "auto":
        raise SlmError(f"--dtype {options.dtype} applies to the torch backend; {runtime} runs the weights "
                       "the file holds")


def refuse_torch_options(spec: str, options: OpenOptions, runtime: str, why: Callable[[str], str],
                         causal_only: str | None = None) -> None:
    """What a runtime that runs a file's own weights on the CPU refuses: the torch-only flags (`why(flag)`: the
    rest of the line), a kind other than a causal LM where the file holds only one (`causal_only`: the line),
    --device and --dtype."""
    flag = torch_only_flag(options)
    if flag is not None:
        raise SlmError(f"{flag} applies to the torch backend; {why(flag)}")
    if causal_only is not None and options.kind not in (None, "causal-lm"):
        raise ModelLoadError(f"{spec}: {causal_only}")
    check_cpu_only(options, runtime)


def register_backend(backend: Backend) -> None:
    BACKENDS[backend.name] = backend
