"""`FinetuneConfig`: every setting of a fine-tuning run, checked before a model is opened."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from slmkit.data.tasks import task_names
from slmkit.errors import SlmError
from slmkit.models.devices import DTYPES, check_trainer_device
from slmkit.schema import setting

TASKS = task_names()  # data.tasks: chat, completion, text, classification, seq2seq
DEVICES = ("auto", "cpu", "cuda", "mps")


@dataclass
class FinetuneConfig:
    """How to fine-tune (SFT) a model on a data file.

    Args:
        data: the training file (chat `messages` JSONL, `prompt`/`completion` JSONL, text, `text<TAB>label`,
            `input`/`target` JSONL).
        task: chat | completion | text | classification | seq2seq; None: from the file, as `slm eval` infers.
        lora: train a LoRA adapter (peft) instead of every weight; rank/alpha/dropout/targets set it.
            targets: "all-linear" or module names (`q_proj,v_proj`).
        merge: with lora, write the merged model (a plain checkpoint) instead of the adapter.
        epochs / max_steps: how long (max_steps wins when set).
        lr: peak learning rate (linear decay after a short warm-up); None: 2e-4 with LoRA, 5e-5 without.
        batch_size: sequences per device per step; grad_accum: steps added up before each update.
        max_length: tokens per sequence (longer ones are truncated; `packing` fills rows up to it).
        packing: text, chat and completion: several examples per row, each with its own positions and no
            attention across them.
        eval_data: a held-out file of the same kind; None: `eval_fraction` of the training file held back.
        eval_every: steps between evaluations (0: only at the end).
        save_every: steps between resumable checkpoints (0: only when stopped by SIGTERM).
        resume: continue from the newest checkpoint of an interrupted run into the same `out`.
        device / dtype: where and in what precision (auto: CUDA when present; float32 on the CPU, bfloat16
            autocast on a GPU that has it); under torchrun/accelerate each process takes its own GPU.
        allow_pickle / trust_remote_code: open a model whose weights are pickles / whose code is its own, as
            `slmkit.load` takes them.

    Example: `slmkit.finetune("smollm2-135m-instruct", "out/ft", FinetuneConfig(data="chat.jsonl", lora=True))`.
    """

    data: str = setting("Training file: chat `messages` JSONL, `prompt`/`completion` JSONL, text (.txt or `text` "
                        "JSONL), `text<TAB>label` TSV/CSV, or `input`/`target` JSONL (seq2seq).")
    task: str | None = setting("chat | completion | text | classification | seq2seq [default: from the file].", None)
    lora: bool = setting("Train a LoRA adapter instead of every weight.", False)
    lora_rank: int = setting("LoRA rank.", 8)
    lora_alpha: int = setting("LoRA alpha (the update is scaled by alpha / rank).", 16)
    lora_dropout: float = setting("Dropout on the LoRA input.", 0.05)
    lora_targets: str = setting("all-linear, or module names: q_proj,v_proj.", "all-linear")
    merge: bool = setting("With --lora: write the merged model (a plain checkpoint) instead of the adapter.", False)
    # trainer=: the TrainingArguments field(s) a setting fills as it is; train.lifecycle derives the rest.
    epochs: float = setting("Passes over the data.", 1.0, trainer="num_train_epochs")
    max_steps: int | None = setting("Stop after this many optimizer steps (wins over --epochs).", None)
    lr: float | None = setting("Peak learning rate [default: 2e-4 with --lora, else 5e-5].", None)
    batch_size: int = setting("Sequences per device per step.", 8,
                              trainer=("per_device_train_batch_size", "per_device_eval_batch_size"))
    grad_accum: int = setting("Steps accumulated per optimizer update.", 1, trainer="gradient_accumulation_steps")
    weight_decay: float = setting("AdamW weight decay (transformers leaves biases and norms out).", 0.0,
                                  trainer="weight_decay")
    max_grad_norm: float = setting("Clip the gradients' global norm to this (0: no clipping).", 1.0,
                                   trainer="max_grad_norm")
    max_length: int = setting("Tokens per sequence (longer ones are cut).", 512)
    packing: bool = setting("Pack several examples per row (each attends only to itself).", False)
    eval_data: str | None = setting("Evaluation file [default: --eval-fraction of --data held back].", None)
    eval_fraction: float = setting("Share of --data held back for evaluation when there is no --eval-data.", 0.05)
    eval_every: int = setting("Steps between evaluations (0: at the end).", 0)
    save_every: int = setting("Steps between resumable checkpoints in OUT.checkpoints/ (0: only on SIGTERM).", 100)
    seed: int = setting("Seed for the data order, dropout and new weights.", 0, trainer=("seed", "data_seed"))
    # A recipe stage resumes by itself (it finds the checkpoints a stopped run left).
    resume: bool = setting("Continue an interrupted run from its newest checkpoint.", False, recipe=False)
    # Not recipe settings (yet): a stage field more changes the fingerprint of every recipe written before it.
    device: str = setting("auto | cpu | cuda | mps (auto: CUDA when present).", "auto", recipe=False)
    dtype: str = setting("auto | float32 | bfloat16 | float16 (auto: float32 on the CPU, bfloat16 mixed precision "
                         "on a GPU that has it).", "auto", recipe=False)
    allow_pickle: bool = setting("Load pickle (.bin/.pt) weights; they can run code.", False, recipe=False)
    trust_remote_code: bool = setting("Run Python code shipped with the model.", False, recipe=False)

    def __post_init__(self) -> None:
        self.data = str(self.data)
        self.eval_data = None if self.eval_data is None else str(self.eval_data)
        if self.task is not None and self.task not in TASKS:
            raise SlmError(f"--task {self.task}: choose one of {', '.join(TASKS)}")
        if self.merge and not self.lora:
            raise SlmError("--merge merges a LoRA adapter into its base; add --lora (a full fine-tune already "
                           "writes a plain checkpoint)")
        positive = {"--lora-rank": self.lora_rank, "--lora-alpha": self.lora_alpha, "--batch-size": self.batch_size,
                    "--grad-accum": self.grad_accum, "--max-length": self.max_length}
        for flag, value in positive.items():
            if value <= 0:
                raise SlmError(f"{flag} {value}: must be at least 1")
        if self.max_steps is not None and self.max_steps <= 0:
            raise SlmError(f"--max-steps {self.max_steps}: must be at least 1")
        if not self.epochs > 0:
            raise SlmError(f"--epochs {self.epochs}: must be above 0")
        if self.lr is not None and not 0 < self.lr < 1:
            raise SlmError(f"--lr {self.lr}: must be between 0 and 1")
        if not 0 <= self.weight_decay < 1:
            raise SlmError(f"--weight-decay {self.weight_decay}: must be in [0, 1)")
        if self.max_grad_norm < 0:
            raise SlmError(f"--max-grad-norm {self.max_grad_norm}: must be 0 (no clipping) or more")
        if not 0 <= self.lora_dropout < 1:
            raise SlmError(f"--lora-dropout {self.lora_dropout}: must be in [0, 1)")
        if not 0 < self.eval_fraction < 1:
            raise SlmError(f"eval fraction {self.eval_fraction}: must be between 0 and 1")
        for flag, value in {"--eval-every": self.eval_every, "--save-every": self.save_every}.items():
            if value < 0:
                raise SlmError(f"{flag} {value}: must be 0 or more")
        if self.device.split(":")[0] not in DEVICES:
            raise SlmError(f"--device {self.device}: choose one of {', '.join(DEVICES)}")
        check_trainer_device(self.device)
        if self.dtype not in DTYPES:
            raise SlmError(f"--dtype {self.dtype}: choose one of {', '.join(DTYPES)}")
        if not self.lora_targets.strip():
            raise SlmError("--lora-targets is empty; give module names (q_proj,v_proj) or all-linear")

    def check_files(self) -> None:
        """The data files are there (apart from the values, so a recipe's settings are checked when it is read,
        before an earlier stage has written the data)."""
        for path in (self.data, self.eval_data):
            if path is not None and not Path(path).is_file():
                raise SlmError(f"{path}: no such file" if not Path(path).exists() else f"{path}: not a file")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (2e-4 if self.lora else 5e-5)

    def targets(self) -> str | list[str]:
        if self.lora_targets.strip() == "all-linear":
            return "all-linear"
        return [name.strip() for name in self.lora_targets.split(",") if name.strip()]

    def record(self) -> dict:
        return asdict(self)
