"""`slm bench MODEL`: prefill/decode speed, time to first token, memory."""

from __future__ import annotations

from slmkit.cli.common import ModelArg, human_bytes, print_json, print_table, progress_bar
from slmkit.cli.options import with_config
from slmkit.models.catalog import DEFAULT_MODEL
from slmkit.verbs import bench
from slmkit.verbs.bench import BenchSettings


@with_config(BenchSettings, adds=("json",))
def bench_command(
    config: BenchSettings,
    model: ModelArg = DEFAULT_MODEL,
    *, json_output: bool,
) -> None:
    """Measure speed and memory the way llama-bench does (pp512 / tg128).

    Examples: slm bench; slm bench ./pruned --prompt-tokens 128 --gen-tokens 32 --json; slm bench model.q4_0.gguf;
    slm bench --weights int8 --compile   # the fastest torch decoding on a CPU;
    slm bench ./minilm-onnx --prompt-tokens 128   # an encoder: one forward pass, on onnxruntime
    """
    result = bench.run(config, model, progress=progress_bar).summary
    if json_output:
        print_json(result)
        return
    shown = dict(result)
    shown["bytes_on_disk"] = human_bytes(result["bytes_on_disk"])
    shown["peak_rss_bytes"] = human_bytes(result["peak_rss_bytes"])
    shown["parameters"] = f"{result['parameters']:,}" if result["parameters"] is not None else None  # ONNX: unknown
    print_table(f"{model} — bench", shown)
