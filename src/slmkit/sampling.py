"""`SamplingConfig`: how each next token is picked. Here rather than in runtime/ (whose package imports torch)
so a command builds its sampling options from these fields without loading torch (`slm --help` stays instant);
`slmkit.runtime.SamplingConfig` is this class."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from slmkit.errors import SlmError
from slmkit.schema import setting


@dataclass
class SamplingConfig:
    """How to pick each next token. temperature 0 means greedy decoding.

    Args:
        temperature: softmax temperature; 0 picks the most likely token.
        top_p: keep the smallest set of tokens whose probability sums to top_p.
        top_k: keep the k most likely tokens; 0 keeps all.
        min_p: drop tokens less likely than min_p x the top token's probability.
        repetition_penalty: >1 discourages tokens already in the text (CTRL paper).
        seed: makes sampling repeatable.
        max_new_tokens: stop after this many tokens.
    """

    temperature: float = setting("0 = greedy.", 0.7)
    top_p: float = setting("Nucleus sampling mass.", 1.0)
    top_k: int = setting("Keep the k most likely tokens; 0 = off.", 0)
    min_p: float = setting("Drop tokens below min-p x the top probability.", 0.0)
    repetition_penalty: float = setting(">1 discourages repeats.", 1.0)
    # A recipe stage that samples declares its own seed: a recipe run repeats (the synth stage's defaults to 0).
    seed: int | None = setting("Repeatable sampling.", None, recipe=False)
    max_new_tokens: int = setting("Stop after this many tokens.", 256)

    def __post_init__(self):
        checks = [
            (self.temperature >= 0, f"--temperature must be >= 0, got {self.temperature}"),
            (0 < self.top_p <= 1, f"--top-p must be in (0, 1], got {self.top_p}"),
            (self.top_k >= 0, f"--top-k must be >= 0, got {self.top_k}"),
            (0 <= self.min_p < 1, f"--min-p must be in [0, 1), got {self.min_p}"),
            (self.repetition_penalty > 0, f"--repetition-penalty must be > 0, got {self.repetition_penalty}"),
            (self.max_new_tokens > 0, f"--max-new-tokens must be positive, got {self.max_new_tokens}"),
        ]
        for ok, message in checks:
            if not ok:
                raise SlmError(message)

    def to_dict(self) -> dict:
        return asdict(self)
