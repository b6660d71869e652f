"""Teacher-written training data: prompts in, filtered chat records out (`slm synth`, `slmkit.synth`).

Example:
    result = slmkit.synth("smollm2-135m-instruct", "prompts.txt", "data.jsonl", SynthConfig(style="orca"))
    slmkit.finetune("my-student", "out/student", FinetuneConfig(data="data.jsonl"))
"""

from slmkit.synthesis.config import DEFAULT_BATCH_SIZE, SynthConfig, SynthSettings
from slmkit.synthesis.filters import FilterConfig, NearDuplicates, drop_reason
from slmkit.synthesis.prompts import read_prompts

__all__ = ["DEFAULT_BATCH_SIZE", "FilterConfig", "NearDuplicates", "SynthConfig", "SynthSettings", "drop_reason",
           "read_prompts", "synth"]


def __getattr__(name: str):
    """Answering imports torch: only when it is used, not when a CLI reads the settings to make its options
    (`slm --help` stays instant)."""
    if name == "synth":
        from slmkit.synthesis import generate

        return getattr(generate, name)
    raise AttributeError(f"module 'slmkit.synthesis' has no attribute {name!r}")
