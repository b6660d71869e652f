"""Which teacher answers become training data: cheap checks on each answer, then near-duplicate removal.

A small teacher's failures have recognisable shapes: nothing, a few words, a loop repeating one phrase, a
refusal, the question said back, an answer cut off at the token limit. Each check names its reason, so the
stats say what was thrown away and why. Near-duplicates (the same answer to two prompts, or K samples of one
prompt that came out alike) are found with MinHash LSH (Broder 1997; datasketch's MinHashLSH) over word
3-gram shingles, as in the dedup of LLM pre-training corpora.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from slmkit.errors import SlmError
from slmkit.schema import setting

# Phrases of a refusal or of a model talking about itself instead of answering (matched lower-cased, anywhere).
REFUSALS = (
    "i'm sorry, but i can't", "i'm sorry, but i cannot", "i am sorry, but i cannot", "i am sorry, but i can't",
    "i apologize, but i can't", "i apologize, but i cannot", "as an ai language model", "as a language model,",
    "as an ai, i", "i cannot fulfill", "i can't fulfill", "i cannot assist with", "i can't assist with",
    "i cannot help with that", "i can't help with that", "i'm unable to help", "i'm not able to help",
)
# The reasons an answer is dropped, in the order they are checked (the first that applies is recorded).
REASONS = ("prompt_too_long", "empty", "unfinished", "too_short", "too_long", "repetition", "refusal", "echo",
           "near_duplicate")
LSH_THRESHOLD_CAP = 0.8
SHINGLE_WORDS = 3  # words per MinHash shingle and per echo n-gram: short enough for answers of a sentence


@dataclass
class FilterConfig:
    """What a kept answer must pass.

    Args:
        min_words: fewer words is "too_short" (one-word answers teach little).
        max_words: more is "too_long".
        keep_unfinished: keep answers cut off at max_new_tokens (trained on, they teach the student to stop
            mid-sentence).
        repeat_ngram: the word n-gram whose repeats measure a loop.
        max_repeat_fraction: more of the answer's n-grams repeating an earlier one is "repetition" (a loop
            repeating one sentence scores near 1, ordinary prose near 0).
        echo_fraction: this share of the answer's word 3-grams found in the prompt is "echo".
        dedup_threshold: estimated Jaccard similarity of word 3-gram sets at which an answer is a
            "near_duplicate" of one kept before (1 drops only answers with the very same shingles).
        num_perm: MinHash permutations (more: a finer similarity estimate, slower).
    """

    min_words: int = setting("Drop shorter answers.", 3)
    max_words: int = setting("Drop longer answers.", 1000)
    keep_unfinished: bool = setting("Keep answers cut off at --max-new-tokens.", False,
                                    flag="--keep-unfinished/--no-keep-unfinished")
    repeat_ngram: int = setting("Word n-gram that measures loops.", 4)
    max_repeat_fraction: float = setting("Drop answers with more of their n-grams repeated.", 0.3)
    echo_fraction: float = setting("Drop answers with this share of word 3-grams from the prompt.", 0.8)
    dedup_threshold: float = setting("MinHash Jaccard similarity at which an answer is a near-duplicate of a kept "
                                     "one.", 0.8)
    num_perm: int = setting("MinHash permutations (more: a finer similarity estimate, slower).", 128)

    def __post_init__(self):
        checks = [
            (self.min_words >= 0, f"--min-words must be >= 0, got {self.min_words}"),
            (self.max_words >= max(self.min_words, 1),
             f"--max-words must be >= --min-words and positive, got {self.max_words}"),
            (self.repeat_ngram >= 1, f"--repeat-ngram must be >= 1, got {self.repeat_ngram}"),
            (0 < self.max_repeat_fraction <= 1, f"--max-repeat-fraction must be in (0, 1], got "
                                                f"{self.max_repeat_fraction}"),
            (0 < self.echo_fraction <= 1, f"--echo-fraction must be in (0, 1], got {self.echo_fraction}"),
            (0 < self.dedup_threshold <= 1, f"--dedup-threshold must be in (0, 1], got {self.dedup_threshold}"),
            (self.num_perm >= 16, f"--num-perm must be >= 16, got {self.num_perm}"),
        ]
        for ok, message in checks:
            if not ok:
                raise SlmError(message)

    def to_dict(self) -> dict:
        return asdict(self)


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    """The word n-grams of `tokens`; a text shorter than n is its one n-gram of fewer words."""
    if len(tokens) < n:
        return [tuple(tokens)] if tokens else []
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def repeat_fraction(text: str, n: int) -> float:
    """The share of the text's word n-grams that repeat an earlier one."""
    grams = ngrams(words(text), n)
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def is_refusal(text: str) -> bool:
    normalized = re.sub(r"\s+", " ", text.lower().replace("\u2019", "'"))
    return any(phrase in normalized for phrase in REFUSALS)


def echo_fraction(prompt: str, answer: str) -> float:
    """The share of the answer's word 3-grams that are also the prompt's: 1 for an answer that says the question
    back, about 0.5 for one that restates it and then answers."""
    answer_grams = set(ngrams(words(answer), SHINGLE_WORDS))
    if not answer_grams:
        return 0.0
    return len(answer_grams & set(ngrams(words(prompt), SHINGLE_WORDS))) / len(answer_grams)


def drop_reason(prompt: str, answer: str, finished: bool, config: FilterConfig) -> str | None:
    """Why the answer is not training data (one of REASONS), or None when it passes every per-answer check."""
    if not answer.strip():
        return "empty"
    if not finished and not config.keep_unfinished:
        return "unfinished"
    count = len(words(answer))
    if count < config.min_words:
        return "too_short"
    if count > config.max_words:
        return "too_long"
    if repeat_fraction(answer, config.repeat_ngram) > config.max_repeat_fraction:
        return "repetition"
    if is_refusal(answer):
        return "refusal"
    if echo_fraction(prompt, answer) >= config.echo_fraction:
        return "echo"
    return None


class NearDuplicates:
    """The answers kept so far, indexed for "is this one nearly one of them?" (MinHash LSH).

    LSH finds candidates whose estimated similarity is probably above the threshold; each candidate is then
    checked against the threshold itself, so a band collision never drops an answer on its own.
    """

    def __init__(self, threshold: float = 0.8, num_perm: int = 128):
        from datasketch import MinHashLSH

        self.threshold, self.num_perm = threshold, num_perm
        # Above ~0.8 the LSH would get fewer than two bands (datasketch refuses): it looks for candidates at
        # 0.8 at most, and the check against `threshold` itself keeps the higher bar.
        self.index = MinHashLSH(threshold=min(threshold, LSH_THRESHOLD_CAP), num_perm=num_perm)
        self.sketches: dict[str, object] = {}

    def sketch(self, text: str):
        from datasketch import MinHash

        sketch = MinHash(num_perm=self.num_perm)
        sketch.update_batch([" ".join(gram).encode() for gram in set(ngrams(words(text), SHINGLE_WORDS))])
        return sketch

    def is_duplicate(self, text: str) -> bool:
        """Whether `text` nearly repeats a kept answer; if not, it is kept (added to the index)."""
        sketch = self.sketch(text)
        if any(sketch.jaccard(self.sketches[key]) >= self.threshold for key in self.index.query(sketch)):
            return True
        key = str(len(self.sketches))
        self.index.insert(key, sketch)
        self.sketches[key] = sketch
        return False
