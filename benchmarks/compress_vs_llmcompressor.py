"""One-shot compression, slmkit vs llm-compressor, on the same model, calibration and evaluation.

What it compares: for each method — magnitude 50%, Wanda 50%, SparseGPT 50%,
SparseGPT 2:4, RTN W4 g64 symmetric, GPTQ W4 g64 symmetric — the float
SmolLM2-135M-Instruct checkpoint is compressed once by slmkit and once by
llm-compressor (on CPU), and every result, plus the dense baseline, is scored
by ONE evaluator: `slm eval OUT --data wikitext-2-raw-test.txt --max-length 2048`
(token perplexity over non-overlapping 2048-token windows).
Structured pruning to 75% of the parameters (`slm prune --structured
--target-params`) is listed for slmkit alone, with its decode speed-up over
the dense model measured by `slm bench`.

How:
- slmkit: the `slm prune` / `slm quantize` CLI in a subprocess; its time is the
  whole subprocess wall time (Python start, model load, calibration, compression,
  save).
- llm-compressor: compress_vs_llmcompressor_worker.py run by the python of its
  own venv (benchmarks/.venv-llmcompressor: llm-compressor pins an older
  transformers than slmkit), which loads the same float checkpoint directory
  with AutoModelForCausalLM and calls `llmcompressor.oneshot` with the matching
  modifier (MagnitudePruningModifier, WandaPruningModifier, SparseGPTModifier
  with mask_structure "0:0" or "2:4", QuantizationModifier for RTN,
  GPTQModifier for GPTQ; W4 as a custom QuantizationScheme: int, symmetric,
  strategy "group", group_size 64; lm_head ignored). Its time is the oneshot
  call alone; the whole worker subprocess is timed as well ("process" column).
- Calibration: both see the same token windows. The driver builds them with
  slmkit's own calibration sampler (`slmkit.compress.calibration.calibration_ids`,
  `--seed`, default 0: random non-overlapping windows of the tokenized file) and hands
  them to llm-compressor as a pre-tokenized `datasets.Dataset` (input_ids). Run with
  a few seeds to see how much a method's result moves with the calibration sample.
  Default: 128 x 512 tokens of ../shared/data/wikitext-2-valid-tokenized.txt.

Run (from the project root; the llm-compressor venv is created on first use):

    .venv/bin/python benchmarks/compress_vs_llmcompressor.py --json-out /tmp/cmp.json
    .venv/bin/python benchmarks/compress_vs_llmcompressor.py --calib-samples 8 \\
        --calib-seq-len 256 --limit 5 --methods wanda-50,gptq-w4g64   # quick

Run one heavy process at a time: this script runs every step sequentially.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

BENCH_DIR = Path(__file__).resolve().parent
PROJECT = BENCH_DIR.parent
SLM = PROJECT / ".venv" / "bin" / "slm"
WORKER = BENCH_DIR / "compress_vs_llmcompressor_worker.py"
LC_VENV = BENCH_DIR / ".venv-llmcompressor"
# torch first and pinned: the CPU wheel; a bare torch requirement would pull the CUDA build.
LC_PACKAGES = ["torch==2.13.0", "llmcompressor"]
DATA = PROJECT.parent / "shared" / "data"

# name -> (slm arguments, how llm-compressor is asked for it in the worker)
METHODS = {
    "magnitude-50": ["prune", "--method", "magnitude", "--sparsity", "0.5"],
    "wanda-50": ["prune", "--method", "wanda", "--sparsity", "0.5"],
    "sparsegpt-50": ["prune", "--method", "sparsegpt", "--sparsity", "0.5"],
    "sparsegpt-2:4": ["prune", "--method", "sparsegpt", "--pattern", "2:4"],
    "rtn-w4g64": ["quantize", "--method", "rtn", "--bits", "4", "--group-size", "64", "--sym"],
    "gptq-w4g64": ["quantize", "--method", "gptq", "--bits", "4", "--group-size", "64", "--sym"],
    # slmkit only (llm-compressor's oneshot removes no blocks or channels); {target} = 75% of the dense count
    "structured-75": ["prune", "--structured", "--target-params", "{target}"],
}
STRUCTURED_FRACTION = 0.75


def ensure_llmcompressor_venv() -> Path:
    """The llm-compressor venv's python, created and filled on first use.

    Like peers.ensure_peer_venv, but in a venv of its own: llm-compressor pins
    transformers to an older release than the shared peer venv may hold.
    """
    python = LC_VENV / "bin" / "python"
    if not python.exists():
        print(f"note: creating {LC_VENV}", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(LC_VENV)], check=True)
    for requirement in LC_PACKAGES:
        name = requirement.split("==")[0]
        check = f"import importlib.metadata as m; m.distribution({name!r})"
        if subprocess.run([str(python), "-c", check], capture_output=True).returncode != 0:
            print(f"note: installing {requirement} into {LC_VENV} (minutes)", file=sys.stderr, flush=True)
            subprocess.run([str(python), "-m", "pip", "install", "-q", requirement], check=True)
    return python


def offline_env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def run_timed(cmd: list[str], log) -> tuple[subprocess.CompletedProcess, float]:
    print("$ " + " ".join(map(str, cmd)), file=log, flush=True)
    start = time.perf_counter()
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=offline_env())
    seconds = time.perf_counter() - start
    print(proc.stdout[-4000:], proc.stderr[-4000:], sep="\n", file=log, flush=True)
    return proc, seconds


def last_json(text: str) -> dict:
    """The JSON object a `slm ... --json` command printed (the last one in stdout)."""
    start = text.rfind("\n{")
    return json.loads(text[start + 1 if start >= 0 else text.index("{"):])


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    lines = [line.strip() for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
    return (lines[-1] if lines else f"exit {proc.returncode}")[:300]


def evaluate(out_dir: Path, args, log) -> tuple[float | None, str]:
    cmd = [SLM, "eval", out_dir, "--data", args.eval_data, "--max-length", str(args.max_length), "--json"]
    if args.limit:
        cmd += ["--limit", str(args.limit)]
    proc, _ = run_timed(cmd, log)
    if proc.returncode != 0:
        return None, f"slm eval failed: {one_line_error(proc)}"
    return float(last_json(proc.stdout)["token_perplexity"]), ""


def calibration_windows(model_dir: Path, args) -> list[list[int]]:
    """The token windows `slm prune/quantize --calib ... --seed S` calibrates on, by slmkit's own sampler."""
    from transformers import AutoTokenizer

    from slmkit.compress.calibration import calibration_ids

    lm = SimpleNamespace(spec=str(model_dir), kind="causal-lm", tokenizer=AutoTokenizer.from_pretrained(model_dir))
    ids = calibration_ids(lm, args.calib, samples=args.calib_samples, seq_len=args.calib_seq_len, seed=args.seed)
    return ids.tolist()


def parameter_count(model_dir: Path) -> int:
    """Parameters stored in a checkpoint directory's safetensors files (tied weights count once)."""
    from safetensors import safe_open

    total = 0
    for file in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as tensors:
            total += sum(math.prod(tensors.get_slice(name).get_shape()) for name in tensors.keys())
    return total


def decode_speed(model_dir: Path, log) -> float | None:
    """Decode tokens/s by `slm bench` (pp512 / tg128, median of 3)."""
    proc, _ = run_timed([SLM, "bench", model_dir, "--json"], log)
    return float(last_json(proc.stdout)["decode_tokens_per_s"]) if proc.returncode == 0 else None


def run_slmkit(method: str, model_dir: Path, out_dir: Path, args, log) -> dict:
    target = str(round(STRUCTURED_FRACTION * parameter_count(model_dir)))
    cmd = [SLM, *(a.format(target=target) for a in METHODS[method]), model_dir, "--calib", args.calib,
           "--calib-samples", str(args.calib_samples), "--calib-seq-len", str(args.calib_seq_len),
           "--seed", str(args.seed), "--out", out_dir, "--force", "--json"]
    proc, seconds = run_timed(cmd, log)
    row = {"method": method, "tool": "slmkit", "wall_s": seconds, "process_s": seconds}
    if proc.returncode != 0:
        return {**row, "perplexity": None, "note": f"slm failed: {one_line_error(proc)}"}
    row["perplexity"], row["note"] = evaluate(out_dir, args, log)
    if METHODS[method][1] == "--structured":
        row["parameters"] = parameter_count(out_dir)
        row["decode_tokens_per_s"] = decode_speed(out_dir, log)
    return row


def run_llmcompressor(method: str, python: Path, model_dir: Path, calib_json: Path, out_dir: Path,
                      args, log) -> dict:
    if METHODS[method][1] == "--structured":
        return {"method": method, "tool": "llm-compressor", "wall_s": None, "process_s": None, "perplexity": None,
                "note": "n/a: llm-compressor's oneshot removes no blocks, channels or heads"}
    proc, seconds = run_timed([python, WORKER, model_dir, method, calib_json, out_dir], log)
    row = {"method": method, "tool": "llm-compressor", "process_s": seconds}
    results = [line[len("RESULT "):] for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not results:
        return {**row, "wall_s": None, "perplexity": None, "note": f"n/a: {one_line_error(proc)}"}
    result = json.loads(results[-1])
    row["wall_s"] = result["oneshot_s"]
    row["block_sparsity"] = result["block_sparsity"]
    if METHODS[method][0] == "prune" and result["block_sparsity"] < 0.45:
        # MagnitudePruningModifier is a training-time modifier: under oneshot() it computes its masks but
        # applies them only at optimizer steps, so the saved model is the dense one.
        return {**row, "perplexity": None,
                "note": f"n/a: oneshot left the block Linears {result['block_sparsity']:.1%} sparse (asked 50%); "
                        "the modifier applies its masks only at training optimizer steps"}
    notes = []
    row["lm_head_new_zero_fraction"] = result.get("lm_head_new_zero_fraction")
    if (row["lm_head_new_zero_fraction"] or 0) > 0.01:
        notes.append(f"lm_head/embeddings pruned ({row['lm_head_new_zero_fraction']:.0%} new zeros; "
                     "meant to be left alone)")
    row["perplexity"], error = evaluate(out_dir, args, log)
    if error:
        # llm-compressor's compressed form that slm eval could not read: say so, then score a dense copy.
        notes.append(f"its compressed checkpoint: {error}")
        dense = out_dir.with_name(out_dir.name + "-dense")
        conv, _ = run_timed([python, WORKER, "--decompress", out_dir, dense], log)
        if conv.returncode == 0:
            row["perplexity"], error = evaluate(dense, args, log)
            notes.append("scored a dense re-save" if not error else error)
        else:
            notes.append(f"dense re-save failed: {one_line_error(conv)}")
    row["note"] = "; ".join(notes)
    return row


def print_table(rows: list[dict], dense_ppl: float | None) -> None:
    header = (f"{'method':<15} {'tool':<15} {'perplexity':>10} {'vs dense':>9} {'wall (s)':>9} {'process (s)':>11} "
              f"{'params (M)':>10} {'decode t/s':>10}  note")
    print(header)
    print("-" * len(header))

    def number(value, spec):
        return format(value, spec) if value is not None else ""

    for r in rows:
        ppl = f"{r['perplexity']:.3f}" if r.get("perplexity") is not None else "n/a"
        delta = (f"{100 * (r['perplexity'] / dense_ppl - 1):+.1f}%"
                 if r.get("perplexity") is not None and dense_ppl else "")
        wall = f"{r['wall_s']:.1f}" if r.get("wall_s") is not None else "n/a"
        params = number(r["parameters"] / 1e6 if r.get("parameters") else None, ".1f")
        print(f"{r['method']:<15} {r['tool']:<15} {ppl:>10} {delta:>9} {wall:>9} "
              f"{number(r.get('process_s'), '.1f'):>11} {params:>10} "
              f"{number(r.get('decode_tokens_per_s'), '.1f'):>10}  {r.get('note', '')}")
    print("wall: slmkit = the whole `slm` subprocess; llm-compressor = the oneshot() call. "
          "process: each tool's whole subprocess (load, calibrate, compress, save). "
          "decode: `slm bench` tg128 after pp512, for the dense and structured models.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct", help="slmkit alias or float checkpoint dir")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"comma-separated subset of: {', '.join(METHODS)}")
    parser.add_argument("--tools", default="slmkit,llm-compressor", help="comma-separated subset of the two")
    parser.add_argument("--calib", default=str(DATA / "wikitext-2-valid-tokenized.txt"))
    parser.add_argument("--calib-samples", type=int, default=128)
    parser.add_argument("--calib-seq-len", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0, help="which calibration windows (both tools get the same)")
    parser.add_argument("--eval-data", default=str(DATA / "wikitext-2-raw-test.txt"))
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--limit", type=int, default=None, help="only the first N eval windows (quick runs)")
    parser.add_argument("--no-dense", action="store_true", help="skip the dense baseline")
    parser.add_argument("--work-dir", default=None, help="where checkpoints go (default: a temp dir, removed)")
    parser.add_argument("--keep", action="store_true", help="keep the compressed checkpoints")
    parser.add_argument("--json-out", default=None, help="write the table as JSON here")
    parser.add_argument("--log", default=None, help="every subprocess's command and output (default: WORK/log.txt)")
    args = parser.parse_args()

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = [m for m in methods if m not in METHODS] + [t for t in tools if t not in ("slmkit", "llm-compressor")]
    if unknown:
        parser.error(f"unknown method or tool: {', '.join(unknown)}")

    sys.path.insert(0, str(PROJECT / "src"))
    import slmkit.models

    model_dir = Path(args.model) if Path(args.model).is_dir() else slmkit.models.resolve(args.model)
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="compress-vs-lc-"))
    work.mkdir(parents=True, exist_ok=True)
    log_path = Path(args.log) if args.log else work / "log.txt"
    log = open(log_path, "a")
    print(f"model: {model_dir}\nwork dir: {work}\nlog: {log_path}", file=sys.stderr, flush=True)

    python = ensure_llmcompressor_venv() if "llm-compressor" in tools else None
    calib_json = work / "calib_ids.json"
    if python:
        windows = calibration_windows(model_dir, args)
        calib_json.write_text(json.dumps(windows))

    rows: list[dict] = []
    dense_ppl = None
    if not args.no_dense:
        dense_ppl, note = evaluate(model_dir, args, log)
        rows.append({"method": "dense", "tool": "-", "perplexity": dense_ppl, "wall_s": None, "process_s": None,
                     "note": note})
        if any(METHODS[m][1] == "--structured" for m in methods):
            rows[-1]["parameters"] = parameter_count(model_dir)
            rows[-1]["decode_tokens_per_s"] = decode_speed(model_dir, log)
        print(f"dense: {dense_ppl}", file=sys.stderr, flush=True)
    for method in methods:
        for tool in tools:
            out_dir = work / f"{method.replace(':', '_')}-{tool}"
            if tool == "slmkit":
                row = run_slmkit(method, model_dir, out_dir, args, log)
            else:
                row = run_llmcompressor(method, python, model_dir, calib_json, out_dir, args, log)
            rows.append(row)
            print(f"{method} {tool}: ppl {row.get('perplexity')} wall {row.get('wall_s')} "
                  f"{row.get('note', '')}", file=sys.stderr, flush=True)
            if not args.keep:
                for d in (out_dir, out_dir.with_name(out_dir.name + "-dense")):
                    shutil.rmtree(d, ignore_errors=True)

    print_table(rows, dense_ppl)
    if args.json_out:
        setting = {"model": str(model_dir), "calib": args.calib, "calib_samples": args.calib_samples,
                   "calib_seq_len": args.calib_seq_len, "seed": args.seed, "eval_data": args.eval_data,
                   "max_length": args.max_length, "limit": args.limit}
        Path(args.json_out).write_text(json.dumps({"setting": setting, "rows": rows}, indent=2))
    if not args.keep:
        calib_json.unlink(missing_ok=True)
        if not args.work_dir:
            print(f"log kept: {log_path}", file=sys.stderr)


if __name__ == "__main__":
    main()
