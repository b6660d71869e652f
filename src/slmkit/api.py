"""The public verbs: `slmkit.load, save, prune, quantize, export, evaluate, bench, generate`.

Each takes a model and a config and returns a StageResult (slmkit.results: the
flat numbers in `summary`, where it wrote them in `out`); the `slm` commands
and `slm run`'s stages call these same functions and add only parsing and
printing. A typical session:

    lm = slmkit.load("smollm2-135m-instruct")
    result = slmkit.quantize(lm, GPTQConfig(bits=4, group_size=32), Calibration("wiki.txt"))
    slmkit.save(lm, "out/gptq", result=result)
    slmkit.export(slmkit.load("out/gptq"), "out/model.q4_0.gguf", GGUFConfig(quant="q4_0"))
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from slmkit.compress import needs_calibration
from slmkit.compress import prune as prune_layers
from slmkit.compress import quantize as quantize_layers
from slmkit.compress.calibration import Calibration
from slmkit.compress.formats import check_compressed_tensors, prepare_compressed_tensors
from slmkit.compress.gguf_plan import write_plan
from slmkit.compress.gguf_quantize import GGUFPlanConfig, plan_types, quantize_planned
from slmkit.compress.gguf_quantize import candidates as plan_candidates
from slmkit.compress.sensitivity import measure_sensitivity
from slmkit.compress.runner import on_device
from slmkit.compress.structured import StructuredConfig, prune_structured
from slmkit.distillation import make_student
from slmkit.errors import SlmError
from slmkit.evaluation.bench import bench as run_bench
from slmkit.evaluation.config import BenchConfig, EvalConfig
from slmkit.evaluation.run import evaluate as run_evaluation
from slmkit.exporters.config import ExecuTorchConfig, ExportSettings, GGUFConfig, OnnxConfig, WebConfig
from slmkit.exporters.gguf import export_gguf, gguf_file_size, write_modelfile
from slmkit.exporters.imatrix import write_imatrix
from slmkit.exporters.onnx import export_onnx
from slmkit.exporters.web import export_web, export_web_file
from slmkit.models.catalog import DEFAULT_MODEL
from slmkit.models.checkpoint import save as save_checkpoint
from slmkit.models.devices import resolve_device
from slmkit.models.loading import LoadedModel
from slmkit.results import FinetuneResult, StageResult
from slmkit.runtime import as_runtime, open_model
from slmkit.runtime import generate as stream_answer
from slmkit.server import ServeSettings
from slmkit.server.app import create_app
from slmkit.server.server import bind, serve_forever, url_of
from slmkit.synthesis.generate import synth as write_records

# The training verbs (finetune, distill, QAT) import theirs on use: transformers' Trainer, peft and trl take seconds
# to import, which loading, compressing or serving a model need not pay.

Progress = Callable[[int, int], None] | None
# A GGUF's metadata names the model after the checkpoint it is exported from, not known while planning: room for it.
NAME_MARGIN = 256


@dataclass(kw_only=True)
class CompressResult(StageResult):
    """What a one-shot method did to a model in memory (so `out` is None); `save` writes it with its manifest.

    `config`: the method's settings and how it was calibrated; `metrics`: what was measured (per layer);
    `summary`: the flat numbers a command prints and a recipe records.
    """

    stage: str  # prune | structured | quantize | student
    config: dict
    metrics: dict
    seed: int | None = None
    quant_config: Any = None  # quantize: the QuantConfig, to pack the codes as compressed-tensors
    quant_params: dict = field(default_factory=dict, repr=False)  # layer -> (scale, zero point)
    fake_quant: bool = False  # quantize: float values on the grid, not packed
    after_write: Callable[[Path], None] | None = None  # adds files beside the model (a GGUF plan)


def load(spec: str = DEFAULT_MODEL, *, backend: str = "torch", device: str = "cpu", dtype: str = "float32",
         **options):
    """Open a model (`runtime.open_model`). By default with torch, in float32 on the CPU: what compression
    and export work on (they compute on a GPU a block at a time with their own `device=`).

    Example: `lm = slmkit.load("smollm2-135m-instruct", device="cuda", dtype="bfloat16")` to run it on a GPU.
    """
    if backend != "torch":  # llama.cpp and onnxruntime take neither
        return open_model(spec, backend=backend, **options)
    return open_model(spec, backend=backend, device=device, dtype=dtype, **options)


def save(lm, out: str | Path, tokenizer=None, *, result: CompressResult | None = None, stage: str = "save",
         parent: str | None = None, config: dict | None = None, seed: int | None = None,
         metrics: dict | None = None, force: bool = False) -> Path:
    """Write a checkpoint directory atomically: the model, its tokenizer and `slmkit.json`.

    `lm`: a loaded model (its tokenizer and spec come along) or a bare transformers model. With a `result`
    (prune, quantize, student), the manifest records it, and a quantize result's weights are packed as
    compressed-tensors (unless it was fake-quant); otherwise `stage`/`config`/`metrics` say what to record.
    Example: `slmkit.save(lm, "out/gptq", result=slmkit.quantize(lm, GPTQConfig(), Calibration("wiki.txt")))`.
    """
    loaded = isinstance(lm, LoadedModel)
    model = lm.model if loaded else lm
    tokenizer = tokenizer if tokenizer is not None or not loaded else lm.tokenizer
    parent = parent if parent is not None or not loaded else lm.spec
    after_write = None
    if result is not None:
        stage, config, metrics = result.stage, result.config, result.metrics
        seed = result.seed if seed is None else seed
        after_write = result.after_write
        if result.quant_config is not None and not result.fake_quant:
            after_write = prepare_compressed_tensors(model, result.quant_config, result.quant_params)
    return save_checkpoint(model, out, tokenizer, stage=stage, parent=parent, config=config, seed=seed,
                           metrics=metrics, force=force, after_write=after_write,
                           reads=[lm.path] if loaded else ())


def _require_float32_on_cpu(lm, task: str) -> None:
    """Compression rewrites float32 weights that wait on the CPU (a GPU computes a block at a time with
    `device=`): bfloat16 cannot hold a 4-bit grid's values exactly, and export reads the weights from the CPU."""
    weight = next(_model_of(lm).parameters())
    if weight.dtype != torch.float32 or weight.device.type != "cpu":
        raise SlmError(f"{task} works on a float32 model on the CPU, and this one is {str(weight.dtype)[6:]} on "
                       f"{weight.device}; load it with slmkit.load(spec, device='cpu', dtype='float32') and pass "
                       "device='cuda' to compute on the GPU")


def _model_of(lm):
    """The transformers model of a loaded model, or the model itself when given bare."""
    return lm.model if isinstance(lm, LoadedModel) else lm


def _calibration_for(lm, config, calibration):
    """Token ids for the method, or None when it reads no data (magnitude, RTN)."""
    if isinstance(calibration, torch.Tensor):
        return calibration, {}
    if not needs_calibration(config):
        return None, {}
    if not isinstance(lm, LoadedModel):
        raise SlmError(f"{config.method} reads calibration data: pass token ids with a bare model, or a loaded "
                       "model (slmkit.load) and a Calibration")
    calibration = calibration or Calibration()
    return calibration.ids(lm), calibration.record()


def prune(lm, config, calibration: Calibration | Any = None, *, device: str | torch.device | None = None,
          progress: Progress = None) -> CompressResult:
    """Unstructured or N:M pruning (MagnitudeConfig, WandaConfig, SparseGPTConfig), or depth/width pruning
    (StructuredConfig), of a loaded model (or a bare transformers model) in place. `calibration`: a Calibration,
    or token ids [n, seq_len]; None calibrates on the model's own text. `device`: where each block is computed
    (e.g. cuda), a name or a torch.device resolved already.

    Example: `slmkit.prune(lm, WandaConfig(sparsity=0.5), Calibration("wiki.txt"))`.
    """
    ids, record = _calibration_for(lm, config, calibration)
    seed = getattr(calibration, "seed", None)

    _require_float32_on_cpu(lm, "pruning")
    target = resolve_device(device) if device else None
    if isinstance(config, StructuredConfig):
        return _structured(lm, config, ids, record, seed, target, progress)

    layers = prune_layers(_model_of(lm), config, ids, progress=progress, device=target)
    sizes = {name: m["shape"][0] * m["shape"][1] for name, m in layers.items()}
    measured = sum(layers[name]["sparsity"] * size for name, size in sizes.items()) / sum(sizes.values())
    settings = {**config.to_dict(), **record}
    return CompressResult(stage="prune", config=settings, metrics={"measured_sparsity": measured, "layers": layers},
                          summary={**settings, "measured_sparsity": measured, "pruned_layers": len(layers)}, seed=seed)


def _structured(lm, config, ids, record: dict, seed: int | None, device, progress: Progress) -> CompressResult:

    model = _model_of(lm)
    before = sum(p.numel() for p in model.parameters())
    with on_device(model, device):  # scoring runs whole forward passes: the model goes to the device whole
        report = prune_structured(model, config, ids)
    if progress:
        progress(1, 1)
    kept = {key: report.pop(key) for key in ("kept_ffn_channels", "kept_heads")}
    settings = {**config.to_dict(), **record}
    return CompressResult(stage="structured", config=settings, metrics={**report, "parameters_before": before, **kept},
                          summary={**settings, "parameters_before": before, "parameters_after": report["parameters"],
                                   "removed_blocks": report["removed_blocks"], "ffn": report["ffn"],
                                   "heads": report["heads"]}, seed=seed)


def quantize(lm, config, calibration: Calibration | Any = None, *, fake_quant: bool = False,
             target: str | None = None, device: str | torch.device | None = None,
             progress: Progress = None) -> CompressResult:
    """RTN, GPTQ or AWQ (RTNConfig, GPTQConfig, AWQConfig), QAT (QATConfig: on q4_0's grid), or a GGUF plan
    (GGUFPlanConfig: a llama.cpp block type per matrix under a budget; PlanQATConfig: then trained on those grids),
    of a loaded model in place: the weights take the values of their codes (a bare transformers model too, given
    token ids). `save` then packs them as compressed-tensors, or keeps the float values with `fake_quant` (a
    plan's always, with the plan `slm export` packs). `target`: the GGUF type the grid was chosen for (recorded
    only). `device`: where each block is computed (QAT: where it trains; None: the config's device), a name or a
    torch.device resolved already.

    Example: `slmkit.quantize(lm, GPTQConfig(bits=4, group_size=64), Calibration("wiki.txt"))`;
    `slmkit.quantize(lm, GGUFPlanConfig(size=100_000_000), Calibration("wiki.txt"))`;
    `slmkit.quantize(lm, PlanQATConfig(plan=GGUFPlanConfig(max_kl=0.02), steps=200), Calibration("wiki.txt"))`.
    """
    from slmkit.distillation.plan_qat import PlanQATConfig  # heavy: the training stack (the note at the top)
    from slmkit.distillation.qat import QATConfig

    planned = isinstance(config, (GGUFPlanConfig, PlanQATConfig))
    if not fake_quant and not planned:  # a plan keeps float values: export packs them
        check_compressed_tensors(config)  # before any slow work
    _require_float32_on_cpu(lm, "quantization")
    if planned:
        return _planned(lm, config, calibration, fake_quant, target, device, progress)
    if isinstance(config, QATConfig):
        return _quantization_aware(lm, config, calibration, fake_quant, target, device, progress)
    ids, record = _calibration_for(lm, config, calibration)
    target_device = resolve_device(device) if device else None
    layers, params = quantize_layers(_model_of(lm), config, ids, progress=progress, device=target_device)
    settings = _quantize_settings(config, fake_quant, target, record)
    mse = sum(m["weight_mse"] for m in layers.values()) / len(layers)
    return CompressResult(stage="quantize", config=settings, metrics={"mean_weight_mse": mse, "layers": layers},
                          summary={**settings, "mean_weight_mse": mse, "quantized_layers": len(layers)},
                          seed=getattr(calibration, "seed", None), quant_config=config, quant_params=params,
                          fake_quant=fake_quant)


def _quantize_settings(config, fake_quant: bool, target: str | None, record: dict) -> dict:
    """What a quantize result's manifest records of how it was made."""
    return {**config.to_dict(), "format": "fake-quant" if fake_quant else "compressed-tensors",
            **({"target": target} if target else {}), **record}


def _planned(lm, config, calibration, fake_quant: bool, target: str | None, device,
             progress: Progress) -> CompressResult:
    """A GGUF plan (compress.gguf_quantize): the type per matrix that fits the budget with the least predicted KL,
    each matrix rounded on its grid; the checkpoint keeps the float values and the plan `slm export` packs. A
    PlanQATConfig then trains every planned matrix on its grid against the float model (distillation.plan_qat),
    from the plan it makes first or from the checkpoint's own."""
    from slmkit.distillation.plan_qat import PlanGrids, PlanQATConfig, checkpoint_plan  # heavy, as above
    from slmkit.distillation.qat import train_on_grid, training_device

    if not isinstance(lm, LoadedModel):
        raise SlmError("a GGUF plan sizes the file slm export writes: pass a model opened by slmkit.load")
    lm.require("causal-lm", "a GGUF plan")
    model = lm.model
    qat = config if isinstance(config, PlanQATConfig) else None
    plan_config, stored = config if qat is None else qat.plan, None
    if qat is not None:  # what can fail, before the sequences are read or sampled
        if lm.tokenizer is None:
            raise SlmError("QAT trains on token sequences: pass a model opened by slmkit.load, with its tokenizer")
        device = training_device(qat, device)
        if not isinstance(calibration, torch.Tensor):
            calibration = (calibration or Calibration()).for_method(qat)
            qat.held_out_count(calibration.samples)
        if plan_config is None:
            stored = checkpoint_plan(lm)
    ids, record = _calibration_for(lm, config, calibration)
    if stored is not None:
        planned, params, predicted, teacher = stored
    else:
        teacher = None if qat is None else copy.deepcopy(model).eval().requires_grad_(False)
        ids_to_plan = ids if qat is None else ids[qat.held_out_count(len(ids)):]  # held out: they measure QAT
        measured_on = ids_to_plan[:plan_config.sensitivity_samples]
        sensitivity = measure_sensitivity(model, measured_on)
        if plan_config.imatrix_out:
            write_imatrix(model, plan_config.imatrix_out, {name: entry.input_squares for name, entry
                                                           in sensitivity.items() if entry.input_squares is not None},
                          sequences=len(measured_on), sequence_length=measured_on.shape[1],
                          datasets=[record.get("calib", "token ids")])
        found = plan_candidates(model, sensitivity, plan_config.types)
        smallest = {name: min(options, key=lambda option: option.bytes) for name, options in found.items()}
        fixed = gguf_file_size(lm, {name: option.type for name, option in smallest.items()}) - sum(
            option.bytes for option in smallest.values())
        size = plan_config.size if plan_config.bpw is None else int(
            plan_config.bpw * sum(p.numel() for p in model.parameters()) / 8)
        planned = plan_types(found, budget=None if size is None else size - fixed - NAME_MARGIN,
                             max_kl=plan_config.max_kl)
        params = quantize_planned(model, planned, sensitivity, ids_to_plan, gptq=plan_config.method == "gptq",
                                  device=resolve_device(device) if device else None,
                                  progress=progress if qat is None else None)  # QAT's bar counts its steps
        predicted = {"file_bytes": fixed + sum(tensor.bytes for tensor in planned.values()),
                     "predicted_kl": sum(tensor.predicted_kl for tensor in planned.values()),
                     "types": dict(Counter(tensor.type for tensor in planned.values()).most_common())}
    settings = {**config.to_dict(), "format": "fake-quant", "target": "gguf", **record}
    trained, plan_summary = {}, predicted
    if qat is not None:
        trained, params = train_on_grid(model, teacher, lm.tokenizer, qat, ids, PlanGrids(planned, params), device,
                                        progress=progress)
        settings["loss_curve"] = trained.pop("loss_curve")  # as QAT on q4_0's grid: the qat stage's report plots it
        plan_summary = {**predicted, "kl_before_qat": trained["kl_before"], "kl_after_qat": trained["kl_after"]}
    # The manifest keeps the plan's totals beside its type per matrix; the budget is in its config.
    return CompressResult(stage="quantize", config=settings,
                          metrics={**predicted, **trained, "plan": {name: vars(tensor) for name, tensor
                                                                    in planned.items()}},
                          summary={**{key: value for key, value in settings.items() if key != "loss_curve"},
                                   **predicted, **trained, "quantized_layers": len(planned)},
                          seed=getattr(calibration, "seed", None), fake_quant=True,
                          after_write=lambda directory: write_plan(directory, planned, params, plan_summary))


def _quantization_aware(lm, config, calibration, fake_quant: bool, target: str | None, device,
                        progress: Progress) -> CompressResult:
    """QAT (distill.qat): the model trained onto the grid against its own float distributions."""
    from slmkit.distillation.qat import check_layers, quantization_aware_training, training_device  # heavy, as above

    model = _model_of(lm)
    if not isinstance(lm, LoadedModel) or lm.tokenizer is None:
        raise SlmError("QAT trains on token sequences: pass a model opened by slmkit.load, with its tokenizer")
    check_layers(model)  # before the sequences are read or sampled
    device = training_device(config, device)  # a device it cannot train on, too
    if isinstance(calibration, torch.Tensor):  # token ids given
        ids, record, seed = calibration, {}, None
    else:
        calibration = (calibration or Calibration()).for_method(config)
        config.held_out_count(calibration.samples)  # before the sequences are read or sampled
        ids, record, seed = calibration.ids(lm), calibration.record(), calibration.seed
    metrics, params = quantization_aware_training(model, lm.tokenizer, config, ids, device=device,
                                                  progress=progress)
    curve = metrics.pop("loss_curve")
    settings = {**_quantize_settings(config, fake_quant, target, record), "loss_curve": curve}
    summary = {**{k: v for k, v in settings.items() if k != "loss_curve"}, **metrics, "quantized_layers": len(params)}
    return CompressResult(stage="quantize", config=settings, metrics=metrics, summary=summary, seed=seed,
                          quant_config=config, quant_params=params, fake_quant=fake_quant)


def export(lm, out: str | Path,
           config: GGUFConfig | OnnxConfig | WebConfig | ExecuTorchConfig | ExportSettings | None = None, *,
           force: bool = False) -> StageResult:
    """Write a loaded model for another runtime; the result's `out` is what was written (the .gguf file, or the
    ONNX or web directory), its summary the format, size and how to run it. GGUF: quant ("plan": the checkpoint's
    GGUF plan chose each matrix's type), architecture, tensors, calibrated_exact_layers (kept bit for bit),
    calibrated_requantized_layers, fallback_layers (k-quant matrices at llama.cpp's fallback type), modelfile; ONNX:
    kind, inputs, output, opset; web: kind, runtime, model_files, model_bytes, runtime_bytes; executorch: quant,
    max_context (the program's KV cache, in tokens). With a WebConfig,
    `lm` may also be the path of a .gguf file or an ONNX directory, whose weights the folder keeps as they are.

    Example: `slmkit.export(lm, "smollm2.q8_0.gguf", GGUFConfig(quant="q8_0")).summary["bytes"]`.
    """
    config = config or GGUFConfig()
    if isinstance(config, ExportSettings):  # `slm export`'s settings: the config they name
        config = config.export_config()
    out = Path(out)
    if isinstance(config, WebConfig):
        if isinstance(lm, (str, Path)):
            if config.quant is not None:
                raise SlmError(f"--quant: {lm} is exported with its weights as they are (drop --quant)")
            written = export_web_file(lm, out, force=force)
        else:
            _require_float32_on_cpu(lm, "web export")
            written = export_web(lm, out, config, force=force)
        return StageResult({"format": "web", "kind": written.kind, "runtime": written.runtime,
                            "model_files": len(written.model_files), "model_bytes": written.model_bytes,
                            "runtime_bytes": written.runtime_bytes,
                            "bytes": written.model_bytes + written.runtime_bytes,
                            "run_with": f"slm serve --static {written.path}"}, written.path)
    if isinstance(config, ExecuTorchConfig):
        from slmkit.exporters.executorch import export_executorch  # executorch: an optional extra

        _require_float32_on_cpu(lm, "ExecuTorch export")
        written = export_executorch(lm, out, config, force=force)
        return StageResult({"format": "executorch", "quant": written.quant, "max_context": written.max_context,
                            "bytes": written.bytes, "run_with": f"slm generate -m {written.path} PROMPT"},
                           written.path)
    if isinstance(config, OnnxConfig):
        written = export_onnx(lm, out, force=force)
        run_with = (f"slm eval {written.path} --data DEV.tsv" if written.kind == "classifier"
                    else f"slm bench {written.path}")
        return StageResult({"format": "onnx", "kind": written.kind, "inputs": ", ".join(written.inputs),
                            "output": written.output, "opset": written.opset, "bytes": written.bytes,
                            "run_with": run_with}, written.path)
    if not isinstance(config, GGUFConfig):
        raise SlmError(f"export takes a GGUFConfig, an OnnxConfig, a WebConfig or an ExecuTorchConfig, not "
                       f"{type(config).__name__}")
    _require_float32_on_cpu(lm, "GGUF export")
    written = export_gguf(lm, out, config.quant, force=force)
    modelfile = write_modelfile(written.path, lm.tokenizer)
    return StageResult({"format": "gguf", "quant": written.quant, "architecture": written.architecture,
                        "tensors": written.tensors, "bytes": written.bytes,
                        "calibrated_exact_layers": len(written.exact_layers),
                        "calibrated_requantized_layers": len(written.requantized_layers),
                        "fallback_layers": len(written.fallbacks), "modelfile": str(modelfile),
                        "run_with": f"slm chat {written.path}"}, written.path)


def evaluate(lm, data: str | Path, config: EvalConfig | None = None, *, reference=None,
             progress: Progress = None) -> StageResult:
    """Quality of a model on a data file; the result's summary is `task` and `data`, then the task's metrics:
    perplexity gives token_perplexity, word_perplexity, bits_per_byte, scored_tokens, windows...; choice
    acc/acc_norm; lambada acc/perplexity; classification accuracy/macro_f1; every task its `examples` or `windows`.
    With a `reference` model (a text only), also kl_mean, kl_median, kl_p99, kl_max, top1_agreement,
    reference_token_perplexity and perplexity_ratio: how far `lm`'s next-token distributions are from it.

    Example: `slmkit.evaluate(lm, "wiki.txt", EvalConfig(max_length=2048)).summary["token_perplexity"]`;
    `slmkit.evaluate(quantized, "wiki.txt", reference=slmkit.load()).summary["kl_mean"]`.
    """
    return StageResult(run_evaluation(lm, data, **(config or EvalConfig()).options(), reference=reference,
                                      progress=progress))


def bench(lm, config: BenchConfig | None = None, *, progress: Progress = None) -> StageResult:
    """Speed and memory; the result's summary: model, backend, device, threads, dtype, parameters,
    bytes_on_disk, prompt_tokens, gen_tokens, repeats, prefill_tokens_per_s, time_to_first_token_s,
    decode_tokens_per_s (None for an encoder), peak_rss_bytes, compiled, int8_checkpoint_layers, warmup_s.

    Example: `slmkit.bench(slmkit.load(weights="int8"), BenchConfig(gen_tokens=64)).summary["decode_tokens_per_s"]`.
    """
    return StageResult(run_bench(lm, **(config or BenchConfig()).options(), progress=progress))


def generate(lm, prompt: str | list[dict], sampling=None, **options) -> Iterator[str]:
    """Stream the answer to a prompt or a conversation (`runtime.generate`).

    Example: `"".join(slmkit.generate(lm, "Hi", SamplingConfig(temperature=0)))`.
    """
    return stream_answer(lm, prompt, sampling, **options)


def serve(lm, settings=None, *, host: str = "127.0.0.1", port: int = 8000, listening=None,
          on_ready: Callable[[str], None] | None = None) -> None:
    """Serve a model with the OpenAI API until Ctrl-C (`slm serve`): an opened model (`slmkit.runtime.open_model`:
    torch, llama.cpp) and `serve.ServeSettings` (default: named after the model's spec). `listening`: a socket
    bound already (`slmkit.server.server.bind`, as the CLI does before the model loads, so a port in use fails at
    once); `on_ready(url)` is called when the app is built.

    Example: `slmkit.serve(open_model("smollm2-135m-instruct"), ServeSettings("smollm2-135m-instruct"), port=8080)`.
    """
    sock = listening or bind(host, port)
    lm = as_runtime(lm)
    app = create_app(lm, settings or ServeSettings(name=lm.spec))
    if on_ready is not None:
        on_ready(url_of(sock))
    serve_forever(app, sock)


def finetune(model: str, out: str | Path, config, *, progress=None, force: bool = False) -> FinetuneResult:
    """Fine-tune `model` (a spec: it is opened with the head the task needs) on `config.data` into `out`;
    returns a FinetuneResult (slmkit.results): the final evaluation's metrics in `summary`, the model's directory
    in `out`; `completed` is False when SIGTERM stopped it at a checkpoint.

    Example: `slmkit.finetune("smollm2-135m-instruct", "out/chat", FinetuneConfig(data="chat.jsonl", lora=True))`.
    """
    from slmkit.finetuning.run import finetune as run_finetune  # heavy: the training stack (the note at the top)

    return run_finetune(model, out, config, progress=progress, force=force)


def synth(teacher, prompts, out: str | Path, config=None, *, progress: Progress = None) -> StageResult:
    """Have `teacher` (a spec or an opened model) answer `prompts` (a .jsonl/.txt file or a list) into the chat
    JSONL `out`, filtered and near-deduplicated, resuming an earlier run of the same settings; the result's `out`
    is that file, its summary what the run did (generated, kept, dropped per reason, tokens/s: synthesis.generate).

    Example: `slmkit.synth("smollm2-135m-instruct", "prompts.txt", "data.jsonl", SynthConfig(style="orca"))`.
    """
    return write_records(teacher, prompts, out, config, progress=progress)


def student(lm, config, calibration: Calibration | Any = None, *, progress: Progress = None) -> CompressResult:
    """Make a loaded teacher into a smaller student in place (StudentConfig: kept blocks, evenly spaced depth, a
    fresh config, or structured width / parameter count, which `calibration` scores); the result's summary is what
    was kept. `save` then writes it (stage "student"; give the teacher as parent).

    Example: `lm = slmkit.load("minilm-l6"); made = slmkit.student(lm, StudentConfig(layers=(0, 2, 4)))`,
    then `slmkit.save(lm, "out/student", result=made, parent="minilm-l6")`.
    """
    _require_float32_on_cpu(lm, "making a student")
    structured = config.structured()
    if structured is not None:
        report = prune(lm, structured, calibration, progress=progress).summary
    else:
        report = make_student(lm, config)
    return CompressResult(stage="student", config=config.to_dict(), metrics=report, summary=report)


def distill(teacher: str, student: str, out: str | Path, config, *, progress=None,
            force: bool = False) -> FinetuneResult:
    """Train `student` on `config.data` (a DistillConfig) with `teacher`'s distributions in the loss; returns
    a FinetuneResult, as `finetune` does (its curve's `parts` hold kd_loss and ce_loss).

    Example: `slmkit.distill("smollm2-135m-instruct", "out/student", "out/kd", DistillConfig(data="wiki.txt"))`.
    """
    from slmkit.distillation.run import distill as run_distill  # heavy: the training stack (the note at the top)

    return run_distill(teacher, student, out, config, progress=progress, force=force)
