"""Running an ExecuTorch export (`slm export --format executorch`) with ExecuTorch's own runtime, the program a
phone runs, here through its Python bindings (the optional extra `executorch`).

The program is transformers' static-cache signature: `forward(input_ids [1, S], cache_position [S])` returns the
logits of every position; its KV cache lives in the program and a sequence starts over at position 0.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import torch

from slmkit.errors import ModelLoadError, SlmError, first_line
from slmkit.models.checkpoint import read_manifest
from slmkit.models.loading import PTE_MODEL_FILE, end_tokens, export_file, is_pte
from slmkit.runtime.interface import (Backend, OpenOptions, RuntimeBase, RuntimeInfo, refuse_torch_options,
                                      register_backend, scored_row_by_row)
from slmkit.runtime.sampling import SamplingConfig, stream_tokens


def executorch_module(name: str = "executorch"):
    """Import executorch (or torchao), or say which extra installs it."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        raise SlmError("ExecuTorch export and the executorch backend need executorch: pip install "
                       "'slmkit[executorch]'") from None


class ExecuTorchModel(RuntimeBase):
    """A `.pte` run by ExecuTorch (`runtime.interface.Model`); the tokenizer and config are read beside it."""

    backend = "executorch"
    kind = "causal-lm"
    context_name = "the program's"  # the cache it was exported with

    def __init__(self, spec: str | Path, *, n_threads: int | None = None):
        from transformers import AutoConfig, AutoTokenizer

        executorch_module()
        import executorch.kernels.quantized  # noqa: F401  (the quantized embedding's operators)
        from executorch.extension.pybindings import portable_lib
        from executorch.runtime import Runtime

        self.spec = str(spec)
        file = export_file(spec, PTE_MODEL_FILE, "ExecuTorch program")
        self.path = file.parent
        if n_threads:  # one pool for the process (a private API, the only one that sets it)
            portable_lib._unsafe_reset_threadpool(n_threads)
        self.threads = portable_lib._threadpool_get_thread_count()
        try:
            self.program = Runtime.get().load_program(file)
            self.forward = self.program.load_method("forward")
            self.max_context = int(self.program.load_method("get_max_context_len").execute([])[0])
        except Exception as exc:  # the runtime raises RuntimeError and others for a file it cannot load
            raise ModelLoadError(f"{file}: ExecuTorch cannot load it ({first_line(exc)})") from None
        try:
            self.config = AutoConfig.from_pretrained(self.path)
            self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelLoadError(f"{self.path}: cannot read the config or tokenizer ({first_line(exc)})") from None
        manifest = read_manifest(self.path) or {}
        self.quant = (manifest.get("config") or {}).get("quant", "unknown")
        self.parameters = (manifest.get("metrics") or {}).get("parameters")
        self.sequence_lock = threading.Lock()  # one program, one sequence's cache: calls take turns

    @property
    def context(self) -> int:
        # The cache holds max_context positions; the program takes at most max_context - 1 in one call.
        return self.max_context - 1

    def _run(self, ids: list[int], start: int) -> torch.Tensor:
        """Logits [tokens, vocab] of `ids` placed at positions start.. of the cache."""
        outputs = self.forward.execute([torch.tensor([ids], dtype=torch.long),
                                        torch.arange(start, start + len(ids), dtype=torch.long)])
        return outputs[0][0]

    def _check_length(self, tokens: int) -> None:
        if tokens > self.context:
            raise SlmError(f"{tokens} tokens exceed the program's context ({self.context}); export it with a larger "
                           "--max-context")

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, keep: int | None = None) -> torch.Tensor:
        """Each row from position 0 in one call; positions past a row's length stay zero."""

        def score(ids: list[int], first: int) -> torch.Tensor:
            with self.sequence_lock:
                return self._run(ids, 0)[first:].float()

        return scored_row_by_row(input_ids, attention_mask, keep, self.config.vocab_size, self._check_length, score)

    def classify(self, texts: list[str], max_length: int) -> torch.Tensor:
        self.require("classifier", "classification")

    def embed(self, texts: list[str], max_length: int | None = None) -> torch.Tensor:
        self.require("encoder", "embeddings")

    def stop_tokens(self) -> set[int]:
        return end_tokens(self.config.eos_token_id, self.tokenizer)

    def stream(self, ids: list[int], sampling: SamplingConfig, *, cancel: threading.Event | None = None,
               cache_tokens: int | None = None) -> Iterator[str]:
        self.require_tokenizer("generation")
        with self.sequence_lock:
            state = self._prefill(ids)
            yield from stream_tokens(self.tokenizer, self.stop_tokens(), torch.tensor([ids]), state, self._step,
                                     sampling, cancel)

    def prefill(self, ids: list[int], max_tokens: int) -> SimpleNamespace:
        self._check_length(max_tokens)
        with self.sequence_lock:
            return self._prefill(ids)

    def _prefill(self, ids: list[int]) -> SimpleNamespace:
        """The prompt from position 0 (the cache starts over) and its last position's logits [1, vocab]."""
        if not ids:
            raise SlmError(f"{self.spec}: the prompt has no tokens")
        self._check_length(len(ids))
        return SimpleNamespace(position=len(ids), logits=self._run(ids, 0)[-1:].float())

    def _step(self, state: SimpleNamespace, token: torch.Tensor) -> None:
        if state.position >= self.context:
            raise SlmError(f"the answer reached the program's context ({self.context} tokens)")
        state.logits = self._run([int(token)], state.position).float()
        state.position += 1

    def decode(self, state: SimpleNamespace) -> None:
        with self.sequence_lock:
            self._step(state, state.logits.argmax(dim=-1))

    def info(self) -> RuntimeInfo:
        return RuntimeInfo(backend="executorch", device="cpu", dtype=self.quant, threads=self.threads,
                           parameters=self.parameters)


def open_executorch(spec: str, options: OpenOptions) -> ExecuTorchModel:
    refuse_torch_options(spec, options, "ExecuTorch",
                         lambda flag: "an ExecuTorch program runs the weights it was exported with "
                                      "(slm export --format executorch --quant)",
                         causal_only="an ExecuTorch export holds a causal language model")
    return ExecuTorchModel(spec)


register_backend(Backend(
    name="executorch", handles=is_pte, preferred=is_pte, open=open_executorch,
    refusal="--backend executorch runs an ExecuTorch export (a directory with model.pte, or a .pte file); "
            "{spec} is not one"))
