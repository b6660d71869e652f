"""Students: the smaller model a teacher is distilled into, made from the teacher itself or from a config.

    --layers 0,2,4   keep those blocks with their weights (DistilBERT kept every other layer of BERT)
    --depth N        keep N blocks, evenly spaced from the first (12 -> 6 keeps 0,2,4,...,10)
    --config FILE    a config.json of another size: fresh weights, the teacher's tokenizer
    --width ffn=N,heads=H / --target-params 90M   structured pruning, scored on calibration text

Embeddings, the final norm and the head stay the teacher's in the first two; a fresh student must share the
teacher's vocabulary, since distillation compares their distributions token id by token id. Width and
parameter-count students are `slm prune --structured`'s (slmkit.student calls it).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from slmkit.errors import SlmError
from slmkit.models.loading import _auto_class


@dataclass
class StudentConfig:
    """How to make a student: exactly one of `layers`, `depth`, `config`, `width` (`{"ffn": N, "heads": H}`),
    `target_params` (seed: a fresh student's weights)."""

    layers: tuple[int, ...] | None = None
    depth: int | None = None
    config: str | None = None
    width: dict | None = None
    target_params: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        chosen = [flag for flag, value in (("--layers", self.layers), ("--depth", self.depth),
                                           ("--config", self.config), ("--width", self.width),
                                           ("--target-params", self.target_params)) if value is not None]
        if len(chosen) != 1:
            raise SlmError("give one of --layers, --depth, --config, --width or --target-params" if not chosen else
                           f"{' and '.join(chosen)} both choose the student; give one")
        if self.layers is not None:
            self.layers = tuple(self.layers)
            if not self.layers:
                raise SlmError("--layers is empty; give block numbers like 0,2,4")
            if any(index < 0 for index in self.layers):
                raise SlmError(f"--layers {','.join(map(str, self.layers))}: block numbers start at 0")
            if list(self.layers) != sorted(set(self.layers)):
                raise SlmError(f"--layers {','.join(map(str, self.layers))}: give each block once, in order")
        if self.depth is not None and self.depth < 1:
            raise SlmError(f"--depth {self.depth}: keep at least 1 block")

    def to_dict(self) -> dict:
        return asdict(self)

    def structured(self):
        """The structured-pruning config of a width or parameter-count student (None for the others)."""
        if self.width is None and self.target_params is None:
            return None
        from slmkit.compress.structured import StructuredConfig  # torch: kept out of CLI start-up

        return StructuredConfig(target_params=self.target_params, **(self.width or {}))


def parse_layers(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise SlmError(f"--layers {text!r}: expected block numbers like 0,2,4") from None


def evenly_spaced(total: int, keep: int) -> list[int]:
    """`keep` of `total` block indices, spread evenly from block 0."""
    return [index * total // keep for index in range(keep)]


def make_student(lm, config: StudentConfig) -> dict:
    """Turn `lm` (the teacher, opened with torch) into the student in place; returns what was kept. A fresh
    student replaces `lm.model`."""
    if config.config is not None:
        return _fresh(lm, config)
    from slmkit.compress.structured import _decoder_blocks, keep_blocks  # torch: kept out of CLI start-up

    total = len(_decoder_blocks(lm.model)[1])
    if config.layers is not None:
        beyond = [index for index in config.layers if index >= total]
        if beyond:
            raise SlmError(f"--layers: the teacher has blocks 0..{total - 1}; {beyond[0]} is not one")
        kept = list(config.layers)
    else:
        if config.depth >= total:
            raise SlmError(f"--depth {config.depth}: the teacher has {total} blocks; a student keeps fewer")
        kept = evenly_spaced(total, config.depth)
    if len(kept) == total:
        raise SlmError(f"--layers keeps all {total} blocks; a student keeps fewer")
    keep_blocks(lm.model, kept)
    return {"kept_blocks": kept, "teacher_blocks": total, "parameters": _parameters(lm.model)}


def _fresh(lm, config: StudentConfig) -> dict:
    from transformers import AutoConfig, set_seed

    path = Path(config.config)
    if not path.is_file():
        raise SlmError(f"--config {path}: no such file" if not path.exists() else f"--config {path}: not a file")
    try:
        settings = json.loads(path.read_text(encoding="utf-8-sig"))  # a byte-order mark, as editors may write
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SlmError(f"--config {path}: not a JSON config ({exc})") from None
    if not isinstance(settings, dict) or "model_type" not in settings:
        raise SlmError(f"--config {path}: a transformers config.json with a model_type is needed")
    model_type = settings.pop("model_type")
    try:
        student_config = AutoConfig.for_model(model_type, **settings)
    except ValueError as exc:
        raise SlmError(f"--config {path}: {exc}") from None
    teacher_vocab = lm.model.config.get_text_config().vocab_size
    student_vocab = student_config.get_text_config().vocab_size
    if student_vocab != teacher_vocab:
        raise SlmError(f"--config {path}: vocab_size {student_vocab} differs from the teacher's {teacher_vocab}; "
                       "a student shares the teacher's tokenizer and vocabulary")
    set_seed(config.seed)
    lm.model = _auto_class(lm.kind).from_config(student_config)
    return {"architecture": model_type, "parameters": _parameters(lm.model)}


def _parameters(model) -> int:
    return sum(parameter.numel() for parameter in model.parameters())
