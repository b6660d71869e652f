"""Calibration batches: windows of a user's text, or text the model writes itself.

Without data, the model samples its own text (data-free calibration, as in
LLM-QAT): the statistics then reflect what the model itself finds likely.
"""

from __future__ import annotations

from pathlib import Path

import torch

from slmkit import data
from slmkit.errors import SlmError


def calibration_ids(lm, path: str | Path | None, *, samples: int = 128, seq_len: int = 512,
                    seed: int = 0) -> torch.Tensor:
    """[samples, seq_len] token ids: random windows of the file, or model samples when path is None."""
    if samples < 1 or seq_len < 2:
        raise SlmError(f"--calib-samples must be >= 1 and --calib-seq-len >= 2 (got {samples}, {seq_len})")
    if lm.tokenizer is None:
        raise SlmError(f"{lm.spec}: has no tokenizer; calibration needs one")
    generator = torch.Generator().manual_seed(seed)
    if path is None:
        return _self_generated(lm, samples, seq_len, generator)
    ids = torch.tensor(lm.tokenizer(data.load_text(path)).input_ids, dtype=torch.long)
    # Distinct non-overlapping windows, so no calibration token is counted twice.
    slots = len(ids) // seq_len
    if slots < samples:
        raise SlmError(f"{path}: {len(ids)} tokens is too short for {samples} calibration samples of "
                       f"{seq_len} tokens; pass a longer file or lower --calib-samples/--calib-seq-len")
    chosen = torch.randperm(slots, generator=generator)[:samples]
    return torch.stack([ids[slot * seq_len:(slot + 1) * seq_len] for slot in chosen.tolist()])


class _InverseCdfSampler:
    """A logits processor that samples the next token itself and leaves greedy decoding only that one.

    Exact sampling from softmax(logits) with one uniform number per row (inverse CDF).
    torch.multinomial draws a random number per vocabulary entry from a serial generator:
    for 32 rows of a 49k-word vocabulary that is a quarter of each generation step on a CPU.
    """

    def __init__(self, seed: int):
        self.seed = seed
        self.generator: torch.Generator | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.generator is None:
            self.generator = torch.Generator(device=scores.device).manual_seed(self.seed)
        cdf = torch.softmax(scores.float(), dim=-1).cumsum_(dim=-1)
        draw = torch.rand(len(scores), 1, generator=self.generator, device=scores.device) * cdf[:, -1:]
        # side="right": tokens of zero probability (an empty CDF step) are never chosen.
        choice = torch.searchsorted(cdf, draw, side="right").clamp_(max=scores.shape[-1] - 1)
        return torch.full_like(scores, float("-inf")).scatter_(1, choice, 0.0)


@torch.inference_mode()
def _self_generated(lm, samples: int, seq_len: int, generator: torch.Generator) -> torch.Tensor:
    from transformers import GenerationConfig, LogitsProcessorList

    if lm.kind != "causal-lm":
        raise SlmError(f"{lm.spec}: data-free calibration needs a causal LM; pass --calib PATH")
    tokenizer = lm.tokenizer
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    vocab = lm.config.get_text_config().vocab_size
    # A random first token per sample diversifies the text (as LLM-QAT samples its first token).
    first = torch.randint(0, vocab, (samples, 1), generator=generator)
    prefix = first if start is None else torch.cat([torch.full((samples, 1), start), first], dim=1)
    prefix = prefix.to(lm.model.device)
    new_tokens = seq_len - prefix.shape[1]
    # Plain sampling at temperature 1 whatever the model's own generation defaults say.
    settings = GenerationConfig(do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id)
    sampler = _InverseCdfSampler(int(torch.randint(0, 2**62, (1,), generator=generator)))
    out = lm.model.generate(input_ids=prefix, attention_mask=torch.ones_like(prefix), generation_config=settings,
                            logits_processor=LogitsProcessorList([sampler]))
    return out[:, :seq_len].cpu()
