"""GGUF export: a transformers decoder -> one .gguf file that llama.cpp, Ollama and LM Studio run.

Written with the `gguf` package (llama.cpp's own writer). Each weight matrix is stored at one llama.cpp type, its
blocks packed by compress/blocks.py (bit for bit what llama.cpp reads back):

- a checkpoint with a GGUF plan (compress/gguf_plan.py) keeps each planned matrix at its planned type and its
  calibrated values exactly, packed on the block parameters it was rounded on;
- otherwise one `quant` (f32, f16, bf16 or a block type) sets every matrix's type, and a block type is fitted and
  rounded here: the embedding and output at q8_0 below 8 bits, and a k-quant falls back on rows its 256-value
  blocks do not tile, as llama-quantize does. A checkpoint quantized on a symmetric 32-value grid with float16
  scales (`slm quantize --target gguf-q4_0`) keeps its calibrated values exactly at the matching type.

Norms and biases stay float32. `gguf_file_size` is the size of the file a choice of types makes, before anything
is rounded: what a planner fits a byte budget to.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np
import torch

from slmkit.compress.block_grid import BlockParams
from slmkit.compress.blocks import FORMATS
from slmkit.compress.gguf_plan import PLAN_FILE, exact_codes, read_plan
from slmkit.errors import SlmError
from slmkit.exporters.config import GGUF_QUANTS, gguf_quant
from slmkit.exporters.gguf_vocab import add_tokenizer
from slmkit.models.architectures import ARCHITECTURES, GGUFArchitecture, supporting
from slmkit.models.codes import recover_codes, stored_weight_scales
from slmkit.models.kinds import head_dim
from slmkit.models.checkpoint import (atomic_file, check_not_input, check_writable, claim_output, release_output,
                                     write_atomic)

Q = gguf.GGMLQuantizationType
QUANT_TYPES = {name: Q[name.upper()] for name in GGUF_QUANTS}
FLOAT_TYPES = ("f32", "f16", "bf16")
FileType = gguf.LlamaFileType
# general.file_type of a file whose weights are mostly of one type, as llama.cpp's loader names it (a k-quant:
# its _M mix).
FILE_TYPES = {"f32": FileType.ALL_F32, "f16": FileType.MOSTLY_F16, "bf16": FileType.MOSTLY_BF16,
              "q8_0": FileType.MOSTLY_Q8_0, "q4_0": FileType.MOSTLY_Q4_0, "q4_1": FileType.MOSTLY_Q4_1,
              "q5_0": FileType.MOSTLY_Q5_0, "q5_1": FileType.MOSTLY_Q5_1, "iq4_nl": FileType.MOSTLY_IQ4_NL,
              "q2_K": FileType.MOSTLY_Q2_K, "q3_K": FileType.MOSTLY_Q3_K_M, "q4_K": FileType.MOSTLY_Q4_K_M,
              "q5_K": FileType.MOSTLY_Q5_K_M, "q6_K": FileType.MOSTLY_Q6_K}
# llama-quantize's type for a k-quant's matrix whose rows its 256-value blocks do not tile (llama.cpp's
# src/llama-quant.cpp, tensor_type_fallback).
K_QUANT_FALLBACK = {"q2_K": "q4_0", "q3_K": "q4_0", "q4_K": "q5_0", "q5_K": "q5_1", "q6_K": "q8_0"}
# Embedding and output matrices carry every token; below 8 bits they stay at q8_0
# (llama.cpp's own quantizer also keeps them at higher precision than the blocks).
EDGE_TENSORS = ("token_embd.weight", "output.weight", "position_embd.weight")
EDGE_TYPE = "q8_0"
# Symmetric 32-value types with integer levels: a stored grid of group 32 with float16 scales is one of them exactly.
GRID_TYPES = ("q4_0", "q5_0", "q8_0")
GROUP = 32
UNPLANNED_TYPE = "f16"  # a matrix a plan leaves out: no block type was chosen (or calibrated) for it


@dataclass
class GGUFExport:
    """What was written: for the CLI's report and the manifest-less GGUF world."""

    path: Path
    quant: str  # the type asked of every matrix, or "plan": the checkpoint's GGUF plan chose each
    architecture: str
    tensors: int
    bytes: int
    exact_layers: list[str] = field(default_factory=list)  # calibrated values kept bit for bit
    requantized_layers: list[str] = field(default_factory=list)  # calibrated, but re-rounded at export
    fallbacks: dict[str, str] = field(default_factory=dict)  # k-quant matrices llama.cpp's way: gguf name -> type


@dataclass
class _Source:
    """A parameter as the file lays it out."""

    names: tuple[str, ...]  # its parameter names (a tied weight has several), named_parameters' own first
    gguf_name: str
    data: np.ndarray  # float32 in GGUF's orientation (transposed, norm + 1), q/k rows not yet permuted
    heads: int | None  # q/k: llama.cpp interleaves the rows of each of these many heads


def _permute_rows(rows: np.ndarray, heads: int) -> np.ndarray:
    """Reorder q/k output rows from HF's rotate-halves layout to llama.cpp's interleaved pairs."""
    return (rows.reshape(heads, 2, rows.shape[0] // heads // 2, *rows.shape[1:])
            .swapaxes(1, 2).reshape(rows.shape))


def grid_codes(checkpoint: Path | None, model) -> dict[str, tuple[torch.Tensor, torch.Tensor] | None]:
    """For each layer the checkpoint stores quantized (has a weight_scale): (int8 codes [rows, cols], float16
    scales [rows, cols/32]) when its weights sit exactly on a symmetric group-32 grid with float16 scales, else
    None (calibrated, but on a grid no GGUF block type holds)."""
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
            found[name] = (codes, scale.half())
    return found


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


def _sources(model, architecture: GGUFArchitecture) -> list[_Source]:
    config = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[architecture.arch], config.num_hidden_layers)
    heads = {"attn_q": config.num_attention_heads,
             "attn_k": getattr(config, "num_key_value_heads", None) or config.num_attention_heads}
    aliases: dict[int, list[str]] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(parameter), []).append(name)
    sources = []
    for name, parameter in model.named_parameters():  # tied weights appear once
        gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise SlmError(f"no GGUF tensor for {name} in a {config.model_type} model")
        data = parameter.detach().float().numpy()
        if architecture.transposed and data.ndim == 2 and gguf_name not in EDGE_TENSORS:
            data = data.T
        if architecture.norm_plus_one and gguf_name.endswith("norm.weight"):
            data = data + 1
        kind = gguf_name.split(".")[-2]
        sources.append(_Source(tuple(aliases[id(parameter)]), gguf_name, data,
                               heads[kind] if architecture.permute_qk and kind in heads else None))
    return sources


def gguf_tensor_names(model) -> dict[str, str]:
    """Each parameter's tensor name in the GGUF file (a tied weight under each of its names)."""
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[architecture_for(model.config).arch],
                                     model.config.num_hidden_layers)
    return {name: names.get_name(name, try_suffixes=(".weight", ".bias")) for name, _ in
            model.named_parameters(remove_duplicate=False)}


def _quant_types(sources: list[_Source], quant: str) -> tuple[dict[str, str], dict[str, str]]:
    """Each parameter's type under one --quant, and the k-quant fallbacks {gguf name: type}."""
    types, fallbacks = {}, {}
    for source in sources:
        shape = source.data.shape
        if len(shape) == 1 or quant in FLOAT_TYPES:
            types[source.names[0]] = "f32" if len(shape) == 1 else quant
            continue
        chosen = EDGE_TYPE if source.gguf_name in EDGE_TENSORS else quant
        if shape[-1] % FORMATS[chosen].block_length and chosen in K_QUANT_FALLBACK:
            chosen = fallbacks[source.gguf_name] = K_QUANT_FALLBACK[chosen]
        block = FORMATS[chosen].block_length
        if shape[-1] % block:
            raise SlmError(f"{source.gguf_name} has rows of {shape[-1]} values, not a multiple of {block}: "
                           f"--quant {quant} cannot hold it; export with --quant f16 or f32")
        types[source.names[0]] = chosen
    return types, fallbacks


def _planned_types(sources: list[_Source], planned: dict[str, str]) -> dict[str, str]:
    """Each parameter's type under a plan ({parameter name: type} of weight matrices; one left out: f16)."""
    types, unknown = {}, set(planned)
    for source in sources:
        if source.data.ndim == 1:
            types[source.names[0]] = "f32"
            continue
        unknown -= set(source.names)
        chosen = {gguf_quant(planned[name]) for name in source.names if name in planned}
        if len(chosen) > 1:
            raise SlmError(f"the GGUF plan gives the tied weights {', '.join(source.names)} different types "
                           f"({', '.join(sorted(chosen))}); they are one tensor in the file")
        type_name = chosen.pop() if chosen else UNPLANNED_TYPE
        columns = source.data.shape[-1]
        if type_name in FORMATS and columns % FORMATS[type_name].block_length:
            raise SlmError(f"the GGUF plan gives {source.names[0]} {type_name}, whose blocks of "
                           f"{FORMATS[type_name].block_length} values do not tile its rows of {columns}")
        types[source.names[0]] = type_name
    if unknown:
        raise SlmError(f"the GGUF plan names {sorted(unknown)[0]}, which is no weight matrix of this model")
    return types


def _tensor_bytes(type_name: str, shape: tuple[int, ...]) -> int:
    """A tensor's bytes at `type_name`, without the file's alignment padding."""
    block_size, type_size = gguf.GGML_QUANT_SIZES[QUANT_TYPES[type_name]]
    return int(np.prod(shape)) // block_size * type_size


def _padded(size: int) -> int:
    return gguf.GGUFWriter.ggml_pad(size, gguf.GGUF_DEFAULT_ALIGNMENT)


def _encode(source: _Source, type_name: str, plan_params: BlockParams | None, grid, calibrated: bool):
    """(the array written, whether it holds calibrated values: None not calibrated | True exact | False
    re-rounded)."""
    if type_name in FLOAT_TYPES:
        data = np.ascontiguousarray(source.data, dtype=np.float32)
        array = (data if type_name == "f32" else data.astype(np.float16) if type_name == "f16"
                 else gguf.quants.quantize(data, Q.BF16))
        return _in_file_order(array, source), None
    block = FORMATS[type_name]
    weight = torch.from_numpy(source.data)
    if plan_params is not None:
        codes = exact_codes(weight, type_name, plan_params)
        if codes is None:
            raise SlmError(f"{source.names[0]} is no longer on the {type_name} grid its GGUF plan rounded it to "
                           "(the model changed after quantization): quantize it again")
        return _in_file_order(block.pack(codes, plan_params), source), True
    if (grid is not None and type_name in GRID_TYPES and grid[0].shape == weight.shape
            and block.levels.low <= int(grid[0].min()) and int(grid[0].max()) <= block.levels.high):
        codes = (grid[0].short() - block.levels.low).to(torch.uint8)
        return _in_file_order(block.pack(codes, BlockParams(d=grid[1])), source), True
    params = block.fit(weight)
    array = block.pack(block.round_columns(weight, params, 0)[1], params)
    return _in_file_order(array, source), False if calibrated else None


def _in_file_order(array: np.ndarray, source: _Source) -> np.ndarray:
    """Rows (values or their packed blocks: each row is packed alone) in llama.cpp's q/k order."""
    return _permute_rows(array, source.heads) if source.heads else array


def write_modelfile(gguf_path: Path, tokenizer) -> Path:
    """An Ollama Modelfile beside the GGUF: `ollama create NAME -f FILE.Modelfile`.

    No TEMPLATE: Ollama takes the chat template from the GGUF's tokenizer.chat_template.
    """
    lines = [f"# ollama create {gguf_path.stem} -f {gguf_path.stem}.Modelfile", f"FROM ./{gguf_path.name}"]
    if tokenizer.eos_token:
        lines.append(f"PARAMETER stop {json.dumps(tokenizer.eos_token)}")
    return write_atomic(gguf_path.with_name(gguf_path.stem + ".Modelfile"), "\n".join(lines) + "\n")


def check_target(out: Path, quant: str | None, force: bool, reads: Iterable[str | Path | None] = (),
                 checkpoint: str | Path | None = None) -> None:
    """Refuse a bad --quant (or one given for a `checkpoint` whose GGUF plan decides the types) or --out (one that
    is the model being read, see `check_destination`) before any slow work, then claim `out`."""
    if quant is not None:
        gguf_quant(quant)
        if checkpoint is not None and (Path(checkpoint) / PLAN_FILE).is_file():
            raise SlmError(f"--quant {quant}: {checkpoint} has a GGUF plan ({PLAN_FILE}) that decides each weight "
                           "matrix's type; drop --quant")
    if out.suffix != ".gguf":
        raise SlmError(f"--out {out} should end in .gguf")
    check_not_input(out, reads)
    if out.exists() and not force:
        raise SlmError(f"{out} already exists; pass --force to replace it")
    if out.is_dir():
        raise SlmError(f"{out} is a directory; --out names the .gguf file to write")
    check_writable(out)
    claim_output(out)


def gguf_file_size(lm, types: dict[str, str] | str) -> int:
    """The bytes of the file `export_gguf` writes for `lm`, without rounding anything: with `types` a plan
    ({parameter name: type} of weight matrices, as gguf-plan.json holds them; a matrix left out is written at f16)
    or one --quant. The metadata's size depends on no type, so `gguf_file_size(lm, plan) - sum of the planned
    matrices' padded bytes` is what a planner subtracts from a byte budget."""
    lm.require("causal-lm", "GGUF export")
    architecture = architecture_for(lm.model.config)
    sources = _sources(lm.model, architecture)
    chosen = (_quant_types(sources, gguf_quant(types))[0] if isinstance(types, str)
              else _planned_types(sources, types))
    sizes = [_tensor_bytes(chosen[source.names[0]], source.data.shape) for source in sources]
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "metadata.gguf"
        writer = gguf.GGUFWriter(path, _arch_name(architecture))
        try:
            _describe(writer, lm, architecture.hparams(lm.model.config), FILE_TYPES["f32"])  # any: one uint32
            for source, size in zip(sources, sizes):
                writer.add_tensor_info(source.gguf_name, source.data.shape, np.dtype(np.float32), size,
                                       raw_dtype=QUANT_TYPES[chosen[source.names[0]]])
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
        finally:
            writer.close()
        metadata = path.stat().st_size
    return _padded(metadata) + sum(_padded(size) for size in sizes)


def export_gguf(lm, out: str | Path, quant: str | None = None, *, force: bool = False) -> GGUFExport:
    """Write `lm` (a LoadedModel of a causal LM) as a GGUF file at `out`, atomically. `quant`: every weight
    matrix's type; None: the checkpoint's GGUF plan, or f16 when it has none.

    Example: `export_gguf(slmkit.load("smollm2-135m-instruct"), "smollm2.q8_0.gguf", quant="q8_0")`.
    """
    out = Path(out)
    quant = None if quant is None else gguf_quant(quant)
    checkpoint = Path(lm.path) if lm.path else None
    check_target(out, quant, force, reads=[lm.path], checkpoint=checkpoint)
    try:
        lm.require("causal-lm", "GGUF export")
        architecture = architecture_for(lm.model.config)
        sources = _sources(lm.model, architecture)
        plan = read_plan(checkpoint)
        if plan is not None:
            types, fallbacks = _planned_types(sources, {name: entry.type for name, entry in plan[0].items()}), {}
        else:
            types, fallbacks = _quant_types(sources, quant or "f16")
        tensors = _encoded(lm.model, checkpoint, sources, types, plan[1] if plan else {})
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(out) as temporary:  # every tensor encoded (and every error raised) before this
            _write(gguf.GGUFWriter(temporary, _arch_name(architecture)), lm, architecture.hparams(lm.model.config),
                   FILE_TYPES[quant] if plan is None else _most_weights_type(sources, types), tensors)
    finally:
        release_output(out)
    return GGUFExport(path=out, quant="plan" if plan else quant or "f16", architecture=_arch_name(architecture),
                      tensors=len(tensors), bytes=out.stat().st_size,
                      exact_layers=[name for name, _, _, calibrated in tensors if calibrated is True],
                      requantized_layers=[name for name, _, _, calibrated in tensors if calibrated is False],
                      fallbacks=fallbacks)


def _encoded(model, checkpoint: Path | None, sources: list[_Source], types: dict[str, str],
             plan_params: dict) -> list[tuple[str, np.ndarray, Q, bool | None]]:
    """(gguf name, array to write, ggml type, calibrated: None | True exact | False re-rounded) per tensor."""
    codes = {} if plan_params else grid_codes(checkpoint, model)
    tensors = []
    for source in sources:
        name, type_name = source.names[0], types[source.names[0]]
        params = next((plan_params[alias] for alias in source.names if alias in plan_params), None)
        array, calibrated = _encode(source, type_name, params, codes.get(name), name in codes)
        tensors.append((source.gguf_name, array, QUANT_TYPES[type_name], calibrated))
    return tensors


def _most_weights_type(sources: list[_Source], types: dict[str, str]) -> FileType:
    """llama.cpp's general.file_type for a mix: that of the type most of the matrices' weights have."""
    weights = Counter()
    for source in sources:
        if source.data.ndim == 2:
            weights[types[source.names[0]]] += source.data.size
    return FILE_TYPES[weights.most_common(1)[0][0]]


def _arch_name(architecture: GGUFArchitecture) -> str:
    return gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH[architecture.arch]]


def _describe(writer, lm, hparams: dict, file_type) -> None:
    """Everything but the tensors. The quantization version is written whatever the types (as llama.cpp's
    converter does), so the metadata's size does not depend on them."""
    writer.add_name(Path(str(lm.spec)).name)
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for key, value in hparams.items():
        getattr(writer, f"add_{key}")(value)
    add_tokenizer(writer, lm.tokenizer, lm.model.config.vocab_size)


def _write(writer, lm, hparams: dict, file_type, tensors: list) -> None:
    try:
        _describe(writer, lm, hparams, file_type)
        for gguf_name, data, qtype, _ in tensors:
            writer.add_tensor(gguf_name, data, raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file(progress=False)
    finally:
        writer.close()
