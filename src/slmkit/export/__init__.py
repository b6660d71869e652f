"""Export to the formats local runtimes read: GGUF (llama.cpp, Ollama, LM Studio), ONNX (onnxruntime)."""

from slmkit.export.gguf import QUANT_TYPES as GGUF_QUANT_TYPES
from slmkit.export.gguf import GGUFExport, export_gguf, write_modelfile
from slmkit.export.onnx import ONNXExport, export_onnx

__all__ = ["GGUF_QUANT_TYPES", "GGUFExport", "ONNXExport", "export_gguf", "export_onnx", "write_modelfile"]
