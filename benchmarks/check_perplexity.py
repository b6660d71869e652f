"""Check `slm eval`'s token perplexity against a plain transformers computation.

Compares, on the same float32 checkpoint directory of SmolLM2-135M-Instruct:

  a. `slm eval smollm2-135m-instruct --data FILE --max-length L --json`
     (its `token_perplexity`), run in a subprocess;
  b. the GPTQ/Wanda convention written out with transformers alone:
     AutoTokenizer/AutoModelForCausalLM on the directory that
     `slmkit.models.resolve("smollm2-135m-instruct")` returns, `tokenizer(text)`
     on the whole file (default special tokens), non-overlapping windows of L
     tokens (windows under 2 tokens dropped, the last one may be shorter),
     labels = inputs so each window scores every token after its first;
     exp(summed NLL / scored tokens).

slmkit is used only to find the checkpoint directory; (b) does not import it.
Prints both figures and their relative difference; exits 1 when they differ by
more than --tolerance (default 0.5%), or when they score different token counts.

Usage (from the repository root):

    .venv/bin/python benchmarks/check_perplexity.py --limit 5     # first 5 windows, about a minute
    .venv/bin/python benchmarks/check_perplexity.py               # the whole WikiText-2 test file
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL_ALIAS = "smollm2-135m-instruct"
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "wikitext-2-raw-test.txt"


def transformers_perplexity(model_dir: str, data: Path, max_length: int, limit: int | None) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    text = data.read_text(encoding="utf-8")
    ids = tokenizer(text).input_ids
    starts = [begin for begin in range(0, len(ids), max_length) if len(ids[begin:begin + max_length]) >= 2]
    if limit is not None:
        starts = starts[:limit]
    nll_sum, scored = 0.0, 0
    with torch.inference_mode():
        for number, begin in enumerate(starts, start=1):
            window = torch.tensor([ids[begin:begin + max_length]])
            loss = model(input_ids=window, labels=window).loss  # mean over the window's len-1 targets
            nll_sum += loss.item() * (window.shape[1] - 1)
            scored += window.shape[1] - 1
            print(f"\r  transformers: window {number}/{len(starts)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return {"token_perplexity": math.exp(nll_sum / scored), "nll_sum": nll_sum, "scored_tokens": scored,
            "windows": len(starts), "tokens_in_file": len(ids), "bos_added": ids[:1] == [tokenizer.bos_token_id]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="a UTF-8 text file")
    parser.add_argument("--max-length", type=int, default=2048, help="window length in tokens")
    parser.add_argument("--limit", type=int, default=None, help="only the first N windows (both sides)")
    parser.add_argument("--tolerance", type=float, default=0.005, help="largest allowed relative difference")
    args = parser.parse_args()
    data = args.data.resolve()

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from peers import alias_checkpoint_dir, slm_eval

    started = time.perf_counter()
    slm = slm_eval(MODEL_ALIAS, data, args.limit, "--max-length", str(args.max_length))
    slm_seconds = time.perf_counter() - started

    model_dir = alias_checkpoint_dir(MODEL_ALIAS)
    print(f"transformers on {model_dir}", flush=True)
    started = time.perf_counter()
    ref = transformers_perplexity(model_dir, data, args.max_length, args.limit)
    ref_seconds = time.perf_counter() - started

    relative = abs(slm["token_perplexity"] - ref["token_perplexity"]) / ref["token_perplexity"]
    print(f"\n{data.name}, windows of {args.max_length} tokens, {ref['windows']} windows, "
          f"{ref['scored_tokens']} scored tokens (of {ref['tokens_in_file']} in the file; BOS added: "
          f"{ref['bos_added']})")
    print(f"{'':14}{'token ppl':>12}{'scored':>10}{'windows':>9}{'wall s':>9}")
    print(f"{'slm eval':14}{slm['token_perplexity']:12.4f}{slm['scored_tokens']:10d}{slm['windows']:9d}"
          f"{slm_seconds:9.1f}")
    print(f"{'transformers':14}{ref['token_perplexity']:12.4f}{ref['scored_tokens']:10d}{ref['windows']:9d}"
          f"{ref_seconds:9.1f}")
    print(f"relative difference: {relative:.4%} (tolerance {args.tolerance:.2%})")
    print(f"slm also reports word_perplexity {slm.get('word_perplexity', float('nan')):.4f}, "
          f"bits_per_byte {slm.get('bits_per_byte', float('nan')):.4f}")
    problems = []
    if relative > args.tolerance:
        problems.append("token perplexities differ by more than the tolerance")
    if (slm["scored_tokens"], slm["windows"]) != (ref["scored_tokens"], ref["windows"]):
        problems.append("slm scored a different number of tokens or windows")
    for problem in problems:
        print(f"FAIL: {problem}")
    if problems:
        sys.exit(1)
    print("OK")


if __name__ == "__main__":
    main()
