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


@torch.inference_mode()
def _self_generated(lm, samples: int, seq_len: int, generator: torch.Generator) -> torch.Tensor:
    if lm.kind != "causal-lm":
        raise SlmError(f"{lm.spec}: data-free calibration needs a causal LM; pass --calib PATH")
    tokenizer = lm.tokenizer
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    vocab = lm.config.get_text_config().vocab_size
    # A random first token per sample diversifies the text (as LLM-QAT samples its first token).
    first = torch.randint(0, vocab, (samples, 1), generator=generator)
    prefix = first if start is None else torch.cat([torch.full((samples, 1), start), first], dim=1)
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
    out = lm.model.generate(input_ids=prefix, attention_mask=torch.ones_like(prefix), do_sample=True,
                            temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=seq_len - prefix.shape[1],
                            min_new_tokens=seq_len - prefix.shape[1], pad_token_id=tokenizer.eos_token_id)
    return out[:, :seq_len]
