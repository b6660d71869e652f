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


def quantize_command(
    model: ModelArg = DEFAULT_MODEL,
    out: OutOpt = ...,
    method: Annotated[str, typer.Option(help="rtn | gptq | awq")] = "gptq",
    bits: Annotated[int, typer.Option(help="4 or 8.")] = 4,
    group_size: Annotated[int, typer.Option(help="Input columns per scale; 0 = one scale per row. "
                                            "Must divide every layer's input width.")] = 64,
    sym: Annotated[bool, typer.Option("--sym/--asym", help="Symmetric (q4_0-style) or with a zero point.")] = True,
    act_order: Annotated[bool, typer.Option(help="GPTQ: quantize columns by decreasing activation size.")] = False,
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
    config = config_class(bits=bits, group_size=group_size, symmetric=sym, **extra)
    if not fake_quant:
        check_compressed_tensors(config)
    check_destination(out, force)
    lm = load_model(model, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    calibration = None if method == "rtn" else calibration_for(lm, calib, calib_samples, calib_seq_len, seed)
    with progress_bar(f"{method} w{bits} quantization, block") as progress:
        layers, params = quantize(lm.model, config, calibration, progress=progress)
    saved_format = "fake-quant" if fake_quant else "compressed-tensors"
    after_write = None if fake_quant else prepare_compressed_tensors(lm.model, config, params)
    record = {**config.to_dict(), "format": saved_format,
              **(calibration_record(calib, calib_samples, calib_seq_len) if calibration is not None else {})}
    mse = sum(m["weight_mse"] for m in layers.values()) / len(layers)
    save(lm.model, out, lm.tokenizer, stage="quantize", parent=model, config=record, seed=seed,
         metrics={"mean_weight_mse": mse, "layers": layers}, force=force, after_write=after_write)
    result = {"model": model, "out": str(out), **record, "mean_weight_mse": mse, "quantized_layers": len(layers)}
    if json_output:
        print_json(result)
    else:
        print_table(f"{model} — quantized", result)
