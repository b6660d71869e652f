"""Checkpoints: a Hugging Face directory plus `slmkit.json`, written atomically.

The manifest says where the checkpoint came from (parent, stage, config, seed,
library versions) and what was measured on it, so any later stage or report can
trace a model back to its origin.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import hashlib
import json
import os
import platform
import shutil
import tempfile
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from slmkit import __version__
from slmkit.errors import SlmError, first_line, json_problem

MANIFEST_NAME = "slmkit.json"
MANIFEST_VERSION = 1
_claims: dict[str, TextIO] = {}  # outputs this process has claimed (real path -> its held lock file)


def cache_dir() -> Path:
    """Where slmkit keeps what it can remake: converted models, calibration text, output claims."""
    return Path(os.environ.get("SLMKIT_CACHE") or Path.home() / ".cache" / "slmkit")


def library_versions() -> dict[str, str]:
    import torch
    import transformers

    return {
        "slmkit": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def read_manifest(directory: str | Path) -> dict[str, Any] | None:
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SlmError(f"{path}: not valid JSON ({json_problem(exc)})") from None


def new_manifest(stage: str, parent: str | None = None, config: dict[str, Any] | None = None,
                 seed: int | None = None, metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    """What `slmkit.json` holds for a directory written by `stage`."""
    return {
        "slmkit_manifest_version": MANIFEST_VERSION,
        "stage": stage,
        "parent": parent,
        "config": config or {},
        "seed": seed,
        "versions": library_versions(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "metrics": metrics or {},
    }


def files_identity(path: Path) -> list[list]:
    """[name relative to the parent, size, modification time] of a file or of every file under a directory:
    what a cache keyed on a model's files compares, so a file rewritten in place is a new key."""
    found = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return [[str(p.relative_to(path.parent)), p.stat().st_size, p.stat().st_mtime_ns] for p in found]


def checkpoint_dir(out: Path) -> Path:
    """Where a training run into `out` keeps its resumable checkpoints (`<out>.checkpoints/`)."""
    return out.with_name(f"{out.name}.checkpoints")


def check_destination(out_dir: Path, force: bool, reads: Iterable[str | Path | None] = ()) -> None:
    """Refuse to write over a user's files, or where nothing can be written, before any slow work starts; then
    claim `out_dir` for this process. `reads` are what the command reads (model, data files): an output that is
    one of them or holds one is refused even with `force`, which only ever replaces an earlier output."""
    out_dir = Path(out_dir)
    check_not_input(out_dir, reads)
    if out_dir.exists() and not out_dir.is_dir():
        raise SlmError(f"{out_dir} exists and is not a directory; choose another --out")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise SlmError(f"{out_dir} is not empty; choose another --out or pass --force to replace it")
    check_writable(out_dir)
    claim_output(out_dir)


def check_not_input(out: Path, reads: Iterable[str | Path | None]) -> None:
    """`out` is neither the current directory nor any file the command reads, nor a directory holding one, nor
    a file already inside a directory it reads (a model's own weights or tokenizer) (symbolic links and `.`
    followed): replacing it would destroy the input. A new file inside a model's directory is allowed."""
    target = Path(os.path.realpath(out))
    if target == Path.cwd() or target in Path.cwd().parents:
        raise SlmError(f"--out {out}: that is the current directory (or holds it); name a directory to create, "
                       "e.g. --out out/model")
    for read in reads:
        source = Path(os.path.realpath(Path(read).expanduser())) if read else None
        if source is None or not source.exists():
            continue
        if target == source or target in source.parents:
            how = "is" if target == source else "holds"
            raise SlmError(f"--out {out} {how} {read}, which this command reads; choose another --out "
                           "(--force replaces an earlier output, never an input)")
        if source.is_dir() and source in target.parents and target.is_file():
            raise SlmError(f"--out {out} is a file of {read}, which this command reads; choose another --out "
                           "(--force replaces an earlier output, never an input)")


def claim_output(out: Path) -> None:
    """Take `out` for this process before the work starts, so a second run writing the same output is refused
    at once instead of after all its work. An flock on a file in the cache: the kernel drops it when the
    process ends, so a killed run leaves no stale claim. Under torchrun only rank 0 writes, so only it claims."""
    key = os.path.realpath(out)
    if key in _claims or os.environ.get("RANK", "0") != "0":
        return
    lock_path = cache_dir() / "claims" / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.lock"
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        handle = lock_path.open("a+")
    except OSError:  # no writable cache: the atomic rename still keeps the output whole
        return
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "?"
        handle.close()
        raise SlmError(f"--out {out} is being written by another slm process (pid {holder}); wait for it to "
                       "finish or choose another --out") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    _claims[key] = handle


def release_output(out: Path) -> None:
    """Give up the claim `claim_output` took (the lock file stays: removing it would race a new claimant)."""
    handle = _claims.pop(os.path.realpath(out), None)
    if handle is not None:
        handle.close()


@contextmanager
def claimed(out: Path) -> Iterator[None]:
    """`out` claimed for the block (see `claim_output`)."""
    claim_output(out)
    try:
        yield
    finally:
        release_output(out)


def check_writable(out: Path) -> None:
    """`out` can be created: its nearest existing ancestor is a directory this process can write in (tried
    with a real file: permissions, read-only mounts and root all answer the same way)."""
    ancestor = Path(out).absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise SlmError(f"--out {out}: {ancestor} is a file, so nothing can be created under it")
    try:
        tempfile.TemporaryFile(dir=ancestor).close()
    except OSError as exc:
        raise SlmError(f"--out {out}: cannot write in {ancestor} ({exc.strerror or first_line(exc)})") from None


def write_atomic(path: str | Path, content: str | bytes) -> Path:
    """Write a file so a reader sees the old content or the new, never a part."""
    path = Path(path)
    with atomic_file(path) as tmp:
        tmp.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


@contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yields a temporary path beside `path` to write; it replaces `path` only if the block finishes."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_directory(out_dir: Path, write, force: bool = False, reads: Iterable[str | Path | None] = ()) -> Path:
    """Call `write(tmp_dir)` and move the result to `out_dir` in one rename.

    A crash leaves either the old directory or the new one, never a mix; with
    `force` the old directory is removed only after the new one is complete.
    `reads`: what `write` was made from (see `check_destination`).
    """
    out_dir = Path(out_dir)
    check_destination(out_dir, force, reads)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        # mkdtemp makes it private (0700); the finished directory gets the mode mkdir would give it.
        umask = os.umask(0)
        os.umask(umask)
        tmp_dir.chmod(0o777 & ~umask)
        write(tmp_dir)
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            os.replace(out_dir, old)
            os.replace(tmp_dir, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp_dir, out_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    finally:
        release_output(out_dir)
    return out_dir


def save(
    model,
    out_dir: str | Path,
    tokenizer=None,
    *,
    stage: str = "save",
    parent: str | None = None,
    config: dict[str, Any] | None = None,
    seed: int | None = None,
    metrics: dict[str, Any] | None = None,
    force: bool = False,
    after_write=None,
    reads: Iterable[str | Path | None] = (),
) -> Path:
    """Write `model` (and `tokenizer`) as an HF directory with a manifest.

    `after_write(tmp_dir)` may add to the directory before it is moved into place.

    Example: `slmkit.save(model, "out/pruned", tok, stage="prune", parent="smollm2-135m-instruct")`.
    Refuses a non-empty `out_dir` unless `force`, and one that is or holds any of `reads` (what the model was
    loaded from) always.
    """
    manifest = new_manifest(stage, parent, config, seed, metrics)

    def write(tmp_dir: Path) -> None:
        model.save_pretrained(tmp_dir, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp_dir)
        if after_write is not None:
            after_write(tmp_dir)
        (tmp_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")

    return atomic_directory(Path(out_dir), write, force=force, reads=reads)
