"""What the benchmark scripts share: the peer venv and running slmkit itself.

The peer venv (benchmarks/.venv-peers) holds the tools slmkit is compared with.

Peers (lm-evaluation-harness, llama-cpp-python, ...) live in their own venv so
their pins never touch slmkit's. Bench scripts call
`ensure_peer_venv(["torch==2.13.0", "lm-eval"])` and run the returned python in
a subprocess. Packages are installed one at a time in the order given, so list
torch first: a bare `torch` requirement pulled in by a peer would fetch the
multi-GB CUDA build.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

PEER_VENV = Path(__file__).resolve().parent / ".venv-peers"
PROJECT_VENV = Path(__file__).resolve().parent.parent / ".venv" / "bin"


def alias_checkpoint_dir(alias: str) -> str:
    """The float safetensors directory slmkit loads for an alias (converted from the GGUF once)."""
    command = [str(PROJECT_VENV / "python"), "-c", f"import slmkit.models as m; print(m.resolve({alias!r}))"]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]


def slm_eval(model: str, data: Path, limit: int | None, *options: str) -> dict:
    """`slm eval MODEL --data DATA [--limit N] OPTIONS --json`, parsed; exits with its stderr if it fails."""
    command = [str(PROJECT_VENV / "slm"), "eval", model, "--data", str(data), *options, "--json"]
    if limit is not None:
        command += ["--limit", str(limit)]
    print("$", " ".join(command), flush=True)
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"slm eval failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return json.loads(result.stdout)


def _distribution_name(requirement: str) -> str:
    """"torch==2.13.0" -> "torch", "lm-eval[hf]" -> "lm-eval"."""
    return re.split(r"[\s\[<>=!~;@]", requirement.strip(), maxsplit=1)[0]


def _installed(python: Path, requirement: str) -> bool:
    """Whether a distribution of that name is installed (a pinned version is not checked)."""
    name = _distribution_name(requirement)
    check = f"import importlib.metadata as m; m.distribution({name!r})"
    return subprocess.run([str(python), "-c", check], capture_output=True).returncode == 0


def ensure_peer_venv(packages: list[str]) -> Path:
    """The peer venv's python, with each of `packages` (pip requirements) installed if missing."""
    python = PEER_VENV / "bin" / "python"
    if not python.exists():
        print(f"note: creating the peer venv {PEER_VENV}", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
    for requirement in packages:
        if not _installed(python, requirement):
            print(f"note: installing {requirement} into {PEER_VENV} (this can take minutes)",
                  file=sys.stderr, flush=True)
            subprocess.run([str(python), "-m", "pip", "install", "-q", requirement], check=True)
    return python
