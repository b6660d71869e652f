"""`slm quantize MODEL --method rtn|gptq --bits 4 --out DIR`: weight-only integer quantization."""

from __future__ import annotations

from typing import Annotated

import typer

from slmkit.cli.common import (AllowPickleOpt, CalibOpt, CalibSamplesOpt, CalibSeqLenOpt, ForceOpt, JsonOpt,
                               ModelArg, OutOpt, SeedOpt, TrustRemoteCodeOpt, calibration_for, calibration_record,
                               load_model,
                               print_json, print_table, progress_bar)
from slmkit.errors import SlmError
from slmkit.models.catalog import DEFAULT_MODEL

# GGUF block types whose grid slmkit's symmetric quantizers produce exactly: 32 weights per block,
# one float16 scale, codes -2^(b-1)..2^(b-1)-1.
GGUF_TARGETS = {"gguf-q4_0": 4, "gguf-q8_0": 8}


def resolve_grid(bits: int | None, group_size: int | None, sym: bool | None, target: str | None) -> dict:
    """The grid options, from --target when given (refusing flags that contradict it)."""
    if target is None:
        return {"bits": 4 if bits is None else bits, "group_size": 64 if group_size is None else group_size,
                "symmetric": True if sym is None else sym}
    if target not in GGUF_TARGETS:
        raise SlmError(f"unknown --target {target!r}; choose one of {', '.join(GGUF_TARGETS)}")
    grid = {"bits": GGUF_TARGETS[target], "group_size": 32, "symmetric": True}
    given = {"bits": bits, "group_size": group_size, "symmetric": sym}
    for option, value in given.items():
        if value is not None and value != grid[option]:
            flag = {"bits": f"--bits {bits}", "group_size": f"--group-size {group_size}", "symmetric": "--asym"}
            raise SlmError(f"--target {target} needs {option.replace('_', ' ')} {grid[option]}; "
                           f"drop {flag[option]}")
    return {**grid, "float16_scales": True}


def quantize_command(
    model: ModelArg = DEFAULT_MODEL,
    out: OutOpt = ...,
    method: Annotated[str, typer.Option(help="rtn | gptq | awq")] = "gptq",
    bits: Annotated[int | None, typer.Option(help="4 or 8 [default: 4].")] = None,
    group_size: Annotated[int | None, typer.Option(help="Input columns per scale; 0 = one scale per row. "
                                                      "Must divide every layer's input width [default: 64].")] = None,
    sym: Annotated[bool | None, typer.Option("--sym/--asym", help="Symmetric (q4_0-style, the default) or with "
                                                                     "a zero point.")] = None,
    target: Annotated[str | None, typer.Option(help="Pick the grid of a GGUF type so `slm export` writes these "
                                                       "exact values: " + " | ".join(GGUF_TARGETS))] = None,
    act_order: Annotated[bool, typer.Option(help="GPTQ: quantize columns by decreasing activation size.")] = False,
    observer: Annotated[str, typer.Option(help="How each group's scale is chosen: minmax (its full range) | mse "
                                               "(searches clipped ranges for the least error).")] = "minmax",
    fake_quant: Annotated[bool, typer.Option("--fake-quant", "--dry-run",
                                             help="Save float weights on the grid instead of packed "
                                                  "compressed-tensors (quick quality checks).")] = False,
    calib: CalibOpt = None,
    calib_samples: CalibSamplesOpt = 128,
    calib_seq_len: CalibSeqLenOpt = 512,
    seed: SeedOpt = 0,
    force: ForceOpt = False,
    json_output: JsonOpt = False,
    allow_pickle: AllowPickleOpt = False,
    trust_remote_code: TrustRemoteCodeOpt = False,
) -> None:
    """Quantize the weights of every Linear layer in the model's blocks.

    Saved in the compressed-tensors format (llm-compressor's; transformers and vLLM load it),
    or as float weights on the grid with --fake-quant.

    Examples:
      slm quantize --method gptq --bits 4 --group-size 64 --calib wiki.txt --out out/gptq-w4g64
      slm quantize ./pruned --method rtn --bits 8 --group-size 0 --out out/int8
      slm quantize --method awq --bits 4 --group-size 32 --calib wiki.txt --out out/awq-w4g32
      slm quantize --method gptq --target gguf-q4_0 --calib wiki.txt --out out/gptq-q4_0  # then slm export
    """
    from slmkit.compress import QUANT_METHODS, quantize
    from slmkit.compress.formats import check_compressed_tensors, prepare_compressed_tensors
    from slmkit.models.checkpoint import check_destination, save

    config_class = QUANT_METHODS.get(method)
    if config_class is None:
        raise SlmError(f"unknown --method {method!r}; choose one of {', '.join(QUANT_METHODS)}")
    extra = {"act_order": act_order} if method == "gptq" else {}
    if act_order and method != "gptq":
        raise SlmError("--act-order applies to --method gptq only")
    grid = resolve_grid(bits, group_size, sym, target)
    config = config_class(**grid, **extra, observer=observer)
    if not fake_quant:
        check_compressed_tensors(config)
    check_destination(out, force)
    lm = load_model(model, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    calibration = None if method == "rtn" else calibration_for(lm, calib, calib_samples, calib_seq_len, seed)
    with progress_bar(f"{method} w{config.bits} quantization, block") as progress:
        layers, params = quantize(lm.model, config, calibration, progress=progress)
    saved_format = "fake-quant" if fake_quant else "compressed-tensors"
    after_write = None if fake_quant else prepare_compressed_tensors(lm.model, config, params)
    record = {**config.to_dict(), "format": saved_format, **({"target": target} if target else {}),
              **(calibration_record(calib, calib_samples, calib_seq_len) if calibration is not None else {})}
    mse = sum(m["weight_mse"] for m in layers.values()) / len(layers)
    save(lm.model, out, lm.tokenizer, stage="quantize", parent=model, config=record, seed=seed,
         metrics={"mean_weight_mse": mse, "layers": layers}, force=force, after_write=after_write)
    result = {"model": model, "out": str(out), **record, "mean_weight_mse": mse, "quantized_layers": len(layers)}
    if json_output:
        print_json(result)
    else:
        print_table(f"{model} — quantized", result)
