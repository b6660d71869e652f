"""Calibration batches: windows of a user's text, or text the model writes itself.

Without data, the model samples its own text (data-free calibration, as in
LLM-QAT): the statistics then reflect what the model itself finds likely.
Sampling runs on the fastest engine the model has: llama.cpp, 32 sequences
per forward pass, when its weights came from a GGUF (as the packaged models
do), else torch, all rows in one batch; both decode through the runtime's
batched rows (`runtime.batched.sample_rows`). The sampled ids are cached per
model and settings, so a second quantize, or QAT after GPTQ, does not sample
them again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from slmkit import data
from slmkit.errors import SlmError
from slmkit.models.checkpoint import cache_dir, files_identity, read_manifest, write_atomic
from slmkit.runtime.batched import sample_rows
from slmkit.runtime.llamacpp import has_llama_cpp
from slmkit.runtime.open import as_runtime, open_model
from slmkit.runtime.sampling import row_generators
from slmkit.settings import DATA_FREE_SAMPLES, DATA_FREE_SEQ_LEN

# Bump when the sampling itself changes, so no cached ids from an older sampler are reused.
SAMPLER_VERSION = 1
LLAMA_CPP_WAVE = 32  # sequences per llama.cpp batch: its context holds wave x seq_len tokens of KV cache


@dataclass
class Calibration:
    """Which text calibrates a method that reads activations (Wanda, SparseGPT, GPTQ, AWQ, structured).

    Args:
        data: a text file (anything `slm eval` reads); None: text the model samples itself (data-free).
        samples: sequences; seq_len: tokens per sequence (None: 128 x 512 windows of data, or
            DATA_FREE_SAMPLES x DATA_FREE_SEQ_LEN sampled: the smallest sample measured to calibrate GPTQ as
            well as 128 x 512, see benchmarks/datafree_calibration.py; a method with its own
            `calibration_shape`, as QAT, takes that instead); seed: picks the windows or seeds the sampling.
        cache: keep sampled text in the cache (per model and settings) and reuse it.
    """

    data: str | Path | None = None
    samples: int | None = None
    seq_len: int | None = None
    seed: int = 0
    cache: bool = True
    _made: dict = field(default_factory=dict, repr=False, compare=False)  # model spec -> its ids
    _asked: tuple = field(init=False, repr=False, compare=False)  # (samples, seq_len) as given, None: default

    def __post_init__(self):
        self._asked = (self.samples, self.seq_len)
        if self.samples is None:
            self.samples = 128 if self.data else DATA_FREE_SAMPLES
        if self.seq_len is None:
            self.seq_len = 512 if self.data else DATA_FREE_SEQ_LEN

    @classmethod
    def from_settings(cls, settings, data: str | Path | None = None) -> Calibration:
        """The calibration a stage's CalibrationSettings (slmkit.settings) ask for; `data`: the text when their
        `calib` is unset (a recipe's --data)."""
        return cls(settings.calib or data, settings.calib_samples, settings.calib_seq_len, settings.seed,
                   cache=settings.calib_cache == "on")

    def for_method(self, config) -> Calibration:
        """This calibration, or a copy taking the method's own `calibration_shape` (QATConfig's) for the
        sequence count or length it was not given."""
        shape = getattr(config, "calibration_shape", None)
        samples, seq_len = self._asked
        if shape is None or (samples is not None and seq_len is not None):
            return self
        return Calibration(self.data, shape[0] if samples is None else samples,
                           shape[1] if seq_len is None else seq_len, self.seed, self.cache)

    def record(self) -> dict:
        """How a checkpoint was calibrated, for its manifest."""
        return {"calib": str(self.data) if self.data else "self-generated", "calib_samples": self.samples,
                "calib_seq_len": self.seq_len}

    def ids(self, lm, progress=None):
        """[samples, seq_len] token ids for `lm`, made once per model spec (sampling them from the model takes a
        while; a model pruned in between keeps the ids its original wrote, as data-free calibration wants).
        `progress(tokens, total)` while the model samples them."""
        if lm.spec not in self._made:
            self._made[lm.spec] = calibration_ids(lm, self.data, samples=self.samples, seq_len=self.seq_len,
                                                  seed=self.seed, cache=self.cache, progress=progress)
        return self._made[lm.spec]


def calibration_ids(lm, path: str | Path | None, *, samples: int = 128, seq_len: int = 512, seed: int = 0,
                    cache: bool = True, progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """[samples, seq_len] token ids: random windows of the file, or model samples when path is None (kept in
    the cache unless `cache` is False; `progress(tokens, total)` while they are sampled)."""
    if samples < 1 or seq_len < 2:
        raise SlmError(f"--calib-samples must be >= 1 and --calib-seq-len >= 2 (got {samples}, {seq_len})")
    if lm.tokenizer is None:
        raise SlmError(f"{lm.spec}: has no tokenizer; calibration needs one")
    if path is None:
        return self_generated(lm, samples, seq_len, seed, cache=cache, progress=progress)
    generator = torch.Generator().manual_seed(seed)
    ids = torch.tensor(lm.tokenizer(data.load_text(path)).input_ids, dtype=torch.long)
    # Distinct non-overlapping windows, so no calibration token is counted twice.
    slots = len(ids) // seq_len
    if slots < samples:
        raise SlmError(f"{path}: {len(ids)} tokens is too short for {samples} calibration samples of "
                       f"{seq_len} tokens; pass a longer file or lower --calib-samples/--calib-seq-len")
    chosen = torch.randperm(slots, generator=generator)[:samples]
    return torch.stack([ids[slot * seq_len:(slot + 1) * seq_len] for slot in chosen.tolist()])


def source_gguf(lm) -> Path | None:
    """The GGUF file the model's weights came from: the file itself, or the one a packaged alias was
    converted from (the conversion's manifest names it)."""
    path = getattr(lm, "path", None)
    if path is None:
        return None
    if Path(path).suffix == ".gguf":
        return Path(path)
    manifest = read_manifest(path) if Path(path).is_dir() else None
    if manifest and manifest.get("stage") == "import" and (manifest.get("config") or {}).get("source") == "gguf":
        parent = Path(manifest.get("parent") or "")
        return parent if parent.suffix == ".gguf" and parent.is_file() else None
    return None


def sampling_engine(lm) -> str:
    """llamacpp when the model came from a GGUF and llama-cpp-python is installed, else torch."""
    return _engine_for(source_gguf(lm))


def _engine_for(gguf: Path | None) -> str:
    return "llamacpp" if gguf is not None and has_llama_cpp() else "torch"


def data_free_prefixes(lm, samples: int, generator: torch.Generator) -> torch.Tensor:
    """[samples, 2] (or [samples, 1] without BOS/EOS): BOS, then a random first token per row (as LLM-QAT
    diversifies its samples)."""
    tokenizer = lm.tokenizer
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    first = torch.randint(0, lm.config.get_text_config().vocab_size, (samples, 1), generator=generator)
    return first if start is None else torch.cat([torch.full((samples, 1), start), first], dim=1)


def self_generated(lm, samples: int, seq_len: int, seed: int = 0, *, engine: str | None = None, cache: bool = True,
                   progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """[samples, seq_len] ids the model samples itself at temperature 1 after `data_free_prefixes`.
    `engine`: llamacpp | torch (default `sampling_engine`)."""
    if lm.kind != "causal-lm":
        raise SlmError(f"{lm.spec}: data-free calibration needs a causal LM; pass --calib PATH")
    gguf = source_gguf(lm)
    engine = engine or _engine_for(gguf)
    if engine == "llamacpp" and gguf is None:
        raise SlmError(f"{lm.spec}: sampling on llama.cpp needs the GGUF its weights came from")
    source = gguf if engine == "llamacpp" else getattr(lm, "path", None)
    cached = _cache_path(source, engine, samples, seq_len, seed) if cache and source is not None else None
    if cached is not None and cached.exists():
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            ids = load_file(cached).get("ids")
        except (OSError, SafetensorError):  # an unreadable entry is sampled again
            ids = None
        if isinstance(ids, torch.Tensor) and ids.shape == (samples, seq_len):
            return ids
    generator = torch.Generator().manual_seed(seed)
    prefix = data_free_prefixes(lm, samples, generator).tolist()
    generators = row_generators(generator, samples)
    eos = lm.tokenizer.eos_token_id
    banned = () if eos is None else (eos,)  # no end of text: every row runs the full length
    if engine == "llamacpp":
        model, wave = open_model(str(gguf), backend="llamacpp", n_ctx=seq_len), LLAMA_CPP_WAVE
    else:
        model, wave = as_runtime(lm), None  # all rows in one batch
    ids = sample_rows(model, prefix, seq_len, generators, banned=banned, wave=wave, progress=progress)
    if cached is not None:
        _keep(cached, ids)
    return ids


def _cache_path(source: Path, engine: str, samples: int, seq_len: int, seed: int) -> Path:
    """Where these settings' ids for the weights in `source` (a file or directory) are kept."""
    source = Path(source).resolve()
    key = json.dumps([SAMPLER_VERSION, engine, str(source), files_identity(source), samples, seq_len, seed])
    return cache_dir() / "calibration" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.safetensors"


def _keep(path: Path, ids: torch.Tensor) -> None:
    from safetensors.torch import save

    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, save({"ids": ids.contiguous()}))
