"""Check `slm eval`'s multiple-choice accuracy against lm-evaluation-harness.

Compares, on ARC-Easy (test split, local JSONL in the Hugging Face schema) and
the same float32 checkpoint directory of SmolLM2-135M-Instruct:

  a. `slm eval smollm2-135m-instruct --data FILE --json` (its `acc`, `acc_norm`);
  b. `lm_eval --model hf` from the peer venv (benchmarks/.venv-peers) with a
     task written here into a temporary directory: the same fields as
     lm-eval's own `arc_easy` task (prompt "Question: {question}\nAnswer:",
     choices scored as " " + choice text, gold = the answerKey's index, metrics
     acc and acc_norm), but reading FILE through `dataset_path: json`, so it
     runs offline (HF_HUB_OFFLINE=1, HF_DATASETS_OFFLINE=1).

--limit N keeps the first N questions on both sides. Prints both accuracies
side by side; exits 1 when acc or acc_norm differs by more than --tolerance
points (default 0.5). The peer venv is created, and torch + lm-eval installed
into it, when missing (see benchmarks/peers.py).

Usage (from the repository root):

    .venv/bin/python benchmarks/check_choice.py --limit 200   # a few minutes
    .venv/bin/python benchmarks/check_choice.py               # all 2,376 questions
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
MODEL_ALIAS = "smollm2-135m-instruct"
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "arc_easy_test.jsonl"
TASK_NAME = "slmkit_check_arc_easy_local"
PEER_PACKAGES = ["torch==2.13.0", "lm-eval"]  # torch first: pins the CPU build before lm-eval asks for torch

# lm-eval's arc_easy task (lm_eval/tasks/arc/arc_easy.yaml) with the dataset swapped for a local file.
# JSON-encoded strings are valid YAML scalars, which keeps the "\n" and the {{ }} intact.
TASK_YAML = """\
task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: multiple_choice
test_split: test
doc_to_text: {doc_to_text}
doc_to_target: {doc_to_target}
doc_to_choice: {doc_to_choice}
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def run_lm_eval(peer_python: Path, model_dir: str, data: Path, limit: int | None, batch_size: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="check_choice_") as tmp:
        task_dir, output_dir = Path(tmp) / "tasks", Path(tmp) / "out"
        task_dir.mkdir()
        (task_dir / f"{TASK_NAME}.yaml").write_text(TASK_YAML.format(
            task=TASK_NAME, data=json.dumps(str(data)),
            doc_to_text=json.dumps("Question: {{question}}\nAnswer:"),
            doc_to_target=json.dumps("{{choices.label.index(answerKey)}}"),
            doc_to_choice=json.dumps("{{choices.text}}")))
        command = [str(peer_python), "-m", "lm_eval", "--model", "hf",
                   "--model_args", f"pretrained={model_dir},dtype=float32",
                   "--tasks", TASK_NAME, "--include_path", str(task_dir), "--device", "cpu",
                   "--batch_size", str(batch_size), "--output_path", str(output_dir)]
        if limit is not None:
            command += ["--limit", str(limit)]
        print("$", " ".join(command), flush=True)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        result = subprocess.run(command, capture_output=True, text=True, env=env)
        if result.returncode != 0:
            sys.exit(f"lm_eval failed ({result.returncode}):\n{result.stderr[-4000:]}")
        found = sorted(output_dir.rglob("results_*.json"))
        if not found:
            sys.exit(f"lm_eval wrote no results_*.json under {output_dir}:\n{result.stdout[-2000:]}")
        report = json.loads(found[-1].read_text())
    metrics = report["results"][TASK_NAME]
    samples = report.get("n-samples", {}).get(TASK_NAME, {})
    return {"acc": metrics["acc,none"], "acc_norm": metrics["acc_norm,none"],
            "examples": samples.get("effective", samples.get("original"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="ARC-schema JSONL")
    parser.add_argument("--limit", type=int, default=None, help="only the first N questions (both sides)")
    parser.add_argument("--batch-size", type=int, default=8, help="lm-eval's --batch_size")
    parser.add_argument("--tolerance", type=float, default=0.5, help="largest allowed difference, in points")
    args = parser.parse_args()
    data = args.data.resolve()

    sys.path.insert(0, str(BENCH_DIR))
    from peers import alias_checkpoint_dir, ensure_peer_venv, slm_eval

    peer_python = ensure_peer_venv(PEER_PACKAGES)

    started = time.perf_counter()
    slm = slm_eval(MODEL_ALIAS, data, args.limit)
    slm_seconds = time.perf_counter() - started

    started = time.perf_counter()
    peer = run_lm_eval(peer_python, alias_checkpoint_dir(MODEL_ALIAS), data, args.limit, args.batch_size)
    peer_seconds = time.perf_counter() - started

    print(f"\n{data.name}: slm scored {slm['examples']} questions, lm-eval {peer['examples']}")
    print(f"{'':10}{'slm eval':>10}{'lm-eval':>10}{'diff (pts)':>12}")
    failed = []
    for metric in ("acc", "acc_norm"):
        diff = 100 * (slm[metric] - peer[metric])
        print(f"{metric:10}{100 * slm[metric]:10.2f}{100 * peer[metric]:10.2f}{diff:+12.2f}")
        if abs(diff) > args.tolerance:
            failed.append(metric)
    print(f"{'wall s':10}{slm_seconds:10.1f}{peer_seconds:10.1f}")
    if slm["examples"] != peer["examples"]:
        failed.append("examples")
    if failed:
        print(f"FAIL: {', '.join(failed)} differ (tolerance {args.tolerance} points, same question count)")
        sys.exit(1)
    print("OK")


if __name__ == "__main__":
    main()
