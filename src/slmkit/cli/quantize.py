"""`slm quantize MODEL --method rtn|gptq|awq|qat --bits 4 --out DIR`: weight-only integer quantization."""

from __future__ import annotations

from pathlib import Path

from slmkit.cli.common import ModelArg, print_result, progress_bar
from slmkit.cli.options import with_config
from slmkit.models.catalog import DEFAULT_MODEL
from slmkit.verbs import quantize
from slmkit.verbs.quantize import QuantizeSettings


@with_config(QuantizeSettings, adds=("out", "force", "json"))
def quantize_command(
    config: QuantizeSettings,
    model: ModelArg = DEFAULT_MODEL,
    *, out: Path, force: bool, json_output: bool,
) -> None:
    """Quantize the weights of every Linear layer in the model's blocks.

    Saved in the compressed-tensors format (llm-compressor's; transformers and vLLM load it),
    or as float weights on the grid with --fake-quant.

    Examples:
      slm quantize --method gptq --bits 4 --group-size 64 --calib wiki.txt --out out/gptq-w4g64
      slm quantize ./pruned --method rtn --bits 8 --group-size 0 --out out/int8
      slm quantize --method awq --bits 4 --group-size 32 --calib wiki.txt --out out/awq-w4g32
      slm quantize --method gptq --target gguf-q4_0 --calib wiki.txt --out out/gptq-q4_0  # then slm export
      slm quantize --method qat --target gguf-q4_0 --out out/qat-q4_0  # trained on the model's own text
      slm quantize --target gguf --size 100MB --calib wiki.txt --out out/planned  # a block type per matrix
      slm quantize --target gguf --max-kl 0.02 --imatrix-out imatrix.gguf --out out/planned-kl
    """
    result = quantize.run(config, model, out, progress=progress_bar, force=force)
    print_result(f"{model} — quantized", {"model": model, "out": str(out), **result.summary}, json_output)
