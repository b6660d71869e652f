"""`slmkit.load(spec)`: one entry point for every place a model comes from.

A spec is a catalog alias, a local Hugging Face directory, a `.gguf` file or a
hub id. Loading is safe by default: safetensors only (pickle weights need
`allow_pickle`), and repositories that ship their own Python code need
`trust_remote_code`.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from slmkit.errors import ModelLoadError, UnsafeModelError, first_line, json_problem
from slmkit.models import catalog
from slmkit.models.checkpoint import cache_dir, read_manifest, save
from slmkit.models.devices import resolve_device, resolve_dtype
from slmkit.models.kinds import KIND_NAMES, check_kind, infer_kind, require_kind
from slmkit.models.validate import validate_gguf
from slmkit.models.validate_checkpoint import check_against_weights, check_config_fields, weight_headers

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# Files a model directory needs besides weights; what we fetch from the hub.
HUB_FILE_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "*.jinja"]
ADAPTER_CONFIG = "adapter_config.json"  # a peft (LoRA) adapter directory
CLASSIFIER_HEADS = ("classifier.", "pre_classifier.", "score.")  # sequence-classification heads' weight names
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "spiece.model", "tokenizer.model")
ONNX_MODEL_FILE = "model.onnx"  # what `slm export --format onnx` writes into its directory
PTE_MODEL_FILE = "model.pte"  # what `slm export --format executorch` writes into its directory
PTE_ONLY = ("{path}: an ExecuTorch export; `slm eval`, `slm bench` and `slm generate` run it with ExecuTorch, "
            "everything else needs the checkpoint it was exported from")
ONNX_ONLY = ("{path}: an ONNX export; `slm eval` and `slm bench` run it with onnxruntime, everything else needs "
             "the torch checkpoint it was exported from")


@dataclass
class LoadedModel:
    """A transformers model and its tokenizer, with what we know about where it came from.

    What compression and export work on; `slmkit.runtime.open_model` gives the runtime operations
    (scoring, generation, embeddings) on top of it.
    """

    model: object
    tokenizer: object | None
    spec: str  # what the user asked for
    kind: str  # one of models.kinds.KINDS
    path: Path | None  # the local directory or .gguf file the weights came from

    @property
    def config(self):
        return self.model.config

    @property
    def device(self):
        return next(self.model.parameters()).device

    def require(self, kind: str, task: str) -> None:
        """One-line refusal when a task gets the wrong kind of model."""
        require_kind(self.spec, kind, self.kind, self.config.model_type, task)

    def stop_tokens(self) -> set[int]:
        """The end-of-generation tokens: the model's generation config (which may list several) and the tokenizer's."""
        return end_tokens(getattr(getattr(self.model, "generation_config", None), "eos_token_id", None), self.tokenizer)


def end_tokens(configured: int | list[int] | None, tokenizer) -> set[int]:
    """The tokens that end an answer: a config's eos_token_id (one or a list) and the tokenizer's."""
    stops = set(configured if isinstance(configured, list) else [configured])
    stops.add(tokenizer.eos_token_id)
    return {token for token in stops if token is not None}


WEB_MANIFEST = "slm-web.json"  # what marks a folder from `slm export --format web`


def web_folder_model(spec: str) -> str:
    """A folder from `slm export --format web` stands for the model its page runs (the .gguf file, or the ONNX
    directory), which slm's runtimes run natively; any other spec is itself."""
    path = Path(spec).expanduser()
    if not (path / WEB_MANIFEST).is_file():
        return spec
    try:
        files = json.loads((path / WEB_MANIFEST).read_text())["model_files"]
        paths = [file["path"] for file in files]
    except (OSError, ValueError, KeyError, TypeError):
        raise ModelLoadError(f"{path / WEB_MANIFEST}: not a web export's manifest (no model_files list)") from None
    if len(paths) > 1 and paths[0].endswith(".gguf"):
        raise ModelLoadError(f"{spec}: its GGUF is split into {len(paths)} files for the browser; run the .gguf it "
                             "was exported from")
    model = (path / paths[0]).resolve() if paths else None
    if model is None or path.resolve() not in model.parents:
        raise ModelLoadError(f"{path / WEB_MANIFEST}: model_files should name a file inside the folder")
    return str(model if model.suffix == ".gguf" else model.parent)


def export_file(spec: str | Path, filename: str, what: str) -> Path:
    """The file an export directory holds (`filename`), or the file itself when given directly."""
    path = Path(spec).expanduser()
    file = path if path.suffix == Path(filename).suffix else path / filename
    if not file.is_file():
        raise ModelLoadError(f"{spec}: no such {what} ({file})")
    return file


def is_pte(spec: str | Path) -> bool:
    """A .pte file, or a directory with model.pte in it."""
    path = Path(spec).expanduser()
    return path.suffix == ".pte" or (path / PTE_MODEL_FILE).is_file()


def is_onnx(spec: str | Path) -> bool:
    """A .onnx file, or a directory with model.onnx in it."""
    path = Path(spec).expanduser()
    return path.suffix == ".onnx" or (path / ONNX_MODEL_FILE).is_file()


def load(
    spec: str = catalog.DEFAULT_MODEL,
    *,
    kind: str | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    dtype: str | None = "auto",
    device: str | None = "cpu",
    labels: tuple[str, ...] | None = None,
) -> LoadedModel:
    """Load a model and its tokenizer from an alias, directory, .gguf file or hub id.

    `kind` forces the head: "causal-lm", "encoder", "seq2seq" or "classifier";
    by default it follows the checkpoint's `architectures`. `device`: cpu, cuda, cuda:N, mps or auto
    (CUDA when present); `dtype`: float32, bfloat16, float16 or auto (float32 on the CPU, else bfloat16
    where the GPU has it). `labels` (with kind "classifier") gives the model a new, untrained classification
    head over those class names. A LoRA adapter directory (`slm finetune --lora`) opens on its base with
    the adapter merged in.
    Example: `lm = slmkit.models.load("smollm2-135m-instruct"); lm.model(**lm.tokenizer("hi", return_tensors="pt"))`.
    """
    check_kind(kind)
    target = resolve_device(device)
    dtype = resolve_dtype(dtype, target)
    path = resolve(spec, allow_pickle=allow_pickle)
    if path.is_file():
        if labels is not None:
            raise ModelLoadError(f"{spec}: a GGUF file holds a causal language model, not a sequence classifier")
        model, tokenizer, found_kind = _load_gguf(path, kind, dtype)
        model.to(target)
    elif (path / ADAPTER_CONFIG).is_file() and not (path / "config.json").is_file():
        return _load_adapter(path, spec, allow_pickle, trust_remote_code, dtype, device)
    else:
        model, tokenizer, found_kind = _load_directory(path, kind, allow_pickle, trust_remote_code, dtype, target,
                                                       labels)
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, spec=spec, kind=found_kind, path=path)


def resolve(spec: str, *, allow_pickle: bool = False) -> Path:
    """Turn a spec into a local directory or .gguf file, fetching or converting once."""
    entry = catalog.lookup(spec)
    if entry is not None:
        packaged = catalog.packaged_path(entry)
        if packaged is None:
            return _hub_snapshot(entry.hub_id, allow_pickle, hint=f"or `pip install {entry.package}`"
                                 if entry.package else "")
        if packaged.suffix == ".gguf":
            return _materialize_gguf(entry.alias, packaged)
        return packaged
    path = Path(spec).expanduser()
    if path.is_symlink() and not path.exists():
        raise ModelLoadError(f"{spec}: a symbolic link that leads nowhere (a loop, or its target is gone)")
    if path.exists():
        if path.is_dir() or path.suffix == ".gguf":
            return path
        if path.suffix == ".onnx":
            raise ModelLoadError(ONNX_ONLY.format(path=spec))
        if path.suffix == ".pte":
            raise ModelLoadError(PTE_ONLY.format(path=spec))
        raise ModelLoadError(f"{spec}: not a model; expected a Hugging Face directory, a .gguf file or an alias "
                             "(see `slm models`)")
    if _looks_like_path(spec):
        raise ModelLoadError(f"{spec}: no such file or directory")
    return _hub_snapshot(spec, allow_pickle)


def local_path(spec: str) -> Path | None:
    """What `resolve` gives when that needs no download or conversion (a path, a packaged or cached
    alias); otherwise None. For reading sizes without loading anything."""
    entry = catalog.lookup(spec)
    if entry is None:
        path = Path(spec).expanduser()
        return path if path.exists() else None
    packaged = catalog.packaged_path(entry)
    if packaged is not None and packaged.suffix == ".gguf":
        converted = cache_dir() / "models" / entry.alias
        return converted if (converted / "config.json").is_file() else None
    return packaged


def peek_kind(spec: str) -> tuple[str, str | None] | None:
    """(kind, model_type) from what is on disk without loading weights (a GGUF holds a causal LM);
    None when the spec is not local yet."""
    path = local_path(spec)
    if path is None:
        return None
    if path.is_file():
        return ("causal-lm", None) if path.suffix == ".gguf" else None
    if not (path / "config.json").is_file():
        return None
    config = _read_config(path)
    check_config_fields(path / "config.json", config, {})
    return infer_kind(config), config.get("model_type")


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or spec.endswith(".gguf") or spec.count("/") > 1 or os.sep + os.sep in spec


def _hub_snapshot(repo_id: str, allow_pickle: bool, hint: str = "") -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    patterns = HUB_FILE_PATTERNS + (["*.bin"] if allow_pickle else [])
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
    except HFValidationError:
        raise ModelLoadError(f"{repo_id!r} is not a model alias (see `slm models`), a local path or a hub id") from None
    except Exception:  # not in the cache: go online below
        pass
    local_hint = f"download it elsewhere and pass the local directory or .gguf file instead{' ' + hint if hint else ''}"
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes") or not _hub_reachable():
        raise ModelLoadError(f"{repo_id}: not in the local cache and the Hugging Face Hub is unreachable (offline); "
                             f"{local_hint}")
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as exc:
        raise ModelLoadError(f"{repo_id}: could not fetch from the Hugging Face Hub "
                             f"({type(exc).__name__}: {first_line(exc)}); {local_hint}") from None


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Fail fast without network: huggingface_hub otherwise retries for ~25 s."""
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _materialize_gguf(alias: str, gguf_path: Path) -> Path:
    """Convert a packaged GGUF once into a float safetensors checkpoint in the cache.

    Dequantizing the GGUF takes tens of seconds; every later load reads the
    cached checkpoint. transformers refuses to save a model loaded with
    `gguf_file=` (it counts as quantized), so `_load_gguf` rebuilds it plain.
    """
    target = cache_dir() / "models" / alias
    if (target / "config.json").is_file():
        return target
    model, tokenizer, _ = _load_gguf(gguf_path, None, "float32")
    try:
        save(model, target, tokenizer, stage="import", parent=str(gguf_path),
             config={"source": "gguf", "alias": alias})
    except OSError:
        if not (target / "config.json").is_file():  # a concurrent import won the rename
            raise
    return target


def _load_gguf(path: Path, kind: str | None, dtype: str):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if kind not in (None, "causal-lm"):
        raise ModelLoadError(f"{path}: a GGUF file holds a causal language model, not {KIND_NAMES[kind]}")
    validate_gguf(path)  # transformers would hang on a huge block_count or load a file missing tensors
    # Every parse of the file reads its whole vocabulary (seconds): each from_pretrained gets the config.
    try:
        config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
        quantized, info = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, config=config,
                                                               output_loading_info=True)
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, config=config)
    except Exception as exc:
        reason = first_line(exc)
        if "above report" in reason:  # transformers points at a report it logs, which we keep quiet
            reason = "its tensors' shapes differ from the model transformers builds from the header"
        raise ModelLoadError(f"{path}: transformers cannot load this GGUF ({reason})") from None
    refuse_missing(path, sorted(info.get("missing_keys") or []))
    # Rebuild as a plain float model so it can be saved and modified like any other.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = dtype
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.load_state_dict(quantized.state_dict())
    model.tie_weights()
    return model, tokenizer, "causal-lm"


def refuse_missing(source: Path, missing: list[str]) -> None:
    """Weights a checkpoint lacks: transformers would start them from random values and load half a model."""
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise ModelLoadError(f"{source}: the file has no tensor for {missing[0]}{more}; refusing half a model")


def _read_config(directory: Path) -> dict:
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise ModelLoadError(f"{directory}: no config.json; not a Hugging Face model directory")
    try:
        config = json.loads(config_path.read_bytes())
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{config_path}: not valid JSON ({json_problem(exc)})") from None
    except UnicodeDecodeError:
        raise ModelLoadError(f"{config_path}: not UTF-8 text") from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"{config_path}: not a JSON object (it holds a {type(config).__name__})")
    return config


def _auto_class(kind: str):
    import transformers

    return {
        "causal-lm": transformers.AutoModelForCausalLM,
        "encoder": transformers.AutoModel,
        "seq2seq": transformers.AutoModelForSeq2SeqLM,
        "classifier": transformers.AutoModelForSequenceClassification,
    }[kind]


def _load_adapter(directory: Path, spec: str, allow_pickle: bool, trust_remote_code: bool, dtype: str | None,
                  device: str | None) -> LoadedModel:
    """A LoRA adapter on the base its manifest names, merged: every later stage sees a plain model."""
    from peft import PeftModel

    manifest = read_manifest(directory) or {}
    base = manifest.get("parent")
    if not base:
        raise ModelLoadError(f"{directory}: a LoRA adapter without an slmkit.json naming its base model; open it "
                             "with peft on its base")
    settings = manifest.get("config") or {}
    labels = tuple(settings["labels"]) if settings.get("labels") else None
    try:
        lm = load(base, kind=settings.get("kind"), labels=labels, allow_pickle=allow_pickle,
                  trust_remote_code=trust_remote_code, dtype=dtype, device=device)
    except ModelLoadError as exc:
        raise ModelLoadError(f"{directory}: its base {base} cannot be opened ({exc})") from None
    try:
        merged = PeftModel.from_pretrained(lm.model, directory).merge_and_unload()
    except Exception as exc:  # peft raises several types for an adapter that does not fit its base
        raise ModelLoadError(f"{directory}: the adapter does not fit {base} ({type(exc).__name__}: "
                             f"{first_line(exc)})") from None
    tokenizer = lm.tokenizer
    if (directory / "tokenizer_config.json").is_file():
        tokenizer = _load_tokenizer(directory)
    return LoadedModel(model=merged.eval(), tokenizer=tokenizer, spec=spec, kind=lm.kind, path=directory)


def _load_directory(directory: Path, kind: str | None, allow_pickle: bool, trust_remote_code: bool, dtype: str,
                    device, labels: tuple[str, ...] | None = None):
    import torch

    config = _read_config(directory)
    if config.get("auto_map") and not trust_remote_code:
        raise UnsafeModelError(f"{directory}: the model ships its own Python code (auto_map in config.json); "
                               "pass --trust-remote-code only if you trust its author")
    has_safetensors = any(directory.glob("*.safetensors"))
    pickles = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if not has_safetensors:
        if (directory / ONNX_MODEL_FILE).is_file():
            raise ModelLoadError(ONNX_ONLY.format(path=directory))
        if (directory / PTE_MODEL_FILE).is_file():
            raise ModelLoadError(PTE_ONLY.format(path=directory))
        if not pickles:
            raise ModelLoadError(f"{directory}: no weights found (*.safetensors)")
        if not allow_pickle:
            raise UnsafeModelError(f"{directory}: weights are pickle files ({', '.join(pickles)}), which can run "
                                   "code when loaded; pass --allow-pickle only if you trust them")
    # A truncated or corrupt file, a field transformers trips or hangs on: named before transformers reads them.
    headers = weight_headers(directory) if has_safetensors else {}
    check_config_fields(directory / "config.json", config, headers)
    kind = kind or infer_kind(config)
    extra = {} if device.type == "cpu" else {"device_map": str(device)}  # straight onto the GPU (accelerate)
    if (config.get("quantization_config") or {}).get("quant_method") == "compressed-tensors":
        from transformers import CompressedTensorsConfig

        # Unpack to float weights on the grid: every slmkit stage and measurement works on those.
        extra["quantization_config"] = CompressedTensorsConfig(run_compressed=False)
    if headers and not config.get("auto_map"):  # remote code's classes are the real load's to import
        missing = check_against_weights(directory, config, headers, _auto_class(kind), extra.get("quantization_config"))
        # Heads are the real load's to judge below: its class may have other heads than the checkpoint's own.
        refuse_missing(directory, [name for name in missing if not name.startswith(CLASSIFIER_HEADS)
                                   and ".pooler." not in f".{name}"])
    if labels is not None:
        if kind != "classifier":
            raise ModelLoadError(f"{directory}: class labels need kind 'classifier', not {kind!r}")
        extra.update(num_labels=len(labels), id2label=dict(enumerate(labels)),
                     label2id={label: i for i, label in enumerate(labels)}, ignore_mismatched_sizes=True)
    tokenizer = None  # read before the weights: it fails in a fraction of their time
    if any((directory / name).exists() for name in TOKENIZER_FILES):
        tokenizer = _load_tokenizer(directory, trust_remote_code)
    try:
        model, info = _auto_class(kind).from_pretrained(
            directory, dtype=getattr(torch, dtype), use_safetensors=has_safetensors,
            trust_remote_code=trust_remote_code, output_loading_info=True, **extra)
    except Exception as exc:  # transformers, safetensors and pickle raise many types for files they cannot read
        raise ModelLoadError(f"{directory}: cannot load weights ({type(exc).__name__}: {first_line(exc)})") from None
    missing = sorted(info.get("missing_keys") or [])
    if labels is not None:  # the new head starts untrained: its weights are meant to be missing
        missing = [name for name in missing if not name.startswith(CLASSIFIER_HEADS)]
    elif kind == "classifier" and any("classifier" in k or "score" in k for k in missing):
        raise ModelLoadError(f"{directory}: has no trained sequence-classification head; fine-tune one first")
    refuse_missing(directory, [name for name in missing if ".pooler." not in f".{name}"])  # a pooler is optional
    return model, tokenizer, kind


def _load_tokenizer(directory: Path, trust_remote_code: bool = False):
    """AutoTokenizer, its failures one line naming the file: tokenizers and transformers raise many types."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(directory, trust_remote_code=trust_remote_code)
    except Exception as exc:
        reason = f"{type(exc).__name__}: {first_line(exc).rstrip(': ')}"
    for name in ("tokenizer_config.json", "tokenizer.json", "special_tokens_map.json", "added_tokens.json"):
        path = directory / name
        try:
            content = json.loads(path.read_bytes()) if path.is_file() else {}
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            problem = json_problem(exc) if isinstance(exc, json.JSONDecodeError) else "not UTF-8 text"
            raise ModelLoadError(f"{path}: not valid JSON ({problem})") from None
        if not isinstance(content, dict):
            raise ModelLoadError(f"{path}: not a JSON object (it holds a {type(content).__name__})")
    tokenizer_file = directory / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise ModelLoadError(f"{tokenizer_file}: missing, and transformers cannot build the tokenizer from the other "
                             f"files ({reason})")
    from tokenizers import Tokenizer

    try:
        Tokenizer.from_file(str(tokenizer_file))
    except Exception as exc:  # tokenizers raises a bare Exception naming what it could not parse
        raise ModelLoadError(f"{tokenizer_file}: not a tokenizer the tokenizers library can read "
                             f"({first_line(exc)})") from None
    raise ModelLoadError(f"{directory}: cannot load the tokenizer ({reason})")
