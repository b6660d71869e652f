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

from slmkit.errors import ModelLoadError, SlmError
from slmkit.models.checkpoint import read_manifest
from slmkit.models.loading import KIND_NAMES

MODEL_FILE = "model.onnx"
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


def is_onnx(spec: str | Path) -> bool:
    """A .onnx file, or a directory with model.onnx in it."""
    path = Path(spec).expanduser()
    return path.suffix == ".onnx" or (path / MODEL_FILE).is_file()


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


class OnnxModel:
    """An exported encoder or classifier run by onnxruntime, in the shape `slm eval` and `slm bench` expect.

    `spec`: a directory holding model.onnx, or the .onnx file itself; config.json and the
    tokenizer are read from the same directory. `kind` refuses a model of another kind.
    """

    backend = "onnx"

    def __init__(self, spec: str | Path, *, kind: str | None = None, n_threads: int | None = None):
        from transformers import AutoConfig, AutoTokenizer

        ort = onnx_module("onnxruntime")
        self.spec = str(spec)
        path = Path(spec).expanduser()
        file = path if path.suffix == ".onnx" else path / MODEL_FILE
        if not file.is_file():
            raise ModelLoadError(f"{spec}: no such ONNX file ({file})")
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
            raise ModelLoadError(f"{file}: onnxruntime cannot load it ({_first_line(exc)})") from None
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
            raise ModelLoadError(f"{self.path}: cannot read the config or tokenizer ({_first_line(exc)})") from None
        # The exporter records the torch model's count; the graph's own tensors are no guide (the optimizer
        # folds some weights into constants, and parts the output does not use, like BERT's pooler, are gone).
        self.parameters = ((read_manifest(self.path) or {}).get("metrics") or {}).get("parameters")
        self.extra: dict = {}

    def require(self, kind: str, task: str) -> None:
        if self.kind != kind:
            raise ModelLoadError(f"{self.spec}: {task} needs {KIND_NAMES[kind]}; this ONNX model is "
                                 f"{KIND_NAMES[self.kind]} ({self.config.model_type})")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
