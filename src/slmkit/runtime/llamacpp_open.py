"""Opening a GGUF with llama.cpp (llama-cpp-python, the optional extra `llamacpp`): the module, the file, and
llama.cpp's log while it opens.

llama.cpp's extra CPU buffer types (AMX tiles, weight repacking) are much
faster where they work, but some VMs advertise AMX in CPUID and then fault on
the tile instructions: llama.cpp dies of SIGILL and takes the process with it.
So the first open on a machine is probed in a subprocess, and the answer is
cached per CPU and llama-cpp-python version.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import platform
import re
import signal
import subprocess
import sys
from pathlib import Path

from slmkit.errors import SlmError
from slmkit.models.checkpoint import cache_dir, write_atomic
from slmkit.models.validate import check_gguf

PROBE = """
import sys, llama_cpp
llm = llama_cpp.Llama(sys.argv[1], n_ctx=128, n_batch=64, n_threads=1, verbose=False)
llm.eval((llm.tokenize(b" the quick brown fox jumps over the lazy dog" * 8))[:64])
"""


def llama_cpp_module():
    try:
        import llama_cpp
    except ImportError:
        raise SlmError("running a .gguf with llama.cpp needs llama-cpp-python: pip install 'slmkit[llamacpp]' "
                       "(or pass --backend torch)") from None
    return llama_cpp


def _cache_file() -> Path:
    return cache_dir() / "llamacpp-probe.json"


def _machine_key(version: str) -> str:
    cpu = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else platform.processor()
    flags = next((line for line in cpu.splitlines() if line.startswith("flags")), cpu)
    return f"{version}-{platform.machine()}-{hashlib.sha256(flags.encode()).hexdigest()[:16]}"


def _matrix_types(reader) -> str:
    return ",".join(sorted({tensor.tensor_type.name for tensor in reader.tensors if len(tensor.shape) > 1}))


def extra_buffer_types_work(gguf_path: str | Path, reader=None) -> bool:
    """Whether llama.cpp's extra CPU buffer types run here (SLM_LLAMACPP_EXTRA_BUFTS=0/1 overrides).

    Which kernels run depends on the weight types, so a success is remembered per set of
    types; one failure turns them off on this machine for good (they are only a speed-up).
    `reader`: the file's GGUFReader when the caller has one (parsing a GGUF takes seconds).
    """
    override = os.environ.get("SLM_LLAMACPP_EXTRA_BUFTS")
    if override in ("0", "1"):
        return override == "1"
    machine = _machine_key(llama_cpp_module().__version__)
    cache = _cache_file()
    known = json.loads(cache.read_text()) if cache.exists() else {}
    if known.get(machine) is False:
        return False
    if reader is None:
        reader = check_gguf(Path(gguf_path))
    key = f"{machine}|{_matrix_types(reader)}"
    if key not in known:
        probe = subprocess.run([sys.executable, "-c", PROBE, str(gguf_path)], capture_output=True)
        if probe.returncode not in (0, -signal.SIGILL):
            return True  # the probe could not run this file at all: nothing learnt about the machine, nothing kept
        known[key] = probe.returncode == 0
        if not known[key]:
            known[machine] = False
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(cache, json.dumps(known, indent=1))
    return known[key]


@contextlib.contextmanager
def _without_extra_buffer_types(llama_cpp):
    # Llama() takes no argument for llama_model_params.use_extra_bufts; it starts from
    # llama_model_default_params(), so that function is wrapped while the model loads.
    original = llama_cpp.llama_cpp.llama_model_default_params

    def default_params():
        params = original()
        params.use_extra_bufts = False
        return params

    llama_cpp.llama_cpp.llama_model_default_params = default_params
    try:
        yield
    finally:
        llama_cpp.llama_cpp.llama_model_default_params = original


def open_gguf(path: str | Path, *, n_ctx: int = 2048, n_threads: int | None = None, logits_all: bool = False,
              n_batch: int = 512, reader=None, **settings):
    """A llama_cpp.Llama for the file, with the extra buffer types only where they work (`settings`: more
    of Llama's arguments)."""
    llama_cpp = llama_cpp_module()
    path = Path(path)
    if not path.is_file():
        raise SlmError(f"no such GGUF file: {path}")
    threads = n_threads or len(os.sched_getaffinity(0))
    context = (contextlib.nullcontext() if extra_buffer_types_work(path, reader)
               else _without_extra_buffer_types(llama_cpp))
    log = LlamaLog(llama_cpp)
    try:
        with context, log:
            return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_batch, n_threads=threads,
                                   logits_all=logits_all, verbose=False, **settings)
    except Exception as exc:  # "Failed to load model from file" (its log says why), or its chat-template Jinja
        reason = f" ({log.first_error()})" if log.first_error() else ""
        raise SlmError(f"llama.cpp cannot load {path}: {exc}{reason}") from None


class LlamaLog:
    """llama.cpp's log while a model opens, kept instead of printed: with verbose=False llama-cpp-python
    hides it, and with it the reason a file is refused."""

    ERROR, CONTINUED = 4, 5  # ggml_log_level (GGML_LOG_LEVEL_ERROR is 4 since ggml added DEBUG below INFO)

    def __init__(self, llama_cpp):
        self.llama_cpp, self.errors = llama_cpp, []

        @llama_cpp.llama_log_callback
        def keep(level: int, text: bytes, user_data) -> None:
            if level == self.ERROR or (level == self.CONTINUED and self.errors):
                self.errors.append(text.decode("utf-8", "replace"))

        self.callback = keep  # referenced for as long as llama.cpp may call it

    def __enter__(self):
        self.llama_cpp.llama_log_set(self.callback, ctypes.c_void_p(0))
        return self

    def __exit__(self, *exc_info) -> None:
        from llama_cpp import _logger  # llama-cpp-python's own callback, put back

        self.llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))

    def first_error(self) -> str:
        """The first error line, the cause (later ones say only that loading failed), less the name of the
        C function that logged it."""
        lines = [line.strip() for line in "".join(self.errors).splitlines() if line.strip()]
        return re.sub(r"^\w+: ", "", lines[0]) if lines else ""
