"""What `slm export` writes: `GGUFConfig`, `OnnxConfig` and `WebConfig` are what `slmkit.export` takes; `ExportSettings` is the
command's options and the recipe stage's fields, and makes one of them."""

from __future__ import annotations

from dataclasses import dataclass

from slmkit.errors import SlmError
from slmkit.schema import setting
from slmkit.settings import OpenSettings

FORMATS = ("gguf", "onnx", "web")
# The types the GGUF exporter writes: the float types and every block type of compress/blocks.py, spelled as there
# (exporters/gguf.py maps each to its gguf-py type; kept here as names so reading a config imports no torch).
GGUF_QUANTS = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl", "q2_K", "q3_K", "q4_K",
               "q5_K", "q6_K")


def gguf_quant(name: str) -> str:
    """A GGUF type as GGUF_QUANTS spells it, whatever its case ("q4_k" and "Q4_K" are "q4_K")."""
    spelled = {quant.lower(): quant for quant in GGUF_QUANTS}.get(name.lower())
    if spelled is None:
        raise SlmError(f"unknown --quant {name!r}; choose one of {', '.join(GGUF_QUANTS)}")
    return spelled


@dataclass
class GGUFConfig:
    """A GGUF file for llama.cpp / Ollama, with an Ollama Modelfile beside it.

    Args:
        quant: the type of every weight matrix: f32 | f16 | bf16 | q8_0 | q4_0 | q4_1 | q5_0 | q5_1 | iq4_nl |
            q2_K | q3_K | q4_K | q5_K | q6_K (any case), rounded at export time (a k-quant falls back on rows its
            256-value blocks do not tile, as llama.cpp's quantizer does). None: the checkpoint's GGUF plan (one
            type per matrix, its calibrated values kept exactly), else f16. A checkpoint quantized with
            `target="gguf-q4_0"` (or q8_0) keeps its calibrated values exactly with the matching quant.
    """

    quant: str | None = None

    def __post_init__(self) -> None:
        if self.quant is not None:
            self.quant = gguf_quant(self.quant)


@dataclass
class OnnxConfig:
    """An ONNX directory (model.onnx, config, tokenizer) for onnxruntime: encoders and classifiers."""


@dataclass
class WebConfig:
    """A static folder whose page runs the model in the browser: a decoder's GGUF on llama.cpp in WebAssembly, an
    encoder's or classifier's ONNX graph on transformers.js; served by any web host (`slm serve --static DIR`).

    Args:
        quant: a decoder's GGUF type, as GGUFConfig's (None: its GGUF plan, else f16). Encoders keep float32.
    """

    quant: str | None = None

    def __post_init__(self) -> None:
        if self.quant is not None:
            self.quant = gguf_quant(self.quant)


@dataclass(kw_only=True)
class ExportSettings(OpenSettings):
    """`slm export`: which format, and for GGUF which type."""

    format: str = setting("gguf (decoders) | onnx (encoders, classifiers) | web (a page that runs either in the "
                          "browser)", "gguf")
    quant: str | None = setting("gguf and web decoders: f32 | f16 | bf16 | q8_0 | q4_0 | q4_1 | q5_0 | q5_1 | iq4_nl | q2_K | "
                                "q3_K | q4_K | q5_K | q6_K [default: the checkpoint's GGUF plan, else f16]",
                                GGUFConfig.quant)

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise SlmError(f"unknown --format {self.format!r}; choose one of {', '.join(FORMATS)}")
        if self.format == "onnx" and self.quant is not None:
            raise SlmError("--quant applies to --format gguf; an ONNX export keeps the float32 weights (drop --quant)")
        self.export_config()  # a bad --quant, before the slow load

    def export_config(self) -> GGUFConfig | OnnxConfig | WebConfig:
        if self.format == "web":
            return WebConfig(quant=self.quant)
        return OnnxConfig() if self.format == "onnx" else GGUFConfig(quant=self.quant)
