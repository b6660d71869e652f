"""Speed and memory, in llama-bench's shape: pp512 prefill and tg128 decode.

Prefill: one forward pass over `prompt_tokens` random tokens, projecting only
the last position onto the vocabulary. Time to first token: that pass plus
picking the token. Decode: `gen_tokens` single-token
steps on the KV cache, greedy (compiled with `--compile`). Each figure is the
median of `repeats` runs after one warm-up run at the full prompt size; the
warm-up's time, which holds the compilation, is reported as `warmup_s`.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from collections.abc import Callable

import torch

from slmkit.errors import SlmError, first_line
from slmkit.logs import quiet_libraries
from slmkit.models.info import bytes_on_disk
from slmkit.runtime import as_runtime, open_model


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


def _one_run(lm, prompt: list[int], gen_tokens: int, cache_tokens: int, device: str) -> tuple[float, float | None]:
    """Prefill, then `gen_tokens` greedy decode steps, on a cache sized `cache_tokens`: the same size in the
    warm-up and the timed runs, so nothing recompiles. An encoder's prefill is its one forward pass."""
    start = time.perf_counter()
    state = lm.prefill(prompt, cache_tokens)
    _finish_gpu_work(device)
    time_to_first = time.perf_counter() - start
    if not gen_tokens:
        return time_to_first, None
    start = time.perf_counter()
    for _ in range(gen_tokens):
        lm.decode(state)
    _finish_gpu_work(device)
    return time_to_first, time.perf_counter() - start


def _finish_gpu_work(device: str) -> None:
    # CUDA runs kernels asynchronously: a clock read before they finish would time only their launch.
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def bench(lm, *, prompt_tokens: int = 512, gen_tokens: int = 128, repeats: int = 3, seed: int = 0,
          progress: Callable[[int, int], None] | None = None) -> dict:
    """Parameters, bytes on disk, peak RSS, prefill/decode tokens per second and time to first token."""
    if prompt_tokens < 1 or gen_tokens < 0 or repeats < 1:
        raise SlmError("--prompt-tokens and --repeats must be positive and --gen-tokens not negative")
    lm = as_runtime(lm)
    if lm.kind not in ("causal-lm", "encoder", "classifier"):
        raise SlmError(f"{lm.spec}: bench runs causal LMs and encoders, not {lm.kind} models")
    decode = lm.kind == "causal-lm" and gen_tokens > 0
    wanted = prompt_tokens + (gen_tokens if decode else 0)
    if wanted > lm.context:
        raise SlmError(f"--prompt-tokens + --gen-tokens ({wanted}) exceed {lm.context_name} context ({lm.context})")
    vocab = getattr(lm.config, "get_text_config", lambda: lm.config)().vocab_size
    generator = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, vocab, (prompt_tokens,), generator=generator).tolist()
    gen_tokens = gen_tokens if decode else 0

    device = lm.info().device

    def one_run(gen: int):
        return _one_run(lm, prompt, gen, prompt_tokens + gen_tokens, device)

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
    info = lm.info()
    return {
        "model": lm.spec,
        "backend": info.backend,
        "device": info.device,
        "threads": info.threads,
        "dtype": info.dtype,
        "parameters": info.parameters,
        "bytes_on_disk": bytes_on_disk(lm.path),
        "prompt_tokens": prompt_tokens,
        "gen_tokens": gen_tokens,
        "repeats": repeats,
        "prefill_tokens_per_s": prompt_tokens / time_to_first,
        "time_to_first_token_s": time_to_first,
        "decode_tokens_per_s": gen_tokens / statistics.median(decode_times) if decode_times else None,
        "peak_rss_bytes": _peak_rss_bytes(),
        "compiled": info.compiled,
        # --weights int8 on a calibrated checkpoint: the layers that kept its own codes and scales.
        "int8_checkpoint_layers": info.int8_checkpoint_layers,
        "warmup_s": warmup,
    }


def bench_in_fresh_process(spec: str, *, prompt_tokens: int = 512, gen_tokens: int = 128, repeats: int = 3,
                           **options) -> dict:
    """`bench` of `spec` in a new (spawned) process, so the peak memory it reports is this model's alone;
    `options` open the model (runtime.open_model's). Errors come back as the worker raised them."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    try:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as worker:
            return worker.submit(_bench_worker, spec, options, prompt_tokens, gen_tokens, repeats).result()
    except BrokenProcessPool:
        raise SlmError(f"bench of {spec}: the worker process died (out of memory, or a crash in a runtime)") from None
    except SlmError:
        raise
    except Exception as exc:  # a bug or a runtime's own error type: still one line for `slm run`
        raise SlmError(f"bench of {spec} failed: {type(exc).__name__}: {first_line(exc)}") from exc


def _bench_worker(spec: str, options: dict, prompt_tokens: int, gen_tokens: int, repeats: int) -> dict:
    quiet_libraries()
    lm = open_model(spec, **options)
    return bench(lm, prompt_tokens=prompt_tokens, gen_tokens=gen_tokens, repeats=repeats)
