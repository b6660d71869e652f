"""ONNX export: a transformers encoder or sequence classifier -> a directory onnxruntime runs.

torch.onnx's dynamo exporter (torch.export, then onnxscript) writes `model.onnx`
with batch and sequence as symbolic dimensions; config.json, the tokenizer files
and `slmkit.json` go beside it, so `slm eval DIR` needs nothing else. Decoders
are GGUF's job: llama.cpp runs them with a KV cache and quantized weights.
"""

from __future__ import annotations

import inspect
import json
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from slmkit.errors import SlmError, first_line
from slmkit.models.checkpoint import MANIFEST_NAME, atomic_directory, check_destination, new_manifest
from slmkit.models.info import count_parameters
from slmkit.models.kinds import KIND_NAMES
from slmkit.models.loading import ONNX_MODEL_FILE
from slmkit.runtime.onnx import OUTPUTS, onnx_module

# What the encoder families' tokenizers produce, in the order of _NamedOutput.forward's parameters:
# the exporter names the graph's inputs in that order.
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass
class ONNXExport:
    """What was written, for the CLI's report."""

    path: Path  # the directory
    kind: str  # encoder | classifier
    inputs: list[str]
    output: str
    opset: int
    bytes: int  # model.onnx


class _NamedOutput(torch.nn.Module):
    """The model with one tensor out: a transformers output object holds several (pooler output, ...)."""

    def __init__(self, model, output: str):
        super().__init__()
        self.model, self.output = model, output

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        given = {"attention_mask": attention_mask, "token_type_ids": token_type_ids}
        outputs = self.model(input_ids=input_ids, **{name: value for name, value in given.items() if value is not None})
        return getattr(outputs, self.output)


def check_onnx_target(out: Path, force: bool, reads: Iterable[str | Path | None] = ()) -> None:
    """Refuse a bad --out (see `check_destination`), or a missing onnx extra, before any slow work."""
    for module in ("onnx", "onnxscript"):  # the dynamo exporter imports both
        onnx_module(module)
    if out.suffix in (".onnx", ".gguf"):
        raise SlmError(f"--out {out} should name a directory for --format onnx ({ONNX_MODEL_FILE}, config.json and the "
                       "tokenizer files go in it)")
    check_destination(out, force, reads)


def _input_names(lm) -> list[str]:
    accepted = inspect.signature(lm.model.forward).parameters
    names = [name for name in INPUTS if name in lm.tokenizer.model_input_names and name in accepted]
    if "input_ids" not in names:
        raise SlmError(f"{lm.spec}: its tokenizer gives {', '.join(lm.tokenizer.model_input_names)}, not input_ids")
    return names


def _example_inputs(names: list[str], vocab_size: int) -> dict[str, torch.Tensor]:
    """A padded batch of 2 x 16: torch.export fixes dimensions of size 0 or 1, and padding keeps the
    trace on the masked attention path should transformers skip an all-ones mask."""
    input_ids = torch.arange(32).reshape(2, 16) % vocab_size
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 10:] = 0
    values = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": torch.zeros_like(input_ids)}
    return {name: values[name] for name in names}


def export_onnx(lm, out: str | Path, *, force: bool = False) -> ONNXExport:
    """Write `lm` (a LoadedModel of kind encoder or classifier) as an ONNX directory at `out`, atomically.

    Example: `export_onnx(slmkit.load("minilm-l6"), "minilm-onnx")`, then
    `OnnxModel("minilm-onnx").model(**tokenizer(texts, return_tensors="pt")).last_hidden_state`.
    """
    out = Path(out)
    check_onnx_target(out, force, reads=[lm.path])
    config = lm.model.config
    if lm.kind not in OUTPUTS:
        raise SlmError(f"{lm.spec}: ONNX export covers encoder models (BERT, DistilBERT, MobileBERT, MiniLM) and "
                       f"their sequence classifiers; this is {KIND_NAMES[lm.kind]} ({config.model_type}); "
                       "export decoders with --format gguf")
    if lm.tokenizer is None:
        raise SlmError(f"{lm.spec}: has no tokenizer files; the ONNX directory carries them to run on its own")
    names, output = _input_names(lm), OUTPUTS[lm.kind]
    example = _example_inputs(names, config.vocab_size)
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    written = {}

    def write(tmp: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's deprecation and axis-naming chatter
            try:
                program = torch.onnx.export(
                    _NamedOutput(lm.model, output).eval(), (), tmp / ONNX_MODEL_FILE, kwargs=example, input_names=names,
                    output_names=[output], dynamic_shapes={name: {0: batch, 1: sequence} for name in names},
                    # One file: the encoders this covers are far below protobuf's 2 GB limit.
                    dynamo=True, external_data=False, verbose=False)
            except Exception as exc:  # torch.export and onnxscript raise many types for unsupported code
                raise SlmError(f"{lm.spec}: torch.onnx cannot export this {config.model_type} model "
                               f"({first_line(exc)}); SLM_DEBUG=1 shows why") from exc
        written.update(opset=program.model.opset_imports[""], bytes=(tmp / ONNX_MODEL_FILE).stat().st_size)
        config.save_pretrained(tmp)
        lm.tokenizer.save_pretrained(tmp)
        record = {"format": "onnx", "opset": written["opset"], "inputs": names, "output": output}
        manifest = new_manifest("export", parent=lm.spec, config=record,
                                metrics={"parameters": count_parameters(lm.model)[0]})
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")

    atomic_directory(out, write, force=force, reads=[lm.path])
    return ONNXExport(path=out, kind=lm.kind, inputs=names, output=output, **written)
