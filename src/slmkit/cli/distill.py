"""`slm distill --teacher T STUDENT --data PATH --out DIR`: train a student on a teacher's distributions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slmkit.cli.common import ModelArg
from slmkit.cli.finetune import report_training, training_bar
from slmkit.cli.options import with_config
from slmkit.verbs import distill
from slmkit.verbs.distill import DistillConfig


@with_config(DistillConfig, adds=("out", "force", "json"))
def distill_command(
    config: DistillConfig,
    student: ModelArg = ...,
    teacher: Annotated[str, typer.Option("--teacher", "-t", help="Alias, directory, .gguf or hub id.")] = ...,
    *, out: Path, force: bool, json_output: bool,
) -> None:
    """Distill a teacher into a student: the student learns the teacher's next-token distributions.

    Teacher and student must share token ids (checked before the first step). A chat distils on the
    assistant's tokens only; a classifier on the teacher's soft labels. Checkpoints and --resume as in
    slm finetune.

    Examples:
      slm student smollm2-135m-instruct --depth 20 --out out/student
      slm distill out/student -t smollm2-135m-instruct --data wiki.txt --max-steps 500 --out out/kd
      slm distill out/clf-student -t out/clf --data train.tsv --temperature 2 --alpha-ce 0.5 --out out/kd-clf
      slm student out/clf --layers 0,2,4 --out out/clf-3
      slm distill out/clf-3 -t out/clf --data train.tsv --hidden-loss mse --attention-loss --out out/kd-clf-3
      slm distill out/student -t smollm2-135m-instruct --data chats.jsonl --loss jsd --on-policy-ratio 0.5 --out out/gkd
    """
    result = distill.run(config, student, out, progress=training_bar, force=force, teacher=teacher)
    report_training(result, {"teacher": teacher, "student": student, "out": str(out)}, f"{student} — distilled",
                    json_output)
