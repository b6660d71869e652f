"""`slm student TEACHER --out DIR`: a smaller model to distill the teacher into."""

from __future__ import annotations

from pathlib import Path

from slmkit.cli.common import ModelArg, print_result, progress_bar
from slmkit.cli.options import with_config
from slmkit.models.catalog import DEFAULT_MODEL
from slmkit.verbs import student
from slmkit.verbs.student import StudentSettings


@with_config(StudentSettings, adds=("out", "force", "json"))
def student_command(
    settings: StudentSettings,
    teacher: ModelArg = DEFAULT_MODEL,
    *, out: Path, force: bool, json_output: bool,
) -> None:
    """Make a student: the teacher's blocks kept or spaced out, a fresh config, or structured pruning.

    Examples:
      slm student minilm-l6 --layers 0,2,4 --out out/student3
      slm student bert-base --depth 6 --out out/distilbert-like
      slm student --target-params 100M --calib wiki.txt --out out/student100m
      slm student --config small.json --out out/fresh
    """
    result = student.run(settings, teacher, out, progress=progress_bar, force=force)
    print_result(f"{teacher} — student", {"teacher": teacher, "out": str(out), **result.summary}, json_output)
