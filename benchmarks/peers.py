"""The peer venv (benchmarks/.venv-peers) that holds the tools slmkit is compared with.

Peers (lm-evaluation-harness, llama-cpp-python, ...) live in their own venv so
their pins never touch slmkit's. Bench scripts call
`ensure_peer_venv(["torch==2.13.0", "lm-eval"])` and run the returned python in
a subprocess. Packages are installed one at a time in the order given, so list
torch first: a bare `torch` requirement pulled in by a peer would fetch the
multi-GB CUDA build.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

PEER_VENV = Path(__file__).resolve().parent / ".venv-peers"


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
