"""ExecuTorch export: a decoder as a `.pte` program for phones (ExecuTorch's Android/iOS runtimes and its LLM
runner), with its tokenizer beside it.

The model runs with a static KV cache (transformers' exportable wrapper), its weights quantized by torchao as
ExecuTorch's LLM runners expect (8da4w: int8 dynamic activations x int4 weights in groups of 32, the scales
chosen by HQQ; the output projection at 8 bits, where 4 cost SmolLM2-135M 7 % more perplexity; the embedding
table int8 per row), lowered to XNNPACK. The program's signature is transformers': `forward(input_ids [1, S],
cache_position [S]) -> logits [1, S, vocab]` for any S up to the cache, plus the constant methods ExecuTorch's
runner reads (maximum length, vocabulary size, BOS/EOS ids). Found by probing torch 2.13 with executorch 1.5:
export needs `strict=True` (else the cache is traced as constants and lowering fails), and a quantized embedding
needs `padding_idx` cleared (the fused quantized-embedding pattern has none; it only matters in training).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from slmkit.errors import SlmError, first_line
from slmkit.exporters.config import ExecuTorchConfig
from slmkit.models.checkpoint import MANIFEST_NAME, atomic_directory, check_destination, new_manifest
from slmkit.models.info import count_parameters
from slmkit.models.kinds import KIND_NAMES, context_length
from slmkit.models.loading import PTE_MODEL_FILE
from slmkit.runtime.executorch import executorch_module

# The context a .pte is built for unless the model's is shorter or `max_context` says: the cache is allocated
# whole on the phone.
PTE_CONTEXT = 2048


@dataclass
class ExecuTorchExport:
    """What was written, for the CLI's report."""

    path: Path  # the directory
    quant: str
    max_context: int
    bytes: int  # model.pte


def check_executorch_target(out: Path, force: bool, reads=()) -> None:
    """Refuse a bad --out, or a missing extra, before any slow work."""
    executorch_module()
    if out.suffix in (".pte", ".gguf", ".onnx"):
        raise SlmError(f"--out {out} should name a directory for --format executorch ({PTE_MODEL_FILE}, config.json "
                       "and the tokenizer files go in it)")
    check_destination(out, force, reads)


def _quantize(model, quant: str) -> None:
    """torchao's quantization of the weights in place, as ExecuTorch's XNNPACK kernels run it."""
    executorch_module("torchao")
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, IntxWeightOnlyConfig, quantize_
    from torchao.quantization.granularity import PerAxis, PerGroup

    if quant == "f32":
        return
    if getattr(model.config, "tie_word_embeddings", False):  # the embedding and the output get their own grids
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding):
            module.padding_idx = None
    quantize_(model, IntxWeightOnlyConfig(weight_dtype=torch.int8, granularity=PerAxis(0)),
              filter_fn=lambda module, name: isinstance(module, torch.nn.Embedding))
    per_channel = Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int8, weight_granularity=PerAxis(0))
    if quant == "8da8w":
        quantize_(model, per_channel, filter_fn=lambda module, name: isinstance(module, torch.nn.Linear))
        return
    output = model.get_output_embeddings()
    quantize_(model, Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, weight_granularity=PerGroup(32),
                                                           intx_choose_qparams_algorithm="hqq_scale_only"),
              filter_fn=lambda module, name: isinstance(module, torch.nn.Linear) and module is not output)
    quantize_(model, per_channel, filter_fn=lambda module, name: module is output)


def export_executorch(lm, out: str | Path, config: ExecuTorchConfig | None = None, *,
                      force: bool = False) -> ExecuTorchExport:
    """Write `lm` (a LoadedModel of a causal LM, float32 on the CPU) as an ExecuTorch directory at `out`:
    model.pte, config.json, the tokenizer files and slmkit.json. The model's weights are quantized in place.

    Example: `export_executorch(slmkit.load("smollm2-135m-instruct"), "smollm2-pte")`, then
    `slm eval smollm2-pte --data wiki.txt`.
    """
    config, out = config or ExecuTorchConfig(), Path(out)
    check_executorch_target(out, force, reads=[lm.path])
    if lm.kind != "causal-lm":
        raise SlmError(f"{lm.spec}: the ExecuTorch export covers decoders; this is {KIND_NAMES[lm.kind]} "
                       f"({lm.model.config.model_type}); export encoders with --format onnx")
    if lm.tokenizer is None:
        raise SlmError(f"{lm.spec}: has no tokenizer files; the phone's runner reads them beside the program")
    length = min(config.max_context or PTE_CONTEXT, context_length(lm.model.config) or PTE_CONTEXT)
    parameters = count_parameters(lm.model)[0]
    program = _lowered(lm.model, config.quant, length)
    written = {}

    def write(tmp: Path) -> None:
        with (tmp / PTE_MODEL_FILE).open("wb") as handle:
            program.write_to_file(handle)
        written["bytes"] = (tmp / PTE_MODEL_FILE).stat().st_size
        lm.model.config.save_pretrained(tmp)
        lm.tokenizer.save_pretrained(tmp)
        record = {"format": "executorch", "quant": config.quant, "max_context": length}
        manifest = new_manifest("export", parent=lm.spec, config=record, metrics={"parameters": parameters})
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")

    atomic_directory(out, write, force=force, reads=[lm.path])
    return ExecuTorchExport(path=out, quant=config.quant, max_context=length, **written)


def _lowered(model, quant: str, length: int):
    """The model traced with its static cache, quantized, lowered to XNNPACK: the ExecuTorch program."""
    executorch_module()
    import executorch.kernels.quantized  # noqa: F401  (registers the quantized embedding's operators)
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.exir.passes import MemoryPlanningPass
    from transformers.integrations.executorch import TorchExportableModuleWithStaticCache

    model.eval()
    model.generation_config.use_cache = True
    model.generation_config.cache_implementation = "static"
    _quantize(model, quant)
    config = model.config
    eos = config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id]
    # What ExecuTorch's LLM runner (extension/llm/runner) reads from the program.
    runner_metadata = {"get_max_seq_len": length, "get_max_context_len": length, "get_vocab_size": config.vocab_size,
                       "get_bos_id": config.bos_token_id if config.bos_token_id is not None else 0,
                       "get_eos_ids": [token for token in eos if token is not None], "use_kv_cache": True,
                       "use_sdpa_with_kv_cache": False, "enable_dynamic_shape": True}
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the exporters' deprecation chatter
            wrapper = TorchExportableModuleWithStaticCache(model, batch_size=1, max_cache_len=length).eval()
            sequence = torch.export.Dim("sequence", min=1, max=length - 1)
            example = {"input_ids": torch.zeros(1, 2, dtype=torch.long), "cache_position": torch.arange(2)}
            program = torch.export.export(wrapper, (), example, strict=True,
                                          dynamic_shapes={"input_ids": {1: sequence}, "cache_position": {0: sequence}})
            edge = to_edge_transform_and_lower(
                program, partitioner=[XnnpackPartitioner()], constant_methods=runner_metadata,
                compile_config=EdgeCompileConfig(_check_ir_validity=False, _skip_dim_order=True))
            return edge.to_executorch(ExecutorchBackendConfig(
                extract_delegate_segments=True, do_quant_fusion_and_const_prop=True,
                memory_planning_pass=MemoryPlanningPass(alloc_graph_input=False)))
    except Exception as exc:  # torch.export and the lowering raise many types for code they cannot take
        raise SlmError(f"ExecuTorch cannot export this {config.model_type} model ({first_line(exc)}); "
                       "SLM_DEBUG=1 shows why") from exc
