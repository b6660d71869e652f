"""What `slm export` writes: `GGUFConfig` and `OnnxConfig` are what `slmkit.export` takes; `ExportSettings` is the
command's options and the recipe stage's fields, and makes one of them."""

from __future__ import annotations

from dataclasses import dataclass

from slmkit.errors import SlmError
from slmkit.schema import setting
from slmkit.settings import OpenSettings

FORMATS = ("gguf", "onnx")
# The GGUF types the exporter writes (export/gguf.py maps each to its gguf-py type).
GGUF_QUANTS = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0")


@dataclass
class GGUFConfig:
    """A GGUF file for llama.cpp / Ollama, with an Ollama Modelfile beside it.

    Args:
        quant: f32 | f16 | bf16 | q8_0 | q4_0 | q4_1 | q5_0. A checkpoint quantized with
            `target="gguf-q4_0"` (or q8_0) keeps its calibrated values exactly with the matching quant.
    """

    quant: str = "f16"

    def __post_init__(self) -> None:
        if self.quant not in GGUF_QUANTS:
            raise SlmError(f"unknown --quant {self.quant!r}; choose one of {', '.join(GGUF_QUANTS)}")


@dataclass
class OnnxConfig:
    """An ONNX directory (model.onnx, config, tokenizer) for onnxruntime: encoders and classifiers."""


@dataclass(kw_only=True)
class ExportSettings(OpenSettings):
    """`slm export`: which format, and for GGUF which type."""

    format: str = setting("gguf (decoders) | onnx (encoders, classifiers)", "gguf")
    quant: str = setting("gguf only: f32 | f16 | bf16 | q8_0 | q4_0 | q4_1 | q5_0", GGUFConfig.quant)

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise SlmError(f"unknown --format {self.format!r}; choose one of {', '.join(FORMATS)}")
        # Against the default: an ONNX export takes none, and --quant f16 asks for nothing else.
        if self.format == "onnx" and self.quant != GGUFConfig.quant:
            raise SlmError("--quant applies to --format gguf; an ONNX export keeps the float32 weights (drop --quant)")
        self.export_config()  # a bad --quant, before the slow load

    def export_config(self) -> GGUFConfig | OnnxConfig:
        return OnnxConfig() if self.format == "onnx" else GGUFConfig(quant=self.quant)
