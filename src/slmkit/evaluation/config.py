"""What `slm eval` and `slm bench` measure: `EvalConfig` and `BenchConfig` are what `slmkit.evaluate` and
`slmkit.bench` take; `EvalSettings` and `BenchSettings` add how the command opens the model (the library verbs
take one opened already), and are the commands' options and the recipe stages' fields."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from slmkit.errors import SlmError
from slmkit.schema import setting
from slmkit.settings import CompileSettings, OpenSettings, RuntimeSettings

TASKS = ("perplexity", "choice", "lambada", "classification")


def _own_settings(config, config_class: type) -> dict:
    """The values of `config_class`'s fields: a verb's settings hold more (how the model opens) than it takes."""
    return {field.name: getattr(config, field.name) for field in dataclasses.fields(config_class)}


@dataclass
class EvalConfig:
    """What `evaluate` measures. task: perplexity | choice | lambada | classification (default: inferred
    from the file); max_length/stride: perplexity windows; limit: the first N windows or examples."""

    task: str | None = setting("perplexity | choice | lambada | classification (default: inferred from the file)",
                               None)
    max_length: int | None = setting("Perplexity window in tokens (default: min(context, 2048)).", None)
    stride: int | None = setting("Slide windows by this many tokens instead of not overlapping.", None)
    limit: int | None = setting("Only the first N windows (perplexity) or examples.", None)
    batch_size: int | None = setting("Sequences per forward pass.", None)

    def __post_init__(self) -> None:
        if self.task is not None and self.task not in TASKS:
            raise SlmError(f"unknown task {self.task!r}; choose one of {', '.join(TASKS)}")
        # A window shorter than two tokens scores nothing (on any runtime).
        if self.max_length is not None and self.max_length < 2:
            raise SlmError(f"--max-length must be at least 2, got {self.max_length}")
        if self.limit is not None and self.limit < 1:
            raise SlmError(f"--limit must be positive, got {self.limit}")
        if self.batch_size is not None and self.batch_size < 1:
            raise SlmError(f"--batch-size must be positive, got {self.batch_size}")

    def options(self) -> dict:
        return _own_settings(self, EvalConfig)


@dataclass(kw_only=True)
class EvalSettings(EvalConfig, RuntimeSettings, OpenSettings):
    """`slm eval`: the data file, what to measure on it, and how to open the model."""

    # A recipe's eval stage chooses its own file (held-back rows, the run's --data, a built-in text).
    data: Path = setting(".txt, .jsonl (text/ARC/HellaSwag/LAMBADA) or .tsv/.csv", flag="--data", recipe=False)
    # On a text, a recipe's eval stage compares every model but the original with the run's original itself.
    reference: str | None = setting("A model to compare with on the text (the original of a compressed one): KL "
                                    "divergence of the next-token distributions (mean, median, p99), top-1 "
                                    "agreement and the perplexity ratio, as llama-perplexity --kl-divergence "
                                    "reports them.", None, recipe=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.reference is not None and self.task not in (None, "perplexity"):
            raise SlmError(f"--reference compares next-token distributions on a text; --task {self.task} has "
                           "none: give a .txt file (the perplexity task)")


@dataclass
class BenchConfig:
    """llama-bench's shape: prefill of `prompt_tokens`, `gen_tokens` decode steps, median of `repeats`."""

    prompt_tokens: int = setting("Prompt length for the prefill test (llama-bench pp).", 512)
    gen_tokens: int = setting("Tokens generated for the decode test (llama-bench tg).", 128)
    repeats: int = setting("Runs; each figure is their median.", 3)
    # The recipe stage benches in a fresh process that draws its prompt with the default seed.
    seed: int = setting("Seed for the random prompt tokens.", 0, recipe=False)

    def __post_init__(self) -> None:
        if self.prompt_tokens < 1 or self.gen_tokens < 0 or self.repeats < 1:
            raise SlmError("--prompt-tokens and --repeats must be positive and --gen-tokens not negative")

    def options(self) -> dict:
        return _own_settings(self, BenchConfig)


@dataclass(kw_only=True)
class BenchSettings(BenchConfig, RuntimeSettings, CompileSettings, OpenSettings):
    """`slm bench`: the shape of the test, and how to open the model."""

    @property
    def n_ctx(self) -> int:
        """The context a model opens with: the whole test, and a little room."""
        return self.prompt_tokens + self.gen_tokens + 16
