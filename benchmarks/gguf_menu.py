"""llama.cpp's GGUF menu, each file made with llama.cpp's own imatrix, against slmkit's budgeted plans of the same
sizes, all scored by llama.cpp.

For each model (the packaged SmolLM2-135M, whose float weights are a dequantized Q4_1 file, and its rotated twin,
benchmarks/rotated_twin.py, the same function with no weight on any grid):

  1. `slm export --quant f16`: the reference file;
  2. llama.cpp's tools built from the llama.cpp llama-cpp-python vendors (benchmarks/llama_tools.py):
     `llama-imatrix` on the calibration text, then `llama-quantize --imatrix` for each type of the menu;
  3. slmkit: the sensitivity and the candidates are measured once per model (compress.sensitivity,
     compress.gguf_quantize), then for each menu file's size a plan within it, GPTQ on the planned grids, saved and
     exported (`slm export` packs the plan as it is);
  4. every file on llama.cpp (llama-cpp-python): KL divergence to the f16 file (mean, p99), top-1 agreement and
     perplexity on the WikiText-2 test text, and ARC-Easy accuracy.

Prints one table per model; a row of slmkit's that is larger than its llama.cpp file, or not lower in KL and
perplexity, is marked. Both quantizers calibrate on the same text (WikiText-2 validation).

    .venv/bin/python benchmarks/gguf_menu.py                                  # the whole menu (an hour or more)
    .venv/bin/python benchmarks/gguf_menu.py --types Q4_K_M,Q4_0 --windows 8 --arc-limit 200
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from collections import Counter
from pathlib import Path

import torch

import slmkit
from llama_tools import ensure_tools
from rotated_twin import rotate
from slmkit.compress.gguf_plan import PLAN_FILE, write_plan
from slmkit.compress.gguf_quantize import PLAN_TYPES, candidates, plan_types, quantize_planned
from slmkit.compress.sensitivity import measure_sensitivity
from slmkit.data import load_choice
from slmkit.evaluation.choice import choice_accuracy
from slmkit.evaluation.divergence import divergence
from slmkit.exporters.gguf import gguf_file_size
from slmkit.runtime.llamacpp import LlamaCppModel

BENCH_DIR = Path(__file__).resolve().parent
DATA = BENCH_DIR.parent.parent / "shared" / "data"
MENU = ("Q4_0", "IQ4_NL", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0")


def llama_menu(tools: dict, f16: Path, calibration: Path, types: list[str], work: Path, chunks: int,
               context: int) -> dict[str, Path]:
    imatrix = work / "imatrix.gguf"
    if not imatrix.exists():
        subprocess.run([tools["llama-imatrix"], "-m", f16, "-f", calibration, "-o", imatrix, "-c", str(context),
                        "--chunks", str(chunks)], check=True, capture_output=True)
    files = {}
    for type_name in types:
        path = work / f"llama.{type_name}.gguf"
        if not path.exists():
            subprocess.run([tools["llama-quantize"], "--imatrix", imatrix, f16, path, type_name], check=True,
                           capture_output=True)
        files[type_name] = path
    return files


class Planner:
    """One model's sensitivity and candidates, measured once; a plan per byte budget."""

    def __init__(self, spec: str, ids: torch.Tensor, sensitivity_samples: int):
        lm = slmkit.load(spec)
        self.spec, self.ids = spec, ids
        self.sensitivity = measure_sensitivity(lm.model, ids[:sensitivity_samples])
        self.found = candidates(lm.model, self.sensitivity, PLAN_TYPES)
        smallest = {name: min(options, key=lambda option: option.bytes) for name, options in self.found.items()}
        self.fixed = gguf_file_size(lm, {name: option.type for name, option in smallest.items()}) - sum(
            option.bytes for option in smallest.values())

    def file(self, size: int, out: Path) -> tuple[Path, dict]:
        lm = slmkit.load(self.spec)
        planned = plan_types(self.found, budget=size - self.fixed)
        params = quantize_planned(lm.model, planned, self.sensitivity, self.ids, gptq=True)
        summary = {"predicted_kl": sum(t.predicted_kl for t in planned.values()),
                   "types": dict(Counter(t.type for t in planned.values()).most_common())}
        checkpoint = out.with_suffix("")
        slmkit.save(lm, checkpoint, stage="quantize", config={"plan_budget": size}, force=True)
        write_plan(checkpoint, planned, params, summary)
        slmkit.export(slmkit.load(str(checkpoint)), out, force=True)
        return out, summary


def remembered(reference):
    """`reference` computing each window's logits once: every file of the menu is compared on the same windows,
    so the f16 file runs once per window, not once per file (about 100 MB a window of 512 tokens)."""
    computed, logits = {}, reference.logits

    def cached(input_ids, attention):
        key = input_ids.numpy().tobytes()
        if key not in computed:
            computed[key] = logits(input_ids, attention)
        return computed[key]

    reference.logits = cached
    return reference


def score(path: Path, reference, text: str, args, arc: list) -> dict:
    lm = LlamaCppModel(path, logits_all=True, n_ctx=args.max_length, n_threads=args.threads)
    measured = divergence(lm, reference, text, max_length=args.max_length, limit=args.windows)
    accuracy = choice_accuracy(lm, arc)["acc"] if arc else None
    return {"bytes": path.stat().st_size, "kl_mean": measured["kl_mean"], "kl_p99": measured["kl_p99"],
            "top1": measured["top1_agreement"], "ppl": measured["token_perplexity"], "arc": accuracy}


def run_model(name: str, spec: str, args, tools, arc, rows: list[dict]) -> list[dict]:
    """Scores `name`'s menu into `rows`, each row added (and written to --json-out) as soon as it is measured:
    a run stopped half way keeps what it measured."""
    work = args.work / name
    work.mkdir(parents=True, exist_ok=True)
    lm = slmkit.load(spec)
    f16 = work / "f16.gguf"
    if not f16.exists():
        slmkit.export(lm, f16, slmkit.GGUFConfig(quant="f16"))
    calibration_text = (DATA / "wikitext-2-valid-tokenized.txt").read_text()[:args.calib_chars]
    calibration = work / "calibration.txt"
    calibration.write_text(calibration_text)
    ids = torch.tensor(lm.tokenizer(calibration_text).input_ids)
    ids = ids[:len(ids) // args.seq_len * args.seq_len].view(-1, args.seq_len)[:args.samples]
    theirs = llama_menu(tools, f16, calibration, args.types, work, len(ids), args.seq_len)
    reference = remembered(LlamaCppModel(f16, logits_all=True, n_ctx=args.max_length, n_threads=args.threads))
    text = (DATA / "wikitext-2-raw-test.txt").read_text()
    planner = None
    rows.append({"file": "f16", **score(f16, reference, text, args, arc)})
    for type_name, path in theirs.items():
        rows.append({"file": f"llama.cpp {type_name} (imatrix)", **score(path, reference, text, args, arc)})
        ours = work / f"slmkit.{type_name}.gguf"
        started = time.perf_counter()
        if ours.exists() and not args.replan:
            plan = json.loads((ours.with_suffix("") / PLAN_FILE).read_text())
            summary, seconds = {"predicted_kl": plan["predicted_kl"], "types": plan["types"]}, None
        else:
            if planner is None:
                planner = Planner(spec, ids, args.sensitivity_samples)
                print(f"{name}: sensitivity and candidates in {time.perf_counter() - started:.0f} s", flush=True)
                started = time.perf_counter()
            ours, summary = planner.file(path.stat().st_size, ours)
            seconds = time.perf_counter() - started
        rows.append({"file": f"slmkit plan <= {type_name}", **score(ours, reference, text, args, arc),
                     "predicted_kl": summary["predicted_kl"], "types": summary["types"], "seconds": seconds})
        print(f"{name}: {type_name}: {json.dumps(rows[-2:], default=str)}", flush=True)
        if args.json_out:
            args.json_out.write_text(json.dumps(args.results, indent=2, default=str))
    return rows


def print_table(name: str, rows: list[dict]) -> None:
    print(f"\n{name}\n{'file':34s} {'MB':>8s} {'KL mean':>9s} {'KL p99':>8s} {'top-1':>7s} {'ppl':>8s} {'ARC':>6s}")
    for index, row in enumerate(rows):
        arc = f"{row['arc']:.3f}" if row["arc"] is not None else "-"
        mark = ""
        if row["file"].startswith("slmkit"):
            theirs = rows[index - 1]
            if row["bytes"] > theirs["bytes"] or row["kl_mean"] >= theirs["kl_mean"] or row["ppl"] >= theirs["ppl"]:
                mark = "  <- not better than llama.cpp's"
        print(f"{row['file']:34s} {row['bytes'] / 1e6:8.1f} {row['kl_mean']:9.4f} {row['kl_p99']:8.3f} "
              f"{row['top1']:7.3f} {row['ppl']:8.3f} {arc:>6s}{mark}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--types", default=",".join(MENU), help="llama.cpp's types to compare with")
    parser.add_argument("--models", default="smollm2,rotated", help="smollm2, rotated, or both")
    parser.add_argument("--samples", type=int, default=64, help="calibration sequences (both quantizers)")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--calib-chars", type=int, default=600_000)
    parser.add_argument("--sensitivity-samples", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512, help="tokens per scored window")
    parser.add_argument("--windows", type=int, default=40, help="WikiText-2 test windows scored")
    parser.add_argument("--arc-limit", type=int, default=500, help="ARC-Easy questions (0: none)")
    parser.add_argument("--threads", type=int, default=None,
                        help="llama.cpp threads when scoring (1 keeps it steady beside other work)")
    parser.add_argument("--work", type=Path, default=BENCH_DIR / "build" / "gguf-menu")
    parser.add_argument("--json-out", type=Path, default=None)
    parser.add_argument("--replan", action="store_true",
                        help="make slmkit's files again even where the work folder has them")
    args = parser.parse_args()
    args.types = args.types.split(",")
    tools = ensure_tools()
    arc = load_choice(DATA / "arc_easy_test.jsonl")[:args.arc_limit] if args.arc_limit else []
    models = {"smollm2": "smollm2-135m-instruct", "rotated": str(BENCH_DIR / "build" / "smollm2-rotated")}
    results = args.results = {}
    for name in args.models.split(","):
        if name == "rotated" and not Path(models["rotated"]).is_dir():
            twin = slmkit.load("smollm2-135m-instruct")
            rotate(twin.model, seed=0)
            slmkit.save(twin, models["rotated"], stage="rotated-twin", config={"seed": 0}, force=True)
        results[name] = []
        run_model(name, models[name], args, tools, arc, results[name])
        print_table(f"{name} ({'dequantized Q4_1 weights' if name == 'smollm2' else 'continuous weights'})",
                    results[name])
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
