"""Teacher-written training data: prompts in, filtered chat records out (`slm synth`, `slmkit.synth`).

Example:
    result = slmkit.synth("smollm2-135m-instruct", "prompts.txt", "data.jsonl", SynthConfig(style="orca"))
    slmkit.finetune("my-student", "out/student", FinetuneConfig(data="data.jsonl"))
"""

from slmkit.synth.filters import FilterConfig, NearDuplicates, drop_reason
from slmkit.synth.generate import DEFAULT_BATCH_SIZE, SynthConfig, SynthResult, synth
from slmkit.synth.prompts import read_prompts

__all__ = ["DEFAULT_BATCH_SIZE", "FilterConfig", "NearDuplicates", "SynthConfig", "SynthResult", "drop_reason",
           "read_prompts", "synth"]
