"""llama.cpp's own command-line tools (llama-imatrix, llama-quantize, llama-perplexity) for benchmarks that compare
against them, built once from the llama.cpp source the installed llama-cpp-python vendors (its sdist from PyPI,
the same llama.cpp version the bindings run), in benchmarks/build/llama-tools/.

    .venv/bin/python benchmarks/llama_tools.py        # build (minutes on 2 cores) and print the paths
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from importlib.metadata import version
from pathlib import Path

BUILD_ROOT = Path(__file__).resolve().parent / "build" / "llama-tools"
TOOLS = ("llama-imatrix", "llama-quantize", "llama-perplexity")


def source_dir() -> Path:
    """The vendored llama.cpp of the installed llama-cpp-python release, fetched and unpacked once."""
    release = version("llama_cpp_python")
    unpacked = BUILD_ROOT / f"llama_cpp_python-{release}"
    if not unpacked.is_dir():
        BUILD_ROOT.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                        f"llama-cpp-python=={release}", "-d", str(BUILD_ROOT)], check=True)
        with tarfile.open(BUILD_ROOT / f"llama_cpp_python-{release}.tar.gz") as archive:
            archive.extractall(BUILD_ROOT, filter="data")
    return unpacked / "vendor" / "llama.cpp"


def ensure_tools() -> dict[str, Path]:
    """Each tool's executable, built on first use."""
    build = BUILD_ROOT / "build"
    paths = {tool: build / "bin" / tool for tool in TOOLS}
    if all(path.is_file() for path in paths.values()):
        return paths
    source = source_dir()
    subprocess.run(["cmake", "-S", str(source), "-B", str(build), "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release",
                    "-DLLAMA_CURL=OFF", "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_BUILD_TESTS=OFF",
                    "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", str(build), "--target", *TOOLS, "-j", str(os.cpu_count() or 2)], check=True,
                   stdout=subprocess.DEVNULL)
    return paths


if __name__ == "__main__":
    for name, path in ensure_tools().items():
        print(f"{name}: {path}")
