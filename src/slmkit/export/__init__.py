"""Export to the formats local runtimes read: GGUF (llama.cpp, Ollama, LM Studio)."""

from slmkit.export.gguf import QUANT_TYPES as GGUF_QUANT_TYPES
from slmkit.export.gguf import GGUFExport, export_gguf, write_modelfile

__all__ = ["GGUF_QUANT_TYPES", "GGUFExport", "export_gguf", "write_modelfile"]
