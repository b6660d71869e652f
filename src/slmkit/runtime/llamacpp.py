"""Opening a GGUF with llama.cpp (llama-cpp-python, the optional extra `llamacpp`).

llama.cpp's extra CPU buffer types (AMX tiles, weight repacking) are much
faster where they work, but some VMs advertise AMX in CPUID and then fault on
the tile instructions: llama.cpp dies of SIGILL and takes the process with it.
So the first open on a machine is probed in a subprocess, and the answer is
cached per CPU and llama-cpp-python version.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

from slmkit.errors import SlmError

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
    root = Path(os.environ.get("SLMKIT_CACHE") or Path.home() / ".cache" / "slmkit")
    return root / "llamacpp-probe.json"


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
        from slmkit.models.loading import check_gguf

        reader = check_gguf(Path(gguf_path))
    key = f"{machine}|{_matrix_types(reader)}"
    if key not in known:
        probe = subprocess.run([sys.executable, "-c", PROBE, str(gguf_path)], capture_output=True)
        known[key] = probe.returncode != -signal.SIGILL
        if not known[key]:
            known[machine] = False
        cache.parent.mkdir(parents=True, exist_ok=True)
        temporary = cache.with_name(f".{cache.name}.tmp-{os.getpid()}")
        temporary.write_text(json.dumps(known, indent=1))
        os.replace(temporary, cache)
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
              n_batch: int = 512, reader=None):
    """A llama_cpp.Llama for the file, with the extra buffer types only where they work."""
    llama_cpp = llama_cpp_module()
    path = Path(path)
    if not path.is_file():
        raise SlmError(f"no such GGUF file: {path}")
    threads = n_threads or len(os.sched_getaffinity(0))
    context = (contextlib.nullcontext() if extra_buffer_types_work(path, reader)
               else _without_extra_buffer_types(llama_cpp))
    try:
        with context:
            return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_batch, n_threads=threads,
                                   logits_all=logits_all, verbose=False)
    except ValueError as exc:  # llama-cpp-python's "Failed to load model from file"
        raise SlmError(f"llama.cpp cannot load {path}: {exc}") from None


class LlamaCppModel:
    """A GGUF run by llama.cpp, in the shape slmkit's eval, bench and generation code expects.

    The tokenizer is transformers' reading of the same file: chat templates render in its
    sandbox and conversations are trimmed with the same code as on the torch backend
    (llama.cpp and transformers agree on the token ids; the export tests check it).
    """

    backend = "llamacpp"
    kind = "causal-lm"

    def __init__(self, path: Path, *, n_ctx: int | None = None, n_threads: int | None = None,
                 logits_all: bool = False):
        """`logits_all` keeps the logits of every position (scoring needs them; n_ctx x vocab floats)."""
        from types import SimpleNamespace

        import gguf
        from transformers import AutoTokenizer

        from slmkit.models.loading import check_gguf

        self.path, self.spec = path, str(path)
        reader = check_gguf(path)
        fields = reader.fields
        self.parameters = sum(int(np.prod(tensor.shape)) for tensor in reader.tensors)
        architecture = fields["general.architecture"].contents()
        context_field = fields.get(f"{architecture}.context_length")
        trained_context = int(context_field.contents()) if context_field else 2048
        self.llm = open_gguf(path, n_ctx=n_ctx or min(trained_context, 4096), n_threads=n_threads,
                             logits_all=logits_all, reader=reader)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        except (ValueError, KeyError, RuntimeError) as exc:
            raise SlmError(f"{path}: transformers cannot read this GGUF's tokenizer "
                           f"({str(exc).splitlines()[0]})") from None
        self.config = SimpleNamespace(max_position_embeddings=trained_context, vocab_size=self.llm.n_vocab(),
                                      model_type=architecture)
        file_type = fields.get("general.file_type")
        type_name = gguf.LlamaFileType(int(file_type.contents())).name if file_type else "unknown"
        self.file_type = type_name.removeprefix("MOSTLY_").removeprefix("ALL_").lower()

    def require(self, kind: str, task: str) -> None:
        if kind != "causal-lm":
            raise SlmError(f"{self.spec}: {task} needs a different kind of model than this GGUF's causal LM")

    @property
    def context(self) -> int:
        return self.llm.n_ctx()

    def logits(self, ids: list[int]) -> np.ndarray:
        """Next-token logits at every position of `ids`, from a fresh context (needs logits_all)."""
        if len(ids) > self.context:
            raise SlmError(f"{len(ids)} tokens do not fit llama.cpp's context of {self.context}")
        self.llm.reset()
        self.llm.eval(ids)
        return np.array(self.llm.scores[:len(ids)])
