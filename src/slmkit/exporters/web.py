"""Web export: a static folder in which a page runs the model on the visitor's device.

A decoder is the GGUF slmkit writes (or a .gguf given as it is: no re-quantization), run by llama.cpp compiled to
WebAssembly (wllama); an encoder or classifier is its ONNX export, run by transformers.js (onnxruntime-web). The
runtimes' files come from the npm packages `make` installs (src/slmkit/web/package-lock.json pins them), copied
into the folder with the page (index.html, the `window.slm` API in slm.js) and a service worker (sw.js) that keeps
every file for offline visits. slm-web.json lists the files with their sizes and SHA-256.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from slmkit.errors import SlmError
from slmkit.exporters.config import WebConfig
from slmkit.models.checkpoint import atomic_directory, check_destination
from slmkit.models.kinds import KIND_NAMES
from slmkit.models.loading import ONNX_MODEL_FILE
from slmkit.models.loading import WEB_MANIFEST as MANIFEST_FILE

WEB_DIR = Path(__file__).parents[1] / "web"
NODE_MODULES = WEB_DIR / "node_modules"
# wllama's advice: files of at most 512 MB download in parallel and stay clear of the browser's 2 GB ArrayBuffer
# limit; llama.cpp reads a model split at tensor boundaries (gguf-split's format) as one.
SHARD_BYTES = 512 * 2**20
# The context the page opens a decoder with, unless the model's is shorter or the page's ?context= says: the KV
# cache lives in the tab's memory.
WEB_CONTEXT = 4096
# {export path: npm path} of each runtime, and the script the page imports.
RUNTIMES = {
    "wllama": {"package": "@wllama/wllama", "files": {
        "runtime/wllama/index.js": "@wllama/wllama/esm/index.js",
        "runtime/wllama/wllama.wasm": "@wllama/wllama/esm/wasm/wllama.wasm",
        "runtime/wllama/LICENCE": "@wllama/wllama/LICENCE"},
        "module": "runtime/wllama/index.js", "wasm": "runtime/wllama/wllama.wasm"},
    # The self-contained web bundle (onnxruntime-web's JavaScript inside), and the plain WebAssembly build of
    # onnxruntime: half the size of the asyncify one the bundle picks by default, which WebGPU needs.
    "transformers.js": {"package": "@huggingface/transformers", "files": {
        "runtime/transformers/transformers.min.js": "@huggingface/transformers/dist/transformers.min.js",
        "runtime/transformers/LICENSE": "@huggingface/transformers/LICENSE",
        "runtime/onnxruntime/ort-wasm-simd-threaded.mjs": "onnxruntime-web/dist/ort-wasm-simd-threaded.mjs",
        "runtime/onnxruntime/ort-wasm-simd-threaded.wasm": "onnxruntime-web/dist/ort-wasm-simd-threaded.wasm"},
        "module": "runtime/transformers/transformers.min.js",
        "mjs": "runtime/onnxruntime/ort-wasm-simd-threaded.mjs",
        "wasm": "runtime/onnxruntime/ort-wasm-simd-threaded.wasm"},
}
RUNTIME_OF = {"causal-lm": "wllama", "encoder": "transformers.js", "classifier": "transformers.js"}
MODEL_DIR = "model"


@dataclass
class WebExport:
    """What was written, for the CLI's report."""

    path: Path  # the folder
    kind: str  # causal-lm | encoder | classifier
    runtime: str  # wllama | transformers.js
    model_files: list[str]
    model_bytes: int
    runtime_bytes: int


def check_web_target(out: Path, force: bool, reads=()) -> None:
    """Refuse a bad --out, or runtimes `make` has not installed, before any slow work."""
    if out.suffix in (".gguf", ".onnx", ".html"):
        raise SlmError(f"--out {out} should name a directory for --format web (the page, the runtime and the "
                       "model go in it)")
    for runtime in RUNTIMES.values():
        _installed(runtime)
    check_destination(out, force, reads)


def _installed(runtime: dict) -> dict[str, Path]:
    sources = {target: NODE_MODULES / source for target, source in runtime["files"].items()}
    missing = next((path for path in sources.values() if not path.is_file()), None)
    if missing is not None:
        raise SlmError(f"the browser runtimes are not installed ({missing} is missing): run `make web` in the slmkit "
                       f"checkout, or `npm ci --ignore-scripts --prefix {WEB_DIR}`")
    return sources


def export_web(lm, out: str | Path, config: WebConfig | None = None, *, force: bool = False,
               shard_bytes: int = SHARD_BYTES) -> WebExport:
    """Write `lm` (a LoadedModel: a causal LM, an encoder or a sequence classifier) as a web folder at `out`.
    A causal LM is written as `slmkit.export` writes its GGUF (`config.quant`, else its GGUF plan, else f16);
    an encoder as its float32 ONNX graph."""
    from slmkit.exporters.gguf import export_gguf
    from slmkit.exporters.onnx import export_onnx

    config, out = config or WebConfig(), Path(out)
    check_web_target(out, force, reads=[lm.path])
    if lm.kind not in RUNTIME_OF:
        raise SlmError(f"{lm.spec}: the web export runs decoders (llama.cpp) and encoders or classifiers "
                       f"(transformers.js); this is {KIND_NAMES[lm.kind]} ({lm.model.config.model_type})")
    if lm.kind != "causal-lm" and config.quant is not None:
        raise SlmError(f"--quant applies to decoders; {lm.spec} is {KIND_NAMES[lm.kind]}, whose web export runs its "
                       "float32 ONNX graph (drop --quant)")
    name = Path(str(lm.spec).rstrip("/")).name

    def write_model(tmp: Path) -> dict:
        if lm.kind == "causal-lm":
            from gguf import GGUFReader

            gguf_path = tmp / "whole.gguf"
            export_gguf(lm, gguf_path, config.quant)
            return _place_gguf(gguf_path, GGUFReader(gguf_path), tmp, name, shard_bytes, move=True)
        export_onnx(lm, tmp / "onnx-export")
        return _place_onnx(tmp / "onnx-export", tmp, name, lm.kind, move=True)

    return _write(out, write_model, force=force, reads=[lm.path])


def export_web_file(path: str | Path, out: str | Path, *, force: bool = False,
                    shard_bytes: int = SHARD_BYTES) -> WebExport:
    """Write a finished artefact as a web folder, its weights as they are: a .gguf file (validated, then copied or
    split at tensor boundaries) or an ONNX directory from `slm export --format onnx`."""
    path, out = Path(path), Path(out)
    check_web_target(out, force, reads=[path])
    if path.suffix == ".gguf":
        from slmkit.models.validate import validate_gguf

        reader = validate_gguf(path)  # the browser's llama.cpp would abort on what this refuses
        return _write(out, lambda tmp: _place_gguf(path, reader, tmp, path.stem, shard_bytes, move=False),
                      force=force, reads=[path])
    if (path / ONNX_MODEL_FILE).is_file():
        from slmkit.runtime.onnx import OnnxModel

        kind = OnnxModel(path).kind  # opens the graph: onnxruntime refuses a file that is not one
        return _write(out, lambda tmp: _place_onnx(path, tmp, path.name, kind, move=False), force=force,
                      reads=[path])
    raise SlmError(f"{path}: the web export takes a model, a .gguf file or an ONNX directory (with {ONNX_MODEL_FILE})")


def _write(out: Path, write_model, *, force: bool, reads) -> WebExport:
    written = {}

    def write(tmp: Path) -> None:
        model = write_model(tmp)
        runtime = RUNTIMES[RUNTIME_OF[model["kind"]]]
        runtime_files = []
        for target, source in _installed(runtime).items():
            (tmp / target).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, tmp / target)
            runtime_files.append(target)
        page = WEB_DIR / "page"
        for file in ("index.html", "slm.js"):
            shutil.copyfile(page / file, tmp / file)
        for file in ("chat.css", "chat.js"):  # slm serve's page's look and parts
            shutil.copyfile(Path(__file__).parents[1] / "server" / file, tmp / file)
        files = [_described(tmp, file) for file in model["files"]]
        runtime_described = [_described(tmp, file) for file in runtime_files]
        manifest = {
            "format": "slm-web", "name": model["name"], "kind": model["kind"],
            "model_files": [file for file in files if file["path"] in model["load"]],
            "files": files + runtime_described,
            "runtime": {"name": RUNTIME_OF[model["kind"]], "version": _version(runtime["package"]),
                        **{key: runtime[key] for key in ("module", "mjs", "wasm") if key in runtime}},
            "runtime_bytes": sum(file["bytes"] for file in runtime_described),
            **model["settings"],
        }
        text = json.dumps(manifest, indent=2) + "\n"
        (tmp / MANIFEST_FILE).write_text(text)
        # The cache's name follows the export's content: a new export is a new service worker and a fresh cache.
        cache = "slm-web-" + hashlib.sha256(text.encode()).hexdigest()[:16]
        (tmp / "sw.js").write_text((page / "sw.js").read_text().replace("__SLM_CACHE__", cache))
        written.update(kind=model["kind"], runtime=manifest["runtime"]["name"],
                       model_files=[file["path"] for file in manifest["model_files"]],
                       model_bytes=sum(file["bytes"] for file in files), runtime_bytes=manifest["runtime_bytes"])

    atomic_directory(out, write, force=force, reads=reads)
    return WebExport(path=out, **written)


def _described(root: Path, relative: str) -> dict:
    digest = hashlib.sha256()
    with (root / relative).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"path": relative, "bytes": (root / relative).stat().st_size, "sha256": digest.hexdigest()}


def _version(package: str) -> str:
    return json.loads((NODE_MODULES / package / "package.json").read_text())["version"]


def _place_gguf(gguf_path: Path, reader, tmp: Path, name: str, shard_bytes: int, *, move: bool) -> dict:
    """The GGUF (`reader` reads it) in model/, split when larger than `shard_bytes`."""
    (tmp / MODEL_DIR).mkdir()
    target = tmp / MODEL_DIR / "model.gguf"
    architecture = reader.fields["general.architecture"].contents()
    context = reader.fields.get(f"{architecture}.context_length")
    settings = {"context": min(WEB_CONTEXT, int(context.contents())) if context else WEB_CONTEXT}
    if gguf_path.stat().st_size > shard_bytes:
        files = split_gguf(reader, target, shard_bytes)
        del reader
        if move:
            gguf_path.unlink()
    else:
        del reader  # its memory map, before the file moves
        (shutil.move if move else shutil.copyfile)(gguf_path, target)
        files = [target]
    paths = [file.relative_to(tmp).as_posix() for file in files]
    return {"name": name, "kind": "causal-lm", "files": paths, "load": paths, "settings": settings}


def split_gguf(reader, first: Path, shard_bytes: int) -> list[Path]:
    """The GGUF `reader` reads, written as shards of at most `shard_bytes` of tensor data each (a tensor larger
    than that alone in its shard) in llama.cpp's gguf-split layout: NAME-0000i-of-0000n.gguf, every shard with
    split.no/split.count/split.tensors.count, the metadata in the first. gguf-py writes the shards; copying a
    file's fields and tensors into its writer is what llama-gguf-split does, which the Python package lacks."""
    import gguf

    first.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(first, reader.fields["general.architecture"].contents(), split_max_size=shard_bytes)
    alignment = reader.fields.get("general.alignment")
    if alignment is not None:
        writer.data_alignment = int(alignment.contents())
    for field in reader.fields.values():
        if field.name.startswith(("GGUF.", "split.")) or field.name == "general.architecture":
            continue  # the header's counts, and what the writer writes itself
        array = field.types[0] == gguf.GGUFValueType.ARRAY
        writer.add_key_value(field.name, field.contents(), field.types[0], field.types[-1] if array else None)
    for tensor in reader.tensors:
        writer.add_tensor(tensor.name, tensor.data, raw_dtype=tensor.tensor_type)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file(progress=False)
    finally:
        writer.close()
    return writer.format_shard_names(first)


def _place_onnx(onnx_dir: Path, tmp: Path, name: str, kind: str, *, move: bool) -> dict:
    """The ONNX directory as model/: transformers.js reads its config, tokenizer.json and graph (the page tells it
    the graph is beside the config), and slm eval/bench run the same directory on onnxruntime."""
    if not (onnx_dir / "tokenizer.json").is_file():
        raise SlmError(f"{onnx_dir}: no tokenizer.json (a fast tokenizer's file); transformers.js reads no other")
    if move:
        shutil.move(onnx_dir, tmp / MODEL_DIR)
    else:
        shutil.copytree(onnx_dir, tmp / MODEL_DIR)
    paths = sorted(path.relative_to(tmp).as_posix() for path in (tmp / MODEL_DIR).rglob("*") if path.is_file())
    settings = {"model_dir": MODEL_DIR}
    if kind == "encoder":  # as slm's own embeddings: the mean of the token vectors
        settings["pooling"] = {"pooling": "mean", "normalize": False}
    return {"name": name, "kind": kind, "files": paths, "load": [f"{MODEL_DIR}/{ONNX_MODEL_FILE}"],
            "settings": settings}
