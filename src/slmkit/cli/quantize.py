"""`slm quantize MODEL --method rtn|gptq --bits 4 --out DIR`: weight-only integer quantization."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slmkit.cli.common import (AllowPickleOpt, CalibCacheOpt, CalibSamplesOpt, ComputeDeviceOpt, ForceOpt, JsonOpt,
                               ModelArg, OutOpt, SeedOpt, TrustRemoteCodeOpt, calibration_for, calibration_options,
                               load_model, print_json, print_table, progress_bar)
from slmkit.errors import SlmError
from slmkit.models.catalog import DEFAULT_MODEL
from slmkit.targets import GGUF_TARGETS


def quantize_command(
    model: ModelArg = DEFAULT_MODEL,
    out: OutOpt = ...,
    method: Annotated[str, typer.Option(help="rtn | gptq | awq | qat (trained on the grid against the float "
                                              "model; needs --target gguf-q4_0)")] = "gptq",
    bits: Annotated[int | None, typer.Option(help="4 or 8 [default: 4].")] = None,
    group_size: Annotated[int | None, typer.Option(help="Input columns per scale; 0 = one scale per row. "
                                                      "Must divide every layer's input width [default: 64].")] = None,
    sym: Annotated[bool | None, typer.Option("--sym/--asym", help="Symmetric (q4_0-style, the default) or with "
                                                                     "a zero point.")] = None,
    target: Annotated[str | None, typer.Option(help="Pick the grid of a GGUF type so `slm export` writes these "
                                                       "exact values: " + " | ".join(GGUF_TARGETS))] = None,
    act_order: Annotated[bool, typer.Option(help="GPTQ: quantize columns by decreasing activation size.")] = False,
    observer: Annotated[str | None, typer.Option(help="How each group's scale is chosen: minmax (its full range) | "
                                                      "mse (searches clipped ranges for the least error) "
                                                      "[default: mse for gptq, else minmax].")] = None,
    fake_quant: Annotated[bool, typer.Option("--fake-quant", "--dry-run",
                                             help="Save float weights on the grid instead of packed "
                                                  "compressed-tensors (quick quality checks).")] = False,
    steps: Annotated[int | None, typer.Option(help="QAT: optimizer steps [default: 120].")] = None,
    lr: Annotated[float | None, typer.Option(help="QAT: peak learning rate [default: 5e-5].")] = None,
    batch_size: Annotated[int | None, typer.Option(help="QAT: sequences per step [default: 4].")] = None,
    start: Annotated[str | None, typer.Option(help="QAT: the one-shot solution it starts from: gptq | rtn "
                                                   "[default: gptq].")] = None,
    calib: Annotated[Path | None, typer.Option(
        "--calib", "--data", help="Calibration text (QAT: training text; any file `slm eval` reads); default: text "
        "sampled from the model itself.")] = None,
    calib_samples: CalibSamplesOpt = None,
    calib_seq_len: Annotated[int | None, typer.Option(
        "--calib-seq-len", "--seq-len", help="Tokens per calibration (QAT: training) sequence [default: 512 with "
        "--calib; without it, the data-free default; QAT: 256].")] = None,
    seed: SeedOpt = 0,
    calib_cache: CalibCacheOpt = "on",
    device: ComputeDeviceOpt = "auto",
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
      slm quantize --method qat --target gguf-q4_0 --out out/qat-q4_0  # trained on the model's own text
    """
    import slmkit
    from slmkit.compress.formats import check_compressed_tensors
    from slmkit.compress.quantize import quant_config
    from slmkit.models.checkpoint import check_destination
    from slmkit.models.loading import local_path
    from slmkit.models.devices import resolve_device

    grid = dict(bits=bits, group_size=group_size, symmetric=sym, target=target, observer=observer)
    training = {"steps": steps, "lr": lr, "batch_size": batch_size, "start": start}
    if method == "qat":
        from slmkit.distill.qat import qat_config

        config = qat_config(**grid, **training, device=device)
    elif any(value is not None for value in training.values()):
        raise SlmError("--steps, --lr, --batch-size and --start are QAT's: use them with --method qat")
    else:
        config = quant_config(method, **grid, act_order=act_order)
    # QAT's sequence count and length where none are given: QATConfig's, as slmkit.quantize takes them
    calibration = calibration_options(calib, calib_samples, calib_seq_len, seed, calib_cache).for_method(config)
    if method == "qat":
        config.held_out_count(calibration.samples)  # too few sequences: refused before they are sampled
    if not fake_quant:
        check_compressed_tensors(config)
    compute_device = resolve_device(device)  # a device that is not there: before the slow load
    check_destination(out, force, reads=[local_path(model), calib])
    # float32 on the CPU: what compression rewrites (a block at a time goes to --device)
    lm = load_model(model, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, device="cpu",
                    dtype="float32")
    calibration = calibration_for(lm, config, calibration)
    description = "QAT on q4_0's grid, step" if method == "qat" else f"{method} w{config.bits} quantization, block"
    with progress_bar(description) as progress:
        result = slmkit.quantize(lm, config, calibration, fake_quant=fake_quant, target=target,
                                 device=compute_device, progress=progress)
    slmkit.save(lm, out, result=result, parent=model, force=force)
    result = {"model": model, "out": str(out), **result.summary}
    if json_output:
        print_json(result)
    else:
        print_table(f"{model} — quantized", result)
