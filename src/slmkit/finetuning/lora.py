"""LoRA through peft: which modules get adapters, and the adapter directory `slmkit.load` reopens."""

from __future__ import annotations

from pathlib import Path

from slmkit.data.tasks import Task
from slmkit.errors import SlmError
from slmkit.models.catalog import lookup
from slmkit.models.checkpoint import MANIFEST_NAME, atomic_directory, new_manifest


def check_targets(model, targets: list[str]) -> None:
    """Every named target matches a linear layer; peft would stop with a long message, or (with some
    names) train nothing at all."""
    import torch
    from transformers.pytorch_utils import Conv1D  # GPT-2's linear layers

    linear = {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
              if isinstance(module, (torch.nn.Linear, Conv1D))}
    unknown = [target for target in targets if target not in linear]
    if unknown:
        raise SlmError(f"--lora-targets {unknown[0]}: no linear layer of this model ({model.config.model_type}) "
                       f"has that name; it has {', '.join(sorted(linear))} (or use all-linear)")


def add_lora(model, task: Task, config):
    """`model` wrapped by peft with LoRA adapters on the configured targets (the new head of a classifier
    trains in full: peft's SEQ_CLS task keeps it in `modules_to_save`)."""
    from peft import LoraConfig, TaskType, get_peft_model

    targets = config.targets()
    if isinstance(targets, list):
        check_targets(model, targets)
    lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=targets, task_type=getattr(TaskType, task.peft_task))
    return get_peft_model(model, lora)


def base_spec(model: str) -> str:
    """How the adapter's manifest names its base: an alias or hub id as given, a local path made absolute
    (the adapter is opened from anywhere)."""
    path = Path(model).expanduser()
    return model if lookup(model) is not None or not path.exists() else str(path.resolve())


def save_adapter(peft_model, tokenizer, out: Path, *, base: str, kind: str, record: dict, metrics: dict,
                 seed: int, after_write=None, stage: str = "finetune", force: bool = False, reads=()) -> Path:
    """The adapter (`adapter_config.json`, `adapter_model.safetensors`), the tokenizer and a manifest whose
    parent is the base and whose config says which head to open it with."""
    import json

    manifest = new_manifest(stage, base_spec(base), {**record, "kind": kind}, seed, metrics)
    manifest["adapter"] = True

    def write(tmp: Path) -> None:
        peft_model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if after_write is not None:
            after_write(tmp)
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")

    return atomic_directory(out, write, force=force, reads=reads)
