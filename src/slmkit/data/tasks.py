"""The training tasks: one record per task says which model it trains, how its data is read and batched, what
its evaluation reports, and which training methods take it.

Read by the configs (to check --task), data.training (examples and collators), train.lifecycle (the model's
head, packing, metrics, held-back rows), finetune.lora (peft's task type) and distill (the tasks it takes).
It lives in data/, below train/, because data.training reads it too; and it imports nothing, because the CLI
reads it to check --task before anything heavy is loaded. That is also why the example builder and the
collator are named (functions of data.training), not held.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Task:
    """One training task.

    Args:
        name: what --task says.
        kind: the head the model is opened with (models.kinds): causal-lm | classifier | seq2seq.
        accepts: the kinds of checkpoint it trains from; another is refused before the model is loaded.
        peft_task: peft's TaskType for a LoRA adapter.
        schema: the JSONL schema of its records (data.loaders.JSONL_SCHEMAS); None: `text<TAB>label` rows.
        examples / collator: the data.training functions that build its examples and batch them.
        metric: what evaluation reports beside the loss (train.metrics): perplexity | accuracy.
        packable: language-model examples, which --packing fits several to a row.
        classes: each example is a class id over the training file's labels: the classifier's head is made
            for them, and the held-back rows are written beside the model for `slm eval`.
        distill: distillation takes it; on_policy: its records hold prompts the student can answer (GKD).
    """

    name: str
    kind: str
    accepts: tuple[str, ...]
    peft_task: str
    schema: str | None
    examples: str
    collator: str
    metric: str
    packable: bool = False
    classes: bool = False
    distill: bool = False
    on_policy: bool = False


def _language_model(name: str, schema: str, *, on_policy: bool = False) -> Task:
    """A causal-LM task: next-token loss on the labelled tokens, packable, distillable."""
    return Task(name, "causal-lm", ("causal-lm",), "CAUSAL_LM", schema, f"{name}_examples", "lm_collator",
                "perplexity", packable=True, distill=True, on_policy=on_policy)


TASKS: dict[str, Task] = {task.name: task for task in (
    _language_model("chat", "messages", on_policy=True),
    _language_model("completion", "prompt_completion", on_policy=True),
    _language_model("text", "text"),
    # A classifier's head is new, so an encoder or a decoder trains into one as well.
    Task("classification", "classifier", ("classifier", "encoder", "causal-lm"), "SEQ_CLS", None,
         "classification_examples", "padding_collator", "accuracy", classes=True, distill=True),
    Task("seq2seq", "seq2seq", ("seq2seq",), "SEQ_2_SEQ_LM", "seq2seq", "seq2seq_examples", "seq2seq_collator",
         "perplexity"),
)}


def task_names(wanted: str | None = None) -> tuple[str, ...]:
    """The tasks' names, in the table's order; with `wanted`, of those whose flag of that name is set
    (`task_names("distill")`)."""
    return tuple(name for name, task in TASKS.items() if wanted is None or getattr(task, wanted))
