"""Export to the formats local runtimes read: GGUF (llama.cpp, Ollama, LM Studio), ONNX (onnxruntime), and a web
folder whose page runs either in the browser, ExecuTorch (phones)."""

from slmkit.exporters.config import ExecuTorchConfig, ExportSettings, GGUFConfig, OnnxConfig, WebConfig

__all__ = ["ExecuTorchConfig", "ExportSettings", "GGUFConfig", "OnnxConfig", "WebConfig", "GGUF_QUANT_TYPES",
           "ExecuTorchExport", "GGUFExport", "ONNXExport", "WebExport", "export_executorch", "export_gguf",
           "export_onnx", "export_web", "export_web_file", "write_modelfile"]

_LAZY = {"GGUF_QUANT_TYPES": ("gguf", "QUANT_TYPES"), "GGUFExport": ("gguf", "GGUFExport"),
         "export_gguf": ("gguf", "export_gguf"), "write_modelfile": ("gguf", "write_modelfile"),
         "ONNXExport": ("onnx", "ONNXExport"), "export_onnx": ("onnx", "export_onnx"),
         "WebExport": ("web", "WebExport"), "export_web": ("web", "export_web"),
         "export_web_file": ("web", "export_web_file"),
         "ExecuTorchExport": ("executorch", "ExecuTorchExport"),
         "export_executorch": ("executorch", "export_executorch")}


def __getattr__(name: str):
    """The exporters import torch: only when one runs, not when a CLI reads a config to make its options."""
    if name in _LAZY:
        from importlib import import_module

        module, attribute = _LAZY[name]
        return getattr(import_module(f"slmkit.exporters.{module}"), attribute)
    raise AttributeError(f"module 'slmkit.exporters' has no attribute {name!r}")
