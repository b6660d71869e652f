"""GGUF export: a transformers decoder -> one .gguf file that llama.cpp, Ollama and LM Studio run.

Written with the `gguf` package (llama.cpp's own writer and quantizers). A
checkpoint that slmkit quantized on a grid a GGUF block type holds exactly
(symmetric, 32 weights per group, float16 scales: `slm quantize --target
gguf-q4_0`) keeps its calibrated values bit for bit; anything else is rounded
by gguf's reference quantizer, as llama.cpp's converter does.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np
import torch

from slmkit.errors import SlmError
from slmkit.exporters.gguf_vocab import add_tokenizer
from slmkit.models.architectures import ARCHITECTURES, GGUFArchitecture, supporting
from slmkit.models.codes import recover_codes, stored_weight_scales
from slmkit.models.kinds import head_dim
from slmkit.models.checkpoint import (atomic_file, check_not_input, check_writable, claim_output, release_output,
                                     write_atomic)

Q = gguf.GGMLQuantizationType
QUANT_TYPES = {"f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0, "q4_0": Q.Q4_0, "q4_1": Q.Q4_1,
               "q5_0": Q.Q5_0}
FILE_TYPES = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
              "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
              "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0, "q4_1": gguf.LlamaFileType.MOSTLY_Q4_1,
              "q5_0": gguf.LlamaFileType.MOSTLY_Q5_0}
# Embedding and output matrices carry every token; below 8 bits they stay at q8_0
# (llama.cpp's own quantizer also keeps them at higher precision than the blocks).
EDGE_TENSORS = ("token_embd.weight", "output.weight", "position_embd.weight")
# Integer code range of a GGUF block type that slmkit's symmetric grid can fill exactly.
EXACT_CODE_RANGE = {Q.Q4_0: (-8, 7), Q.Q8_0: (-128, 127)}
GROUP = 32  # weights per q4_0 / q8_0 block


@dataclass
class GGUFExport:
    """What was written: for the CLI's report and the manifest-less GGUF world."""

    path: Path
    quant: str
    architecture: str
    tensors: int
    bytes: int
    exact_layers: list[str] = field(default_factory=list)  # calibrated values kept bit for bit
    requantized_layers: list[str] = field(default_factory=list)  # calibrated, but re-rounded by gguf


def _permute_rows(rows: np.ndarray, heads: int) -> np.ndarray:
    """Reorder q/k output rows from HF's rotate-halves layout to llama.cpp's interleaved pairs."""
    return (rows.reshape(heads, 2, rows.shape[0] // heads // 2, *rows.shape[1:])
            .swapaxes(1, 2).reshape(rows.shape))


def grid_codes(checkpoint: Path | None, model) -> dict[str, tuple[np.ndarray, np.ndarray] | None]:
    """For each layer the checkpoint stores quantized (has a weight_scale): (integer codes [rows, cols],
    float16 scales [rows, cols/32]) when its weights sit exactly on a symmetric group-32 grid with
    float16 scales, else None (calibrated, but on a grid no GGUF block type holds)."""
    parameters = dict(model.named_parameters())
    found = {}
    for module, (scale, _) in stored_weight_scales(checkpoint).items():
        name = f"{module}.weight"
        if name not in parameters:
            continue
        weight, scale = parameters[name].detach(), scale.float()
        found[name] = None
        if (weight.shape[1] % GROUP or scale.shape != (weight.shape[0], weight.shape[1] // GROUP)
                or not torch.equal(scale.half().float(), scale)):
            continue
        codes = recover_codes(weight, scale)  # no tolerance: the blocks keep the calibrated values bit for bit
        if codes is not None:
            found[name] = (codes.numpy(), scale.half().numpy())
    return found


def _exact_blocks(codes: np.ndarray, scales: np.ndarray, qtype) -> np.ndarray:
    """GGUF block bytes [rows, blocks * bytes_per_block] from integer codes and float16 scales."""
    rows, cols = codes.shape
    blocks = codes.reshape(rows, cols // GROUP, GROUP)
    scale_bytes = scales.astype(np.float16).reshape(rows, -1, 1).view(np.uint8)
    if qtype == Q.Q4_0:  # byte j holds code j (low nibble) and code j + 16 (high nibble), offset by 8
        nibbles = (blocks + 8).astype(np.uint8)
        packed = nibbles[..., :GROUP // 2] | (nibbles[..., GROUP // 2:] << np.uint8(4))
    else:
        packed = blocks.astype(np.int8).view(np.uint8)
    return np.concatenate([scale_bytes, packed], axis=-1).reshape(rows, -1)


def _tensor_type(gguf_name: str, shape: tuple[int, ...], quant: str):
    if len(shape) == 1:
        return Q.F32  # norms and biases: tiny, and llama.cpp reads them as f32
    qtype = QUANT_TYPES[quant]
    if gguf_name in EDGE_TENSORS and quant in ("q4_0", "q4_1", "q5_0"):
        qtype = Q.Q8_0
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    if shape[-1] % block:
        raise SlmError(f"{gguf_name} has rows of {shape[-1]} values, not a multiple of {block}: {quant} cannot "
                       f"hold it; export as f16 or f32")
    return qtype


def architecture_for(config) -> GGUFArchitecture:
    """How llama.cpp takes a `config.model_type` model: the table's GGUF record, checked against this config."""
    model_type = config.model_type
    architecture = getattr(ARCHITECTURES.get(model_type), "gguf", None)
    if architecture is None:
        raise SlmError(f"GGUF export does not support {model_type!r} models; supported: "
                       f"{', '.join(supporting('gguf'))}")
    heads = config.num_attention_heads
    if architecture.square_query and heads * head_dim(config) != config.hidden_size:
        raise SlmError(f"llama.cpp runs {model_type} only with attention heads x head_dim = hidden size, and this "
                       f"model has {heads} x {head_dim(config)} for {config.hidden_size} (heads removed by "
                       "structured pruning?); prune its depth and FFN width only to export it to GGUF")
    return architecture


def _tensors(model, architecture: GGUFArchitecture, quant: str, codes: dict):
    """(gguf name, array to write, ggml type, calibrated: None | True exact | False re-rounded) per tensor."""
    config = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[architecture.arch], config.num_hidden_layers)
    heads = {"attn_q": config.num_attention_heads,
             "attn_k": getattr(config, "num_key_value_heads", None) or config.num_attention_heads}
    for name, parameter in model.named_parameters():  # tied weights appear once
        gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise SlmError(f"no GGUF tensor for {name} in a {config.model_type} model")
        data = parameter.detach().float().numpy()
        calibrated, grid = name in codes, codes.get(name)
        if architecture.transposed and data.ndim == 2 and gguf_name not in EDGE_TENSORS:
            data = data.T
        if architecture.norm_plus_one and gguf_name.endswith("norm.weight"):
            data = data + 1
        kind = gguf_name.split(".")[-2]
        if architecture.permute_qk and kind in heads:
            data = _permute_rows(data, heads[kind])
            if grid is not None:
                grid = tuple(_permute_rows(part, heads[kind]) for part in grid)
        qtype = _tensor_type(gguf_name, data.shape, quant)
        if grid is not None and qtype in EXACT_CODE_RANGE:
            low, high = EXACT_CODE_RANGE[qtype]
            if low <= grid[0].min() and grid[0].max() <= high:
                yield gguf_name, _exact_blocks(grid[0], grid[1], qtype), qtype, True
                continue
        calibrated = False if calibrated and qtype not in (Q.F32, Q.F16, Q.BF16) else None
        if qtype == Q.F32:
            yield gguf_name, np.ascontiguousarray(data, dtype=np.float32), qtype, calibrated
        elif qtype == Q.F16:
            yield gguf_name, data.astype(np.float16), qtype, calibrated
        else:
            yield gguf_name, gguf.quants.quantize(np.ascontiguousarray(data, dtype=np.float32), qtype), qtype, \
                calibrated


def write_modelfile(gguf_path: Path, tokenizer) -> Path:
    """An Ollama Modelfile beside the GGUF: `ollama create NAME -f FILE.Modelfile`.

    No TEMPLATE: Ollama takes the chat template from the GGUF's tokenizer.chat_template.
    """
    lines = [f"# ollama create {gguf_path.stem} -f {gguf_path.stem}.Modelfile", f"FROM ./{gguf_path.name}"]
    if tokenizer.eos_token:
        lines.append(f"PARAMETER stop {json.dumps(tokenizer.eos_token)}")
    return write_atomic(gguf_path.with_name(gguf_path.stem + ".Modelfile"), "\n".join(lines) + "\n")


def check_target(out: Path, quant: str, force: bool, reads: Iterable[str | Path | None] = ()) -> None:
    """Refuse a bad --quant or --out (one that is the model being read, see `check_destination`) before any
    slow work, then claim `out`."""
    if quant not in QUANT_TYPES:
        raise SlmError(f"unknown --quant {quant!r}; choose one of {', '.join(QUANT_TYPES)}")
    if out.suffix != ".gguf":
        raise SlmError(f"--out {out} should end in .gguf")
    check_not_input(out, reads)
    if out.exists() and not force:
        raise SlmError(f"{out} already exists; pass --force to replace it")
    if out.is_dir():
        raise SlmError(f"{out} is a directory; --out names the .gguf file to write")
    check_writable(out)
    claim_output(out)


def export_gguf(lm, out: str | Path, quant: str = "f16", *, force: bool = False) -> GGUFExport:
    """Write `lm` (a LoadedModel of a causal LM) as a GGUF file at `out`, atomically.

    Example: `export_gguf(slmkit.load("smollm2-135m-instruct"), "smollm2.q8_0.gguf", quant="q8_0")`.
    """
    out = Path(out)
    check_target(out, quant, force, reads=[lm.path])
    lm.require("causal-lm", "GGUF export")
    model, config = lm.model, lm.model.config
    architecture = architecture_for(config)
    hparams = architecture.hparams(config)
    codes = grid_codes(Path(lm.path) if lm.path else None, model)
    tensors = list(_tensors(model, architecture, quant, codes))  # every shape error before anything is written
    arch_name = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH[architecture.arch]]

    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_file(out) as temporary:
            _write(gguf.GGUFWriter(temporary, arch_name), lm, quant, hparams, tensors)
    finally:
        release_output(out)
    return GGUFExport(path=out, quant=quant, architecture=arch_name,
                      tensors=len(tensors), bytes=out.stat().st_size,
                      exact_layers=[name for name, _, _, calibrated in tensors if calibrated is True],
                      requantized_layers=[name for name, _, _, calibrated in tensors if calibrated is False])


def _write(writer, lm, quant: str, hparams: dict, tensors: list) -> None:
    try:
        writer.add_name(Path(str(lm.spec)).name)
        writer.add_file_type(FILE_TYPES[quant])
        if quant not in ("f32", "f16", "bf16"):
            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        for key, value in hparams.items():
            getattr(writer, f"add_{key}")(value)
        add_tokenizer(writer, lm.tokenizer, lm.model.config.vocab_size)
        for gguf_name, data, qtype, _ in tensors:
            writer.add_tensor(gguf_name, data, raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file(progress=False)
    finally:
        writer.close()
