"""`SynthConfig`, what `slmkit.synth` takes, and `SynthSettings`, the same settings flat with the prompts and
the teacher's runtime: `slm synth`'s options and the synth recipe stage's fields. Both declare synth's own
settings once (`SynthOptions`) and take sampling's and the filters' from their configs."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from slmkit.errors import SlmError
from slmkit.sampling import SamplingConfig
from slmkit.schema import setting
from slmkit.settings import OpenSettings, RuntimeSettings
from slmkit.synthesis.filters import FilterConfig
from slmkit.synthesis.prompts import STYLES

# Prompts per forward pass of a torch teacher. benchmarks/synth_throughput.py, SmolLM2-135M on 2 CPU cores,
# 64 answers: 8 rows gave 4.1x the tokens/s of one at a time, 32 rows 8.4x (decoding there is bound by
# memory bandwidth, so a row costs little; a GPU takes larger batches still).
DEFAULT_BATCH_SIZE = 32


@dataclass(kw_only=True)
class SynthOptions:
    """Synth's own settings: which prompts, how many answers each, how the teacher is asked."""

    n: int | None = setting("Answer only the first N prompts.", None)
    samples_per_prompt: int = setting("Answers per prompt (needs --temperature > 0).", 1)
    style: str = setting("plain: --system both ways. orca: the teacher answers under a step-by-step instruction "
                         "(--system replaces it), the record keeps a generic system prompt (Orca 2's prompt "
                         "erasing).", "plain")
    system: str | None = setting("System prompt (see --style).", None)
    batch_size: int = setting("torch teacher: prompts per forward pass (the size measured fastest on 2 CPU cores; "
                              "a GPU takes more).", DEFAULT_BATCH_SIZE)


@dataclass(kw_only=True)
class SynthConfig(SynthOptions):
    """How a teacher writes training data.

    Args:
        n: answer only the first n prompts (None: all).
        samples_per_prompt: answers per prompt (needs temperature > 0: greedy answers are all the same).
        style: plain: `system` (if any) is the system prompt of the teacher and of the record; orca: the teacher
            answers under a step-by-step instruction (`system` replaces it) and the record keeps a generic
            system prompt (Orca 2's prompt erasing).
        system: see `style`.
        batch_size: a torch teacher's prompts per forward pass (other runtimes answer one at a time).
        sampling: how the teacher samples; its seed seeds every (prompt, sample) pair (None: a new seed per run).
        filters: what a kept answer must pass.
    """

    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    filters: FilterConfig = field(default_factory=FilterConfig)

    def __post_init__(self):
        checks = [
            (self.style in STYLES, f"--style must be one of {', '.join(STYLES)}, got {self.style!r}"),
            (self.samples_per_prompt >= 1, f"--samples-per-prompt must be >= 1, got {self.samples_per_prompt}"),
            (self.n is None or self.n >= 1, f"--n must be >= 1, got {self.n}"),
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (self.samples_per_prompt == 1 or self.sampling.temperature > 0,
             "--samples-per-prompt > 1 needs --temperature > 0 (greedy answers to one prompt are all the same)"),
        ]
        for ok, message in checks:
            if not ok:
                raise SlmError(message)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(kw_only=True)
class SynthSettings(SynthOptions, SamplingConfig, FilterConfig, RuntimeSettings, OpenSettings):
    """A synth run's settings, flat: the prompts, SynthConfig's own settings, its sampling and filter settings,
    and how the teacher is opened. `synth_config()` nests them as `slmkit.synth` takes them."""

    prompts: Path = setting(".jsonl ({\"prompt\": ...} per line) or .txt (one per line).")

    def __post_init__(self) -> None:
        self.synth_config()  # the checks of SamplingConfig, FilterConfig and SynthConfig, in that order

    def synth_config(self) -> SynthConfig:
        def part(config_class: type) -> dict:
            return {each.name: getattr(self, each.name) for each in fields(config_class)}

        return SynthConfig(**part(SynthOptions), sampling=SamplingConfig(**part(SamplingConfig)),
                           filters=FilterConfig(**part(FilterConfig)))
