"""What `slm export` writes: `GGUFConfig`, `OnnxConfig`, `WebConfig` and `ExecuTorchConfig` are what
`slmkit.export` takes; `ExportSettings` is the command's options and the recipe stage's fields, and makes one of
them."""

from __future__ import annotations

from dataclasses import dataclass

from slmkit.errors import SlmError
from slmkit.schema import setting
from slmkit.settings import OpenSettings

FORMATS = ("gguf", "onnx", "web", "executorch")
# ExecuTorch's weight schemes (torchao): int8 dynamic activations x int4 (groups of 32) or int8 weights, or none.
EXECUTORCH_QUANTS = ("8da4w", "8da8w", "f32")
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


@dataclass
class ExecuTorchConfig:
    """A `.pte` program for phones (ExecuTorch's Android/iOS runtimes), lowered to XNNPACK, with a KV cache.

    Args:
        quant: 8da4w (int8 dynamic activations x int4 weights in groups of 32, the output projection at int8 per
            channel, the embedding int8 per row: what ExecuTorch's LLM runners expect) | 8da8w (int8 weights per
            channel) | f32.
        max_context: the tokens the program's KV cache holds [default: the model's context, at most 2048].
    """

    quant: str = "8da4w"
    max_context: int | None = None

    def __post_init__(self) -> None:
        if self.quant not in EXECUTORCH_QUANTS:
            raise SlmError(f"--quant {self.quant!r} does not apply to --format executorch; choose one of "
                           f"{', '.join(EXECUTORCH_QUANTS)}")
        if self.max_context is not None and (isinstance(self.max_context, bool) or not isinstance(
                self.max_context, int) or self.max_context < 2):
            raise SlmError(f"--max-context must be a whole number of at least 2, got {self.max_context!r}")


@dataclass(kw_only=True)
class ExportSettings(OpenSettings):
    """`slm export`: which format, and for GGUF which type."""

    format: str = setting("gguf (decoders) | onnx (encoders, classifiers) | web (a page that runs either in the "
                          "browser) | executorch (a decoder as a .pte for phones)", "gguf")
    quant: str | None = setting("gguf and web decoders: f32 | f16 | bf16 | q8_0 | q4_0 | q4_1 | q5_0 | q5_1 | "
                                "iq4_nl | q2_K | q3_K | q4_K | q5_K | q6_K [default: the checkpoint's GGUF plan, "
                                "else f16]; executorch: 8da4w | 8da8w | f32 [default: 8da4w]", GGUFConfig.quant)
    max_context: int | None = setting("executorch only: the tokens its KV cache holds [default: the model's "
                                      "context, at most 2048]", ExecuTorchConfig.max_context)

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise SlmError(f"unknown --format {self.format!r}; choose one of {', '.join(FORMATS)}")
        if self.format == "onnx" and self.quant is not None:
            raise SlmError("--quant applies to --format gguf; an ONNX export keeps the float32 weights (drop --quant)")
        if self.format != "executorch" and self.max_context is not None:
            raise SlmError("--max-context applies to --format executorch (drop it)")
        self.export_config()  # a bad --quant, before the slow load

    def export_config(self) -> GGUFConfig | OnnxConfig | WebConfig | ExecuTorchConfig:
        if self.format == "executorch":
            return ExecuTorchConfig(quant=self.quant or ExecuTorchConfig.quant, max_context=self.max_context)
        if self.format == "web":
            return WebConfig(quant=self.quant)
        return OnnxConfig() if self.format == "onnx" else GGUFConfig(quant=self.quant)
