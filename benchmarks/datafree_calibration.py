"""Data-free calibration: how fast the model samples its own text, how much of it GPTQ needs, and the wall time
of `slm quantize --method gptq --target gguf-q4_0` without --calib before and after the fast sampler.

On smollm2-135m-instruct (the packaged Q4_1 GGUF, converted once to float for torch), in one run:

  1. throughput: --samples x --seq-len tokens sampled by each engine (nothing cached), tokens/s; both engines
     decode through `runtime.batched.sample_rows` (the runtime's batched rows, `Model.open_batch`):
       torch         the float32 model, all rows in one batch (transformers' generate until issue 29: the same
                     ids; its static KV cache was measured no faster on a CPU);
       torch-int8    the same on slmkit's int8-weight Linear layers (`--weights int8`);
       llamacpp      the GGUF on llama.cpp, 32 sequences per batch;
  2. size: the largest of --sizes sampled once on llama.cpp; GPTQ q4_0 (w4, groups of 32, the gguf-q4_0 target)
     calibrated on its first N rows cut to L tokens, for each --sizes entry (a prefix of a sample is a sample
     of the shorter length), and the WikiText-2 raw test perplexity of each result on its first --windows
     windows of 2048 tokens;
  3. end to end: `slm quantize smollm2-135m-instruct --method gptq --bits 4 --target gguf-q4_0 --out DIR`, no
     --calib: with this tree, and with --before-rev (a git worktree of that commit, the sampler before this
     change; skipped with --before-rev ''), each with a fresh calibration cache, and the same perplexity.

Data: ../shared/data/wikitext-2-raw-test.txt. Run alone on the machine; steps 2 and 3 take most of the time.

    .venv/bin/python benchmarks/datafree_calibration.py
    .venv/bin/python benchmarks/datafree_calibration.py --sizes 32x256 --before-rev '' --windows 4
"""

from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

BENCH_DIR = Path(__file__).resolve().parent
PROJECT = BENCH_DIR.parent
PYTHON = PROJECT / ".venv" / "bin" / "python"
DATA = PROJECT.parent / "shared" / "data"
MODEL = "smollm2-135m-instruct"
SLM = "import sys; from slmkit.cli.main import main; sys.argv[0] = 'slm'; main()"


def sampler_throughput(samples: int, seq_len: int) -> dict[str, float]:
    """tokens/s of each engine on the same rows and seed, nothing cached."""
    import slmkit
    from slmkit.compress.calibration import self_generated
    from slmkit.runtime import open_model

    rates = {}
    lm = slmkit.load(MODEL)
    engines = {"torch": lambda: self_generated(lm, samples, seq_len, engine="torch", cache=False),
               "torch-int8": lambda: self_generated(open_model(MODEL, weights="int8"), samples, seq_len,
                                                    engine="torch", cache=False),
               "llamacpp": lambda: self_generated(lm, samples, seq_len, engine="llamacpp", cache=False)}
    for name, sample in engines.items():
        started = time.perf_counter()
        ids = sample()
        seconds = time.perf_counter() - started
        assert ids.shape == (samples, seq_len), ids.shape
        rates[name] = samples * seq_len / seconds
        print(f"  {name:<12} {rates[name]:8.1f} tokens/s  ({seconds:.1f} s)", flush=True)
    return rates


def wikitext_perplexity(lm, windows: int) -> float:
    import slmkit

    config = slmkit.EvalConfig(task="perplexity", max_length=2048, stride=2048, limit=windows)
    return slmkit.evaluate(lm, DATA / "wikitext-2-raw-test.txt", config).summary["token_perplexity"]


def size_study(sizes: list[tuple[int, int]], windows: int) -> dict:
    import slmkit
    from slmkit.compress.calibration import self_generated
    from slmkit.compress.quantize import quant_config

    original = slmkit.load(MODEL)
    started = time.perf_counter()
    most, longest = max(samples for samples, _ in sizes), max(seq_len for _, seq_len in sizes)
    rows = self_generated(original, most, longest, engine="llamacpp", cache=False)
    print(f"  {most} x {longest} sampled on llama.cpp in {time.perf_counter() - started:.0f} s", flush=True)
    results = {}
    for samples, seq_len in sizes:
        lm = copy.deepcopy(original)
        started = time.perf_counter()
        slmkit.quantize(lm, quant_config("gptq", bits=4, group_size=32, target="gguf-q4_0"),
                        rows[:samples, :seq_len], fake_quant=True, target="gguf-q4_0")
        seconds = time.perf_counter() - started
        results[(samples, seq_len)] = {"ppl": wikitext_perplexity(lm, windows), "gptq_s": seconds}
        print(f"  GPTQ q4_0 on {samples} x {seq_len}: WikiText-2 perplexity {results[(samples, seq_len)]['ppl']:.3f}"
              f" (GPTQ {seconds:.0f} s)", flush=True)
    return results


def end_to_end(source: Path, label: str, work: Path, windows: int) -> dict:
    """`slm quantize` with no --calib from `source` (a tree's src/), a fresh calibration cache."""
    import slmkit
    from slmkit.models.checkpoint import read_manifest

    out = work / f"gptq-{label}"
    cache = work / f"cache-{label}"
    cache.mkdir()
    shared = Path(os.environ.get("SLMKIT_CACHE", Path.home() / ".cache" / "slmkit"))
    (cache / "models").symlink_to(shared / "models")  # the converted float model, not the calibration text
    environment = {**os.environ, "PYTHONPATH": str(source), "SLMKIT_CACHE": str(cache)}
    started = time.perf_counter()
    done = subprocess.run([str(PYTHON), "-c", SLM, "quantize", MODEL, "--method", "gptq", "--bits", "4",
                           "--target", "gguf-q4_0", "--out", str(out)], env=environment, capture_output=True,
                          text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"error: slm quantize ({label}) exited {done.returncode}:\n{done.stderr[-3000:]}")
    ppl = wikitext_perplexity(slmkit.load(str(out)), windows)
    manifest = read_manifest(out) or {}
    calib = f"{manifest['config'].get('calib_samples')} x {manifest['config'].get('calib_seq_len')}"
    print(f"  {label}: {seconds:.0f} s end to end, calibration {calib}, WikiText-2 perplexity {ppl:.3f}", flush=True)
    return {"seconds": seconds, "ppl": ppl, "calib": calib}


def before_and_after(args) -> tuple[dict, dict | None]:
    with tempfile.TemporaryDirectory(prefix="slmkit-datafree-") as scratch:
        work = Path(scratch)
        after = end_to_end(PROJECT / "src", "after", work, args.windows)
        if not args.before_rev:
            return after, None
        tree = work / "before-tree"
        subprocess.run(["git", "-C", str(PROJECT), "worktree", "add", "--detach", str(tree), args.before_rev],
                       check=True, capture_output=True)
        try:
            return after, end_to_end(tree / "src", f"before ({args.before_rev})", work, args.windows)
        finally:
            subprocess.run(["git", "-C", str(PROJECT), "worktree", "remove", "--force", str(tree)], capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=32, help="rows for the throughput step (default 32)")
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per row there (default 256)")
    parser.add_argument("--sizes", default="128x512,64x512,64x256,32x512,32x256,16x256",
                        help="GPTQ calibration sizes, rows x tokens ('' skips the step)")
    parser.add_argument("--windows", type=int, default=16, help="WikiText-2 windows of 2048 tokens (default 16)")
    parser.add_argument("--before-rev", default="15d7dbd", help="the commit before the fast sampler ('' skips)")
    parser.add_argument("--steps", default="1,2,3", help="which of the steps above to run (default all)")
    args = parser.parse_args()
    if not (DATA / "wikitext-2-raw-test.txt").exists():
        sys.exit(f"error: {DATA / 'wikitext-2-raw-test.txt'} is missing (see ../shared/data/README)")
    sizes = [tuple(int(n) for n in size.split("x")) for size in args.sizes.split(",") if size.strip()]
    print(f"threads: {torch.get_num_threads()}; model {MODEL}", flush=True)
    rates = {}
    steps = {step.strip() for step in args.steps.split(",")}
    if "1" in steps:
        print(f"1. sampler throughput, {args.samples} x {args.seq_len} tokens:", flush=True)
        rates = sampler_throughput(args.samples, args.seq_len)
    studied = {}
    if sizes and "2" in steps:
        print("2. GPTQ q4_0 by calibration size (data-free, sampled on llama.cpp):", flush=True)
        studied = size_study(sizes, args.windows)
    after = before = None
    if "3" in steps:
        print("3. slm quantize --method gptq --target gguf-q4_0 without --calib, end to end:", flush=True)
        after, before = before_and_after(args)
    print()
    if rates:
        base = rates["torch"]
        print("sampler tokens/s: " + ", ".join(f"{name} {rate:.0f} ({rate / base:.2f}x)"
                                               for name, rate in rates.items()))
    if studied:
        reference = studied.get((128, 512))
        for (samples, seq_len), row in studied.items():
            change = f" ({(row['ppl'] / reference['ppl'] - 1) * 100:+.2f}% vs 128 x 512)" if reference else ""
            print(f"GPTQ q4_0 calibrated on {samples:>3} x {seq_len:<4} sampled tokens: perplexity {row['ppl']:.3f}"
                  f"{change}, GPTQ {row['gptq_s']:.0f} s")
    if after is None:
        return
    print(f"after:  {after['seconds']:.0f} s, {after['calib']}, perplexity {after['ppl']:.3f} "
          f"(target <= 180 s: {'met' if after['seconds'] <= 180 else 'NOT met'})")
    if before:
        difference = (after["ppl"] / before["ppl"] - 1) * 100
        print(f"before: {before['seconds']:.0f} s, {before['calib']}, perplexity {before['ppl']:.3f}; after is "
              f"{before['seconds'] / after['seconds']:.1f}x faster, perplexity {difference:+.2f}% "
              f"(target: at most 1% higher: {'met' if difference <= 1 else 'NOT met'}"
              f"{'; lower by more than 1%: the sampled text decides as much as its size' if difference < -1 else ''})")


if __name__ == "__main__":
    main()
