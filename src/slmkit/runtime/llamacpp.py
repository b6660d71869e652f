"""Running a GGUF with llama.cpp (llama-cpp-python, the optional extra `llamacpp`): the runtime's model
(`LlamaCppModel`), and rows decoded together in one context (`LlamaBatch`). Opening the file, and the probe
that keeps llama.cpp's extra CPU buffer types off machines that fault on them, are `runtime.llamacpp_open`.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from slmkit.errors import SlmError, first_line
from slmkit.models.validate import validate_gguf
from slmkit.runtime.interface import (Backend, OpenOptions, RuntimeBase, RuntimeInfo, refuse_torch_options,
                                      register_backend, scored_row_by_row)
from slmkit.runtime.llamacpp_open import LlamaLog, llama_cpp_module, open_gguf
from slmkit.runtime.sampling import SamplingConfig


class LlamaBatch:
    """Sequences decoded together in one llama.cpp context, each with its own sequence id (`slots` of them) and
    KV stream of up to `length` tokens: one llama_decode advances every row given to `advance`.

    Written against llama.cpp's batch API because llama-cpp-python's `Llama` decodes one sequence at a time."""

    def __init__(self, llm, slots: int, length: int, n_batch: int = 512):
        self.llama_cpp = llama_cpp = llama_cpp_module()
        self.llm, self.slots, self.length = llm, slots, length
        params = llama_cpp.llama_context_default_params()
        params.n_ctx, params.n_seq_max, params.kv_unified = slots * length, slots, False
        params.n_batch = params.n_ubatch = n_batch
        params.n_threads = params.n_threads_batch = llm.n_threads
        with LlamaLog(llama_cpp) as log:  # kept off the terminal, as while the model opens
            self.context = llama_cpp.llama_init_from_model(llm.model, params)
        if not self.context:
            raise SlmError(f"llama.cpp cannot make a context for {slots} sequences of {length} tokens"
                           + (f" ({log.first_error()})" if log.first_error() else ""))
        self.n_batch, self.vocab = n_batch, llm.n_vocab()
        self.batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self.positions = [0] * slots  # the next position of each sequence
        # Freed with this object (holding `llm` keeps the weights alive until then); not at exit, where a daemon
        # thread (the server's engine) may still be decoding in it.
        weakref.finalize(self, _free_batch, llama_cpp, llm, self.context, self.batch).atexit = False

    def advance(self, rows: list[tuple[int, list[int]]]) -> torch.Tensor:
        """Append tokens to sequences ((sequence id, tokens): a prompt, or the one token just chosen) and return
        the logits after each row's last token [rows, vocab], in the order given."""
        for sequence, tokens in rows:
            if self.positions[sequence] + len(tokens) > self.length:
                raise SlmError(f"sequence {sequence} would exceed its {self.length} tokens")
        entries = []
        for sequence, tokens in rows:
            first = self.positions[sequence]
            entries += [(token, first + offset, sequence, offset == len(tokens) - 1)
                        for offset, token in enumerate(tokens)]
            self.positions[sequence] += len(tokens)
        logits = []
        for begin in range(0, len(entries), self.n_batch):
            chunk = entries[begin:begin + self.n_batch]
            _decode(self.llama_cpp, self.context, self.batch, chunk)
            outputs = sum(wants for *_, wants in chunk)
            if outputs:
                logits.append(torch.from_numpy(np.ctypeslib.as_array(
                    self.llama_cpp.llama_get_logits(self.context), shape=(outputs, self.vocab)).copy()))
        return torch.cat(logits)

    def release(self, sequence: int) -> None:
        """Forget a sequence's tokens: its id is free for another row."""
        self.llama_cpp.llama_memory_seq_rm(self.llama_cpp.llama_get_memory(self.context), sequence, -1, -1)
        self.positions[sequence] = 0


def _free_batch(llama_cpp, llm, context, batch) -> None:  # `llm`: only held until now
    llama_cpp.llama_batch_free(batch)
    llama_cpp.llama_free(context)


class LlamaRows:
    """Continuous batching on llama.cpp (`RowBatch`): a row joins whenever a slot is free."""

    def __init__(self, llm, slots: int, length: int):
        self.batch, self.slots = LlamaBatch(llm, slots, length), slots

    def admits(self, running: int) -> bool:
        return running < self.slots

    def advance(self, new: list[tuple[int, list[int]]], going: list[tuple[int, int]]) -> torch.Tensor:
        return self.batch.advance(new + [(slot, [token]) for slot, token in going])

    def release(self, slot: int) -> None:
        self.batch.release(slot)


def _decode(llama_cpp, context, batch, entries: list[tuple[int, int, int, bool]]) -> None:
    """One llama_decode of (token, position, sequence, wants logits) entries."""
    for index, (token, position, sequence, logits) in enumerate(entries):
        batch.token[index], batch.pos[index], batch.logits[index] = token, position, logits
        batch.n_seq_id[index], batch.seq_id[index][0] = 1, sequence
    batch.n_tokens = len(entries)
    status = llama_cpp.llama_decode(context, batch)
    if status != 0:
        raise SlmError(f"llama.cpp could not decode a batch of {len(entries)} tokens (llama_decode returned {status})")


class OneSequence:
    """llama.cpp's context holds one sequence: one operation uses it at a time, a stream from its first token
    to its last. Other threads wait their turn; the thread whose own stream is still open gets an error
    instead of waiting for itself forever."""

    def __init__(self):
        self._lock = threading.Lock()
        self._owner: int | None = None

    def busy(self) -> bool:
        return self._lock.locked()

    @contextlib.contextmanager
    def held(self):
        if self._owner == threading.get_ident():
            raise SlmError("this thread has an unfinished stream of this model; read it to the end or close() it "
                           "before using the model again")
        with self._lock:
            self._owner = threading.get_ident()
            try:
                yield
            finally:
                self._owner = None


class LlamaCppModel(RuntimeBase):
    """A GGUF run by llama.cpp (`runtime.interface.Model`).

    The tokenizer is transformers' reading of the same file: chat templates render in its
    sandbox and conversations are trimmed with the same code as on the torch backend
    (llama.cpp and transformers agree on the token ids; the export tests check it).
    One llama.cpp context holds one sequence at a time (`OneSequence`).
    """

    backend = "llamacpp"
    kind = "causal-lm"
    context_name = "llama.cpp's"  # `context` is the context it was opened with, not only what the model knows
    decodes_rows_together = True  # one context, a sequence per row

    def __init__(self, path: Path, *, n_ctx: int | None = None, n_threads: int | None = None,
                 logits_all: bool = False):
        """`logits_all` keeps the logits of every position (scoring needs them; n_ctx x vocab floats)."""
        from types import SimpleNamespace

        import gguf
        from transformers import AutoTokenizer

        self.path, self.spec, self.logits_all = path, str(path), logits_all
        self.sequence = OneSequence()
        reader = validate_gguf(path)  # before llama.cpp: a file it cannot take would abort the process
        fields = reader.fields
        self.parameters = sum(int(np.prod(tensor.shape)) for tensor in reader.tensors)
        architecture = fields["general.architecture"].contents()
        context_field = fields.get(f"{architecture}.context_length")
        trained_context = int(context_field.contents()) if context_field else 2048
        # Never more than it was trained for: a larger context is refused by the caller's own check, not by
        # llama.cpp failing to allocate it.
        n_ctx = min(n_ctx, trained_context) if n_ctx else min(trained_context, 4096)
        self.llm = open_gguf(path, n_ctx=n_ctx, n_threads=n_threads,
                             logits_all=logits_all, reader=reader)
        self._embedder = None  # a second context, opened for embeddings on first use
        self._stops: set[int] | None = None
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        except Exception as exc:  # transformers and tokenizers raise many types for a vocabulary they cannot use
            raise SlmError(f"{path}: transformers cannot read this GGUF's tokenizer "
                           f"({first_line(exc)})") from None
        self.config = SimpleNamespace(max_position_embeddings=trained_context, vocab_size=self.llm.n_vocab(),
                                      model_type=architecture)
        file_type = fields.get("general.file_type")
        type_name = gguf.LlamaFileType(int(file_type.contents())).name if file_type else "unknown"
        self.file_type = type_name.removeprefix("MOSTLY_").removeprefix("ALL_").lower()

    @property
    def context(self) -> int:
        # llama.cpp rounds its context up (to a multiple of 256); the positions the model knows end earlier.
        return min(self.llm.n_ctx(), self.config.max_position_embeddings)

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, keep: int | None = None) -> torch.Tensor:
        """Each row scored in a fresh context; positions past a row's length stay zero."""
        if not self.logits_all:
            raise SlmError(f"{self.spec}: opened without logits_all; scoring needs every position's logits")

        def check(length: int) -> None:
            if length > self.context:
                raise SlmError(f"{length} tokens do not fit llama.cpp's context of {self.context}")

        def score(ids: list[int], first: int) -> torch.Tensor:
            with self.sequence.held():
                self.llm.reset()
                self.llm.eval(ids)
                return torch.from_numpy(np.array(self.llm.scores[first:len(ids)]))

        return scored_row_by_row(input_ids, attention_mask, keep, self.llm.n_vocab(), check, score)

    def classify(self, texts: list[str], max_length: int) -> torch.Tensor:
        self.require("classifier", "classification")

    def embed(self, texts: list[str], max_length: int | None = None) -> torch.Tensor:
        llama_cpp = llama_cpp_module()
        with self.sequence.held():
            if self._embedder is None:
                # Mean pooling covers one micro-batch only, so a whole context's input must fit in one (else the
                # vector is the mean of its last 512 tokens); a long input pays the memory, a short one does not.
                self._embedder = open_gguf(self.path, n_ctx=self.context, n_batch=self.context,
                                           n_ubatch=self.context, n_threads=self.llm.n_threads, embedding=True,
                                           pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN)
            try:
                vectors = self._embedder.embed(texts, normalize=False, truncate=False)  # never cut silently
            except ValueError as exc:  # "Requested tokens (N) exceed batch size of C"
                raise SlmError(f"cannot embed: {first_line(exc)}") from None
            return torch.tensor(vectors, dtype=torch.float32)

    def stream(self, ids: list[int], sampling: SamplingConfig, *, cancel: threading.Event | None = None,
               cache_tokens: int | None = None) -> Iterator[str]:
        """llama.cpp's own sampler with the same settings; it stops at the end-of-generation tokens."""
        with self.sequence.held():
            self.llm.reset()
            chunks = self.llm.create_completion(
                ids, max_tokens=sampling.max_new_tokens, temperature=sampling.temperature, top_p=sampling.top_p,
                top_k=sampling.top_k, min_p=sampling.min_p, repeat_penalty=sampling.repetition_penalty,
                seed=sampling.seed if sampling.seed is not None else secrets.randbits(31), stream=True)
            try:
                for chunk in chunks:
                    if cancel is not None and cancel.is_set():
                        break
                    yield chunk["choices"][0]["text"]
            finally:
                chunks.close()

    def stop_tokens(self) -> set[int]:
        """The tokens that end generation (llama.cpp's end-of-generation set: EOS, EOT, <|im_end|> ...); read
        once (a call per vocabulary entry)."""
        if self._stops is None:
            llama_cpp = llama_cpp_module()
            vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
            self._stops = {token for token in range(self.llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, token)}
        return set(self._stops)

    def _greedy_next(self) -> int:
        # Without logits_all, llama-cpp-python no longer copies logits into llm.scores: read the context's.
        llama_cpp = llama_cpp_module()
        vocab = self.llm.n_vocab()
        return int(np.argmax(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self.llm.ctx, -1), shape=(vocab,))))

    def prefill(self, ids: list[int], max_tokens: int) -> dict:
        if max_tokens > self.context:
            raise SlmError(f"{max_tokens} tokens exceed llama.cpp's context ({self.context})")
        with self.sequence.held():
            self.llm.reset()
            self.llm.eval(ids)
            return {"next_token": self._greedy_next()}

    def decode(self, state: dict) -> None:
        with self.sequence.held():
            self.llm.eval([state["next_token"]])
            state["next_token"] = self._greedy_next()

    def open_batch(self, slots: int, length: int) -> LlamaRows:
        """A context of its own (`LlamaBatch`) on the loaded weights: this model's one sequence stays free."""
        trained = self.config.max_position_embeddings
        if length > trained:
            raise SlmError(f"{length} tokens per sequence exceed {self.spec}'s trained context ({trained})")
        return LlamaRows(self.llm, slots, length)

    def info(self) -> RuntimeInfo:
        return RuntimeInfo(backend="llamacpp", device="cpu", dtype=self.file_type, threads=self.llm.n_threads,
                           parameters=self.parameters)


def open_llamacpp(spec: str, options: OpenOptions) -> LlamaCppModel:
    refuse_torch_options(spec, options, "llama.cpp",
                         lambda flag: ("a GGUF's weight types are chosen when it is exported (slm export --quant)"
                                       if flag.startswith("--weights") else "llama.cpp runs a GGUF on its own "
                                       "compiled kernels") + ", or add --backend torch",
                         causal_only="a GGUF file holds a causal language model")
    return LlamaCppModel(Path(spec).expanduser(), n_ctx=options.n_ctx, logits_all=options.logits_all)


def has_llama_cpp() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


register_backend(Backend(
    name="llamacpp", handles=lambda spec: spec.endswith(".gguf"),
    preferred=lambda spec: spec.endswith(".gguf") and has_llama_cpp(), open=open_llamacpp,
    refusal="--backend llamacpp runs .gguf files and {spec} is not one; make one with `slm export`"))
