"""Speed and memory, in llama-bench's shape: pp512 prefill and tg128 decode.

Prefill: one forward pass over `prompt_tokens` random tokens, projecting only
the last position onto the vocabulary. Time to first token: that pass plus
picking the token. Decode: `gen_tokens` single-token
steps on the KV cache, greedy (compiled with `--compile`). Each figure is the
median of `repeats` runs after one warm-up run at the full prompt size; the
warm-up's time, which holds the compilation, is reported as `warmup_s`.
"""

from __future__ import annotations

import inspect
import resource
import statistics
import sys
import time
from collections.abc import Callable

import torch

from slmkit.errors import SlmError
from slmkit.evaluate.loglikelihood import context_length
from slmkit.models.info import bytes_on_disk, count_parameters
from slmkit.runtime.weights import decode_step, new_kv_cache


def _peak_rss_bytes() -> int:
    # Linux carries ru_maxrss across fork+exec (a bench started by a big process inherits its
    # peak); VmHWM belongs to this process's own address space.
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


def _cache_argument(model) -> str:
    # transformers 5.x renames `past_key_values` to `cache` (the old name goes in 5.40).
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _head_only_last(model) -> dict:
    # The vocabulary projection of every prompt position is waste when only the next token is wanted.
    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}


@torch.inference_mode()
def _one_run(model, step, prompt: torch.Tensor, gen_tokens: int, decode: bool,
             cache_tokens: int) -> tuple[float, float | None]:
    """Prefill on `model`, then `gen_tokens` decode steps on `step` (the model or its compiled call), on a
    cache sized `cache_tokens`: the same size in the warm-up and the timed runs, so nothing recompiles."""
    cache_argument = _cache_argument(model)
    cache = {cache_argument: new_kv_cache(model, cache_tokens)} if decode else {}
    start = time.perf_counter()
    output = model(input_ids=prompt, use_cache=decode, **cache, **_head_only_last(model))
    next_token = output.logits[:, -1].argmax(dim=-1, keepdim=True)
    time_to_first = time.perf_counter() - start
    if not decode:
        return time_to_first, None
    cache = getattr(output, cache_argument)
    start = time.perf_counter()
    for _ in range(gen_tokens):  # positions come from the cache (a tensor in a static one: nothing recompiles)
        output = step(input_ids=next_token, use_cache=True, **{cache_argument: cache})
        cache = getattr(output, cache_argument)
        next_token = output.logits[:, -1].argmax(dim=-1, keepdim=True)
    return time_to_first, time.perf_counter() - start


@torch.inference_mode()
def _one_forward_run(model, prompt: torch.Tensor) -> tuple[float, None]:
    """An encoder's whole job: one forward pass (torch or onnxruntime), nothing to decode."""
    start = time.perf_counter()
    model(input_ids=prompt)
    return time.perf_counter() - start, None


def _one_llamacpp_run(llm, prompt: list[int], gen_tokens: int) -> tuple[float, float | None]:
    """The same steps on llama.cpp: prefill (last position's logits only), then greedy single-token decode."""
    import llama_cpp
    import numpy as np

    vocab = llm.n_vocab()

    def greedy_next() -> int:
        # Without logits_all, llama-cpp-python no longer copies logits into llm.scores: read the context's.
        return int(np.argmax(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(vocab,))))

    llm.reset()
    start = time.perf_counter()
    llm.eval(prompt)
    next_token = greedy_next()
    time_to_first = time.perf_counter() - start
    if not gen_tokens:
        return time_to_first, None
    start = time.perf_counter()
    for _ in range(gen_tokens):
        llm.eval([next_token])
        next_token = greedy_next()
    return time_to_first, time.perf_counter() - start


def bench(lm, *, prompt_tokens: int = 512, gen_tokens: int = 128, repeats: int = 3, seed: int = 0,
          progress: Callable[[int, int], None] | None = None) -> dict:
    """Parameters, bytes on disk, peak RSS, prefill/decode tokens per second and time to first token."""
    if prompt_tokens < 1 or gen_tokens < 0 or repeats < 1:
        raise SlmError("--prompt-tokens and --repeats must be positive and --gen-tokens not negative")
    decode = lm.kind == "causal-lm" and gen_tokens > 0
    context = context_length(lm.config)
    if context and prompt_tokens + (gen_tokens if decode else 0) > context:
        raise SlmError(f"--prompt-tokens + --gen-tokens ({prompt_tokens + gen_tokens}) exceed the model's "
                       f"context ({context})")
    if lm.kind not in ("causal-lm", "encoder", "classifier"):
        raise SlmError(f"{lm.spec}: bench runs causal LMs and encoders, not {lm.kind} models")
    on_llamacpp = lm.backend == "llamacpp"
    if on_llamacpp and prompt_tokens + gen_tokens > lm.context:
        raise SlmError(f"--prompt-tokens + --gen-tokens ({prompt_tokens + gen_tokens}) exceed llama.cpp's "
                       f"context ({lm.context})")
    vocab = lm.config.vocab_size if on_llamacpp else lm.config.get_text_config().vocab_size
    generator = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, vocab, (1, prompt_tokens), generator=generator)
    if on_llamacpp:
        def one_run(gen: int):
            return _one_llamacpp_run(lm.llm, prompt[0].tolist(), gen if decode else 0)
    elif lm.kind != "causal-lm":
        def one_run(gen: int):
            return _one_forward_run(lm.model, prompt)
    else:
        step = decode_step(lm)

        def one_run(gen: int):
            return _one_run(lm.model, step, prompt, gen, decode, prompt_tokens + gen_tokens)
    start = time.perf_counter()
    one_run(min(4, gen_tokens))  # warm-up at full prompt size (and, with --compile, compilation)
    warmup = time.perf_counter() - start
    first_token_times, decode_times = [], []
    for run in range(repeats):
        time_to_first, decode_time = one_run(gen_tokens)
        first_token_times.append(time_to_first)
        if decode_time is not None:
            decode_times.append(decode_time)
        if progress:
            progress(run + 1, repeats)
    time_to_first = statistics.median(first_token_times)
    if on_llamacpp:
        parameters, threads, dtype = lm.parameters, lm.llm.n_threads, lm.file_type
    elif lm.backend == "onnx":
        parameters, threads, dtype = lm.parameters, lm.threads, "float32"
    else:
        parameters = lm.extra.get("parameters") or count_parameters(lm.model)[0]
        threads = torch.get_num_threads()
        dtype = lm.extra.get("weights") or str(next(lm.model.parameters()).dtype).removeprefix("torch.")
    return {
        "model": lm.spec,
        "backend": lm.backend,
        "threads": threads,
        "dtype": dtype,
        "parameters": parameters,
        "bytes_on_disk": bytes_on_disk(lm.path),
        "prompt_tokens": prompt_tokens,
        "gen_tokens": gen_tokens if decode else 0,
        "repeats": repeats,
        "prefill_tokens_per_s": prompt_tokens / time_to_first,
        "time_to_first_token_s": time_to_first,
        "decode_tokens_per_s": gen_tokens / statistics.median(decode_times) if decode_times else None,
        "peak_rss_bytes": _peak_rss_bytes(),
        "compiled": bool(getattr(lm, "extra", {}).get("compile")),
        # --weights int8 on a calibrated checkpoint: the layers that kept its own codes and scales.
        "int8_checkpoint_layers": getattr(lm, "extra", {}).get("int8_checkpoint_layers"),
        "warmup_s": warmup,
    }
