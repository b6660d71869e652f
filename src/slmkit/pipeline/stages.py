"""The model-making stages, each checkpoint -> checkpoint + metrics.

`slm prune/quantize/export` and `slm run` call these same functions: a stage
takes a loaded model and its calibration batches, rewrites the model, and
writes the result atomically (a checkpoint directory with its manifest, a GGUF
file with its Modelfile, or an ONNX directory). Each returns what it measured as
a flat dict.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from slmkit.errors import SlmError
from slmkit.models.checkpoint import save

if TYPE_CHECKING:
    import torch

Progress = Callable[[int, int], None] | None

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


def quant_config(method: str, *, bits: int | None = None, group_size: int | None = None,
                 symmetric: bool | None = None, target: str | None = None, act_order: bool = False,
                 observer: str | None = None):
    """The quantization config `slm quantize` and a recipe's quantize stage ask for, checked."""
    from slmkit.compress import QUANT_METHODS

    config_class = QUANT_METHODS.get(method)
    if config_class is None:
        raise SlmError(f"unknown --method {method!r}; choose one of {', '.join(QUANT_METHODS)}")
    if act_order and method != "gptq":
        raise SlmError("--act-order applies to --method gptq only")
    extra = {"act_order": act_order} if method == "gptq" else {}
    if observer is not None:
        extra["observer"] = observer
    return config_class(**resolve_grid(bits, group_size, symmetric, target), **extra)


def calibration_record(calib: Path | str | None, samples: int, seq_len: int) -> dict:
    """How a checkpoint was calibrated, for its manifest."""
    return {"calib": str(calib) if calib else "self-generated", "calib_samples": samples, "calib_seq_len": seq_len}


def prune_stage(lm, out: Path, config, calibration: torch.Tensor | None, *, parent: str, calib: dict, seed: int,
                force: bool = False, progress: Progress = None) -> dict:
    """Unstructured or N:M pruning (slmkit.compress.prune) saved as a checkpoint."""
    from slmkit.compress import prune

    layers = prune(lm.model, config, calibration, progress=progress)
    sizes = {name: m["shape"][0] * m["shape"][1] for name, m in layers.items()}
    measured = sum(layers[name]["sparsity"] * size for name, size in sizes.items()) / sum(sizes.values())
    record = {**config.to_dict(), **(calib if calibration is not None else {})}
    save(lm.model, out, lm.tokenizer, stage="prune", parent=parent, config=record, seed=seed,
         metrics={"measured_sparsity": measured, "layers": layers}, force=force)
    return {**record, "measured_sparsity": measured, "pruned_layers": len(layers)}


def structured_stage(lm, out: Path, config, calibration: torch.Tensor, *, parent: str, calib: dict, seed: int,
                     force: bool = False, progress: Progress = None) -> dict:
    """Depth/width pruning (slmkit.compress.structured) saved as a smaller dense checkpoint."""
    from slmkit.compress.structured import prune_structured

    before = sum(p.numel() for p in lm.model.parameters())
    report = prune_structured(lm.model, config, calibration)
    if progress:
        progress(1, 1)
    kept = {key: report.pop(key) for key in ("kept_ffn_channels", "kept_heads")}
    record = {**config.to_dict(), **calib}
    save(lm.model, out, lm.tokenizer, stage="structured", parent=parent, config=record, seed=seed,
         metrics={**report, "parameters_before": before, **kept}, force=force)
    return {**record, "parameters_before": before, "parameters_after": report["parameters"],
            "removed_blocks": report["removed_blocks"], "ffn": report["ffn"], "heads": report["heads"]}


def quantize_stage(lm, out: Path, config, calibration: torch.Tensor | None, *, parent: str, calib: dict, seed: int,
                   fake_quant: bool = False, target: str | None = None, force: bool = False,
                   progress: Progress = None) -> dict:
    """RTN/GPTQ/AWQ (slmkit.compress.quantize) saved as compressed-tensors, or float values on the grid."""
    from slmkit.compress import quantize
    from slmkit.compress.formats import prepare_compressed_tensors

    layers, params = quantize(lm.model, config, calibration, progress=progress)
    saved_format = "fake-quant" if fake_quant else "compressed-tensors"
    after_write = None if fake_quant else prepare_compressed_tensors(lm.model, config, params)
    record = {**config.to_dict(), "format": saved_format, **({"target": target} if target else {}),
              **(calib if calibration is not None else {})}
    mse = sum(m["weight_mse"] for m in layers.values()) / len(layers)
    save(lm.model, out, lm.tokenizer, stage="quantize", parent=parent, config=record, seed=seed,
         metrics={"mean_weight_mse": mse, "layers": layers}, force=force, after_write=after_write)
    return {**record, "mean_weight_mse": mse, "quantized_layers": len(layers)}


def export_stage(lm, out: Path, quant: str, *, force: bool = False) -> dict:
    """A GGUF file (slmkit.export.export_gguf) with an Ollama Modelfile beside it."""
    from slmkit.export import export_gguf, write_modelfile

    written = export_gguf(lm, out, quant, force=force)
    modelfile = write_modelfile(written.path, lm.tokenizer)
    return {"format": "gguf", "quant": quant, "architecture": written.architecture, "tensors": written.tensors,
            "bytes": written.bytes, "calibrated_exact_layers": len(written.exact_layers),
            "calibrated_requantized_layers": len(written.requantized_layers), "modelfile": str(modelfile),
            "run_with": f"slm chat {written.path}"}


def export_onnx_stage(lm, out: Path, *, force: bool = False) -> dict:
    """An ONNX directory (slmkit.export.export_onnx): model.onnx, config and tokenizer."""
    from slmkit.export import export_onnx

    written = export_onnx(lm, out, force=force)
    run_with = (f"slm eval {written.path} --data DEV.tsv" if written.kind == "classifier"
                else f"slm bench {written.path}")
    return {"format": "onnx", "kind": written.kind, "inputs": ", ".join(written.inputs), "output": written.output,
            "opset": written.opset, "bytes": written.bytes, "run_with": run_with}
