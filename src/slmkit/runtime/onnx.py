"""Running an ONNX encoder with onnxruntime (the optional extra `onnx`).

An slmkit ONNX directory (`slm export --format onnx`) holds `model.onnx`,
config.json and the tokenizer files. The graph's one output says what it is:
`last_hidden_state` for an encoder, `logits` for a sequence classifier.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from slmkit.data.chat import literal_tokenizer
from slmkit.errors import ModelLoadError, SlmError, first_line
from slmkit.models.checkpoint import read_manifest
from slmkit.models.kinds import KIND_NAMES, context_length
from slmkit.models.loading import ONNX_MODEL_FILE, export_file, is_onnx
from slmkit.runtime.interface import (DEFAULT_CONTEXT, Backend, OpenOptions, RuntimeBase, RuntimeInfo,
                                      refuse_torch_options, register_backend)

OUTPUTS = {"encoder": "last_hidden_state", "classifier": "logits"}
# What a transformers encoder assumes when an input is left out; bench feeds input_ids alone.
DEFAULT_INPUTS = {"attention_mask": np.ones_like, "token_type_ids": np.zeros_like}


def onnx_module(name: str):
    """Import onnx, onnxscript or onnxruntime, or say which extra installs them."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        raise SlmError(f"ONNX export and the onnx backend need {name}: pip install 'slmkit[onnx]'") from None


class OnnxForward:
    """Calls the session like a transformers model: tensors in by name, `.logits` or
    `.last_hidden_state` out, so evaluation code is shared with the torch backend."""

    def __init__(self, session, output: str):
        self.session, self.output = session, output
        self.input_names = [node.name for node in session.get_inputs()]

    def __call__(self, **inputs: torch.Tensor) -> SimpleNamespace:
        input_ids = inputs["input_ids"].numpy().astype(np.int64)
        feed = {}
        for name in self.input_names:
            given = inputs.get(name)
            feed[name] = given.numpy().astype(np.int64) if given is not None else DEFAULT_INPUTS[name](input_ids)
        [result] = self.session.run([self.output], feed)
        return SimpleNamespace(**{self.output: torch.from_numpy(result)})


class OnnxModel(RuntimeBase):
    """An exported encoder or classifier run by onnxruntime (`runtime.interface.Model`).

    `spec`: a directory holding model.onnx, or the .onnx file itself; config.json and the
    tokenizer are read from the same directory. `kind` refuses a model of another kind.
    """

    backend = "onnx"

    def __init__(self, spec: str | Path, *, kind: str | None = None, n_threads: int | None = None):
        from transformers import AutoConfig, AutoTokenizer

        ort = onnx_module("onnxruntime")
        self.spec = str(spec)
        file = export_file(spec, ONNX_MODEL_FILE, "ONNX file")
        self.path = file.parent
        if not (self.path / "config.json").is_file():
            raise ModelLoadError(f"{self.path}: no config.json beside {file.name}; `slm export --format onnx` "
                                 "writes the model's config and tokenizer with it")
        options = ort.SessionOptions()
        # The torch backend's thread count, so `slm bench` compares the two on equal terms.
        options.intra_op_num_threads = n_threads or torch.get_num_threads()
        try:
            session = ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own types for unreadable or invalid graphs
            raise ModelLoadError(f"{file}: onnxruntime cannot load it ({first_line(exc)})") from None
        outputs = [node.name for node in session.get_outputs()]
        found = next((k for k, name in OUTPUTS.items() if outputs[:1] == [name]), None)
        if found is None:
            raise ModelLoadError(f"{file}: not an encoder export; its outputs are {', '.join(outputs)}, "
                                 f"expected {' or '.join(OUTPUTS.values())}")
        unknown = [node.name for node in session.get_inputs() if node.name not in ("input_ids", *DEFAULT_INPUTS)]
        if unknown:
            raise ModelLoadError(f"{file}: takes inputs slmkit does not feed ({', '.join(unknown)}); expected "
                                 "input_ids, attention_mask and token_type_ids")
        if kind is not None and kind != found:
            raise ModelLoadError(f"{spec}: {KIND_NAMES[kind]} was asked for; this ONNX model is "
                                 f"{KIND_NAMES[found]} (its output is {OUTPUTS[found]})")
        self.kind, self.threads = found, options.intra_op_num_threads
        self.model = OnnxForward(session, OUTPUTS[found])
        try:
            self.config = AutoConfig.from_pretrained(self.path)
            self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelLoadError(f"{self.path}: cannot read the config or tokenizer ({first_line(exc)})") from None
        # The exporter records the torch model's count; the graph's own tensors are no guide (the optimizer
        # folds some weights into constants, and parts the output does not use, like BERT's pooler, are gone).
        self.parameters = ((read_manifest(self.path) or {}).get("metrics") or {}).get("parameters")

    @property
    def context(self) -> int:
        return context_length(self.config) or DEFAULT_CONTEXT

    def require(self, kind: str, task: str) -> None:
        if self.kind != kind:
            raise ModelLoadError(f"{self.spec}: {task} needs {KIND_NAMES[kind]}; this ONNX model is "
                                 f"{KIND_NAMES[self.kind]} ({self.config.model_type})")

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, keep: int | None = None) -> torch.Tensor:
        self.require("causal-lm", "token scoring")

    def stream(self, ids, sampling, *, cancel=None, cache_tokens=None):
        self.require("causal-lm", "generation")

    def decode(self, state) -> None:
        self.require("causal-lm", "decoding")

    def classify(self, texts: list[str], max_length: int) -> torch.Tensor:
        self.require("classifier", "classification")
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        return self.model(**batch).logits.float()

    def embed(self, texts: list[str], max_length: int | None = None) -> torch.Tensor:
        self.require("encoder", "embeddings")
        # A special token's text in the input is text (data.chat), as in every prompt.
        batch = literal_tokenizer(self.tokenizer)(texts, padding=True, truncation=True,
                                                  max_length=max_length or self.context, return_tensors="pt")
        hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)

    def prefill(self, ids: list[int], max_tokens: int) -> None:
        """An encoder's whole job: one forward pass, nothing to decode."""
        self.model(input_ids=torch.tensor([ids]))

    def info(self) -> RuntimeInfo:
        return RuntimeInfo(backend="onnx", device="cpu", dtype="float32", threads=self.threads,
                           parameters=self.parameters)


def open_onnx(spec: str, options: OpenOptions) -> OnnxModel:
    refuse_torch_options(spec, options, "onnxruntime",
                         lambda flag: "an ONNX export runs on onnxruntime with the float32 weights it was "
                                      "exported with")
    return OnnxModel(spec, kind=options.kind)


# Registered first: torch cannot read an ONNX graph, so `auto` has nothing to fall back to.
register_backend(Backend(
    name="onnx", handles=is_onnx, preferred=is_onnx, open=open_onnx,
    refusal="--backend onnx runs a directory holding model.onnx (or the .onnx file) and {spec} is neither; "
            "make one with `slm export --format onnx`"))
