"""`slm bench MODEL`: prefill/decode speed, time to first token, memory."""

from __future__ import annotations

from typing import Annotated

import typer

from slmkit.cli.common import (DeviceOpt, DtypeOpt, AllowPickleOpt, BackendOpt, CompileOpt, JsonOpt, ModelArg, TrustRemoteCodeOpt,
                               WeightsOpt, human_bytes, load_model, print_json, print_table, progress_bar)
from slmkit.models.catalog import DEFAULT_MODEL


def bench_command(
    model: ModelArg = DEFAULT_MODEL,
    prompt_tokens: Annotated[int, typer.Option(help="Prompt length for the prefill test (llama-bench pp).")] = 512,
    gen_tokens: Annotated[int, typer.Option(help="Tokens generated for the decode test (llama-bench tg).")] = 128,
    repeats: Annotated[int, typer.Option(help="Runs; each figure is their median.")] = 3,
    backend: BackendOpt = "auto",
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    weights: WeightsOpt = "float32",
    compile_decode: CompileOpt = False,
    json_output: JsonOpt = False,
    allow_pickle: AllowPickleOpt = False,
    trust_remote_code: TrustRemoteCodeOpt = False,
) -> None:
    """Measure speed and memory the way llama-bench does (pp512 / tg128).

    Examples: slm bench; slm bench ./pruned --prompt-tokens 128 --gen-tokens 32 --json; slm bench model.q4_0.gguf;
    slm bench --weights int8 --compile   # the fastest torch decoding on a CPU;
    slm bench ./minilm-onnx --prompt-tokens 128   # an encoder: one forward pass, on onnxruntime
    """
    from slmkit.evaluate.bench import bench

    lm = load_model(model, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, backend=backend,
                    n_ctx=prompt_tokens + gen_tokens + 16, weights=weights, compile_decode=compile_decode,
                    device=device, dtype=dtype)
    with progress_bar("bench") as progress:
        result = bench(lm, prompt_tokens=prompt_tokens, gen_tokens=gen_tokens, repeats=repeats, progress=progress)
    if json_output:
        print_json(result)
        return
    shown = dict(result)
    shown["bytes_on_disk"] = human_bytes(result["bytes_on_disk"])
    shown["peak_rss_bytes"] = human_bytes(result["peak_rss_bytes"])
    shown["parameters"] = f"{result['parameters']:,}" if result["parameters"] is not None else None  # ONNX: unknown
    print_table(f"{model} — bench", shown)
