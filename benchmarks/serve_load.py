"""Load on `slm serve`, and on llama-cpp-python's own server for the same GGUF, over loopback.

Runs, one server at a time, each alone on the machine:

  1. batched: `slm serve smollm2-135m-instruct` (its defaults), --clients concurrent clients x --requests
     chat requests each, streamed, --max-tokens tokens out at most;
  2. one at a time: the same server with --max-concurrency 1, --clients x --serial-requests (fewer, so the
     run stays bounded in time: throughput is a rate);
  3. the GGUF the alias ships, on llama.cpp: `slm serve FILE` and `python -m llama_cpp.server --model FILE`
     (same file, same --threads, same n_ctx), --clients x --gguf-requests each;
  4. overload: `slm serve` with --overload-queue waiting rows allowed and 10x as many clients as
     --max-concurrency + queue, one request each: only 200s and 429s allowed, every accepted request must end
     with its finish_reason, and the server's memory (VmRSS) is sampled during the burst.

Every client sends the next request when its answer ends. Per run: errors, p50/p99 latency, p50/p99 time to
first token, completion tokens (the server's usage) and total tokens/s (all completion tokens over the wall
time of the run). Prints the comparisons the issue sets (batching above one at a time; slmkit >= 0.9x
llama_cpp.server on the GGUF) and exits 1 when a check fails. llama_cpp.server needs llama-cpp-python's
`server` extra; it is installed into the project venv when missing (four small packages, no rebuild).

    .venv/bin/python benchmarks/serve_load.py
    .venv/bin/python benchmarks/serve_load.py --clients 4 --requests 2 --serial-requests 1 --gguf-requests 1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
PROJECT = BENCH_DIR.parent
PYTHON = PROJECT / ".venv" / "bin" / "python"
SLM = PROJECT / ".venv" / "bin" / "slm"
TOPICS = ["a lighthouse keeper", "a robot gardener", "the first city on Mars", "a lost violin", "a desert train",
          "a friendly dragon", "an old bookshop", "a storm at sea", "a chess tournament", "a mountain village",
          "a submarine crew", "a clockmaker", "a winter festival", "a talking cat", "a detective in Paris",
          "a small satellite"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A server in a subprocess, up once `ready` answers 200; its VmRSS sampled while `sampling`."""

    def __init__(self, command: list, port: int, ready: str, log: Path):
        self.url, self.log = f"http://127.0.0.1:{port}", open(log, "w")
        self.process = subprocess.Popen([str(part) for part in command], stdout=self.log, stderr=subprocess.STDOUT)
        self.rss: list[int] = []
        self.rss_at_start = 0
        import httpx2 as httpx

        deadline = time.monotonic() + 600
        while True:
            if self.process.poll() is not None:
                sys.exit(f"server exited ({self.process.returncode}); see {log}")
            try:
                if httpx.get(self.url + ready, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                sys.exit(f"server not up after 10 minutes; see {log}")
            time.sleep(0.5)

    def rss_now(self) -> int:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1]) * 1024

    def sample_memory(self, stop: threading.Event) -> None:
        while not stop.wait(0.2):
            self.rss.append(self.rss_now())

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


async def one_request(client, url: str, model: str, number: int, max_tokens: int, usage: bool) -> dict:
    """A streamed chat request: status, latency, time to first token, completion tokens, finish_reason."""
    body = {"model": model, "messages": [{"role": "user", "content": f"Write a long story about "
                                                                     f"{TOPICS[number % len(TOPICS)]}."}],
            "max_tokens": max_tokens, "temperature": 0.7, "seed": number, "stream": True}
    if usage:
        body["stream_options"] = {"include_usage": True}
    start, first, tokens, reason, pieces = time.monotonic(), None, None, None, 0
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            await response.aread()
            return {"status": response.status_code}
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            for choice in chunk.get("choices", []):
                if choice["delta"].get("content"):
                    pieces += 1
                    first = first or time.monotonic()
                reason = choice.get("finish_reason") or reason
    end = time.monotonic()
    return {"status": 200, "latency": end - start, "ttft": (first or end) - start, "reason": reason,
            "tokens": tokens if tokens is not None else pieces}


async def load(url: str, model: str, clients: int, requests: int, max_tokens: int, usage: bool) -> dict:
    import httpx2 as httpx

    results = []
    limits = httpx.Limits(max_connections=clients + 8, max_keepalive_connections=clients + 8)
    async with httpx.AsyncClient(timeout=httpx.Timeout(900), limits=limits) as client:
        async def client_loop(index: int):
            for turn in range(requests):
                try:
                    results.append(await one_request(client, url, model, index * requests + turn, max_tokens, usage))
                except httpx.HTTPError as exc:
                    results.append({"status": f"error: {type(exc).__name__}"})

        start = time.monotonic()
        await asyncio.gather(*(client_loop(index) for index in range(clients)))
        wall = time.monotonic() - start
    return summarize(results, wall)


def summarize(results: list[dict], wall: float) -> dict:
    ok = [result for result in results if result["status"] == 200]

    def percentile(values, share):
        values = sorted(values)
        return values[min(len(values) - 1, int(share * len(values)))] if values else float("nan")

    statuses = {}
    for result in results:
        statuses[str(result["status"])] = statuses.get(str(result["status"]), 0) + 1
    tokens = sum(result["tokens"] for result in ok)
    return {"requests": len(results), "statuses": statuses, "errors": len(results) - len(ok), "wall_s": wall,
            "tokens": tokens, "tokens_per_s": tokens / wall if wall else 0.0,
            "unfinished": sum(result["reason"] is None for result in ok),
            "p50_latency_s": percentile([r["latency"] for r in ok], 0.5),
            "p99_latency_s": percentile([r["latency"] for r in ok], 0.99),
            "p50_ttft_s": percentile([r["ttft"] for r in ok], 0.5),
            "p99_ttft_s": percentile([r["ttft"] for r in ok], 0.99)}


def measured(label: str, server: Server, model: str, clients: int, requests: int, max_tokens: int,
             usage: bool = True) -> dict:
    asyncio.run(load(server.url, model, 1, 1, 4, usage))  # warm-up: the weights paged in, buffers allocated
    server.rss_at_start = server.rss_now()
    stop = threading.Event()
    sampler = threading.Thread(target=server.sample_memory, args=(stop,), daemon=True)
    sampler.start()
    try:
        result = asyncio.run(load(server.url, model, clients, requests, max_tokens, usage))
    finally:
        stop.set()
        sampler.join()
    result["rss_start_mib"] = server.rss_at_start / 2**20
    result["rss_peak_mib"] = max(server.rss or [server.rss_at_start]) / 2**20
    print(f"{label:<34} {result['requests']:>4} req  {json.dumps(result['statuses'])}  "
          f"{result['tokens_per_s']:7.1f} tok/s  latency p50 {result['p50_latency_s']:6.2f} s p99 "
          f"{result['p99_latency_s']:6.2f} s  ttft p50 {result['p50_ttft_s']:5.2f} s p99 {result['p99_ttft_s']:5.2f} s"
          f"  rss {result['rss_start_mib']:.0f} -> {result['rss_peak_mib']:.0f} MiB", flush=True)
    return result


def packaged_gguf(alias: str) -> Path:
    command = [str(PYTHON), "-c", "import slmkit.models.catalog as c; "
               f"print(c.packaged_path(c.lookup({alias!r})))"]
    return Path(subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])


def ensure_llama_cpp_server() -> None:
    check = subprocess.run([str(PYTHON), "-c", "import llama_cpp.server.app"], capture_output=True)
    if check.returncode != 0:
        version = subprocess.run([str(PYTHON), "-c", "import llama_cpp; print(llama_cpp.__version__)"],
                                 check=True, capture_output=True, text=True).stdout.strip()
        print(f"note: installing llama-cpp-python[server]=={version}'s extras into the project venv", flush=True)
        subprocess.run([str(PYTHON), "-m", "pip", "install", "--quiet", f"llama-cpp-python[server]=={version}"],
                       check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=8, help="per client, batched run (default 8)")
    parser.add_argument("--serial-requests", type=int, default=2, help="per client, --max-concurrency 1 run")
    parser.add_argument("--gguf-requests", type=int, default=2, help="per client, each GGUF server")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--ctx", type=int, default=1024, help="tokens per request on both GGUF servers")
    parser.add_argument("--overload-queue", type=int, default=8)
    parser.add_argument("--steps", default="1,2,3,4")
    parser.add_argument("--work", type=Path, default=Path("/tmp/slmkit-serve-load"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    steps, results, failures = set(args.steps.split(",")), {}, []
    args.work.mkdir(parents=True, exist_ok=True)
    environment_threads = {"OMP_NUM_THREADS": str(args.threads)}
    os.environ.update(environment_threads)
    print(f"{args.clients} clients, {args.max_tokens} tokens out at most, {args.threads} threads", flush=True)

    def slm_serve(spec: str, label: str, *flags) -> Server:
        port = free_port()
        return Server([SLM, "serve", spec, "--port", port, *flags], port, "/health", args.work / f"{label}.log")

    if "1" in steps or "2" in steps:
        runs = [("1", "batched", (), args.requests), ("2", "one at a time", ("--max-concurrency", "1"),
                                                    args.serial_requests)]
        for step, label, flags, requests in runs:
            if step not in steps:
                continue
            server = slm_serve(args.model, label.replace(" ", "-"), *flags)
            try:
                results[label] = measured(f"slm serve ({label})", server, args.model, args.clients, requests,
                                          args.max_tokens)
            finally:
                server.stop()
        if {"batched", "one at a time"} <= set(results):
            ratio = results["batched"]["tokens_per_s"] / results["one at a time"]["tokens_per_s"]
            print(f"batching: {ratio:.2f}x the tokens/s of one at a time (target > 1: "
                  f"{'met' if ratio > 1 else 'NOT met'})")
            if ratio <= 1:
                failures.append("batching")
    if "3" in steps:
        gguf = packaged_gguf(args.model)
        ensure_llama_cpp_server()
        server = slm_serve(str(gguf), "gguf-slm", "--ctx", str(args.ctx))
        try:
            results["gguf slm serve"] = measured("slm serve (GGUF, llama.cpp)", server, gguf.name, args.clients,
                                                 args.gguf_requests, args.max_tokens)
        finally:
            server.stop()
        port = free_port()
        # --interrupt_requests False: by default a new request cuts the running stream short (its issue #867),
        # which would count as its throughput the tokens of answers nobody finished.
        server = Server([PYTHON, "-m", "llama_cpp.server", "--model", gguf, "--port", port, "--n_threads",
                         args.threads, "--n_ctx", args.ctx, "--interrupt_requests", "False"], port, "/v1/models",
                        args.work / "llama-cpp-server.log")
        try:
            results["gguf llama_cpp.server"] = measured("llama_cpp.server (GGUF)", server, gguf.name, args.clients,
                                                        args.gguf_requests, args.max_tokens, usage=False)
        finally:
            server.stop()
        for label in ("gguf slm serve", "gguf llama_cpp.server"):
            if results[label]["unfinished"] or results[label]["errors"]:
                print(f"{label}: {results[label]['unfinished']} answers cut short, {results[label]['errors']} errors")
                failures.append(label)
        ratio = results["gguf slm serve"]["tokens_per_s"] / results["gguf llama_cpp.server"]["tokens_per_s"]
        print(f"GGUF: slm serve at {ratio:.2f}x llama_cpp.server's tokens/s (target >= 0.9: "
              f"{'met' if ratio >= 0.9 else 'NOT met'}); llama_cpp.server's tokens are its streamed chunks "
              "(one token each), slm serve's its usage counts")
        if ratio < 0.9:
            failures.append("gguf")
    if "4" in steps:
        server = slm_serve(args.model, "overload", "--max-queue", str(args.overload_queue))
        try:
            clients = 10 * (8 + args.overload_queue)
            result = measured(f"overload: {clients} clients at once", server, args.model, clients, 1, 32)
        finally:
            server.stop()
        results["overload"] = result
        only_expected = set(result["statuses"]) <= {"200", "429"}
        growth = result["rss_peak_mib"] - result["rss_start_mib"]
        print(f"overload: statuses {result['statuses']}: only 200 and 429 {'met' if only_expected else 'NOT met'}; "
              f"accepted requests unfinished: {result['unfinished']}; memory {result['rss_start_mib']:.0f} -> "
              f"{result['rss_peak_mib']:.0f} MiB (+{growth:.0f})")
        if not only_expected or result["unfinished"]:
            failures.append("overload")
    if args.json:
        print(json.dumps(results, indent=1))
    if failures:
        sys.exit(f"failed: {', '.join(failures)}")


if __name__ == "__main__":
    main()
