"""`slm synth [TEACHER] --prompts P --out FILE.jsonl`: a teacher writes chat training data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slmkit.cli.common import JsonOpt, print_json, print_table, progress_bar, stderr
from slmkit.cli.generate import OptionalModelArg, one_model
from slmkit.cli.options import with_config
from slmkit.verbs import synth
from slmkit.verbs.synth import SynthSettings

# The teacher comes first, as the model does in every verb; -t/--teacher is the older spelling, kept working.
TeacherOpt = Annotated[str | None, typer.Option("--teacher", "-t", help="Same as the teacher argument.")]


@with_config(SynthSettings)
def synth_command(
    config: SynthSettings,
    teacher: OptionalModelArg = None,
    out: Annotated[Path, typer.Option(help="Chat JSONL to append to (`slm finetune` reads it); dropped answers "
                                           "go beside it, in NAME.dropped.jsonl. A re-run resumes it.")] = ...,
    teacher_option: TeacherOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Have a teacher answer prompts; keep the good answers as chat records for `slm finetune`.

    Dropped (and counted by reason): empty, cut off, too short or too long, looping, refusals,
    echoes of the prompt, near-duplicates of a kept answer. Run again, it goes on where it stopped;
    with --seed, every (prompt, sample) pair gets the same answer in every run, resumed or not.

    Examples:
      slm synth --prompts questions.txt --out data.jsonl --n 100
      slm synth ./teacher --prompts q.jsonl --out orca.jsonl --style orca --samples-per-prompt 4 --seed 0
      slm synth model.q4_0.gguf --prompts q.txt --out data.jsonl --temperature 0
    """
    spec = one_model(teacher, teacher_option, flags="-t/--teacher", what="teacher")
    result = synth.run(config, spec, out, progress=progress_bar).summary
    for path in result["repaired"]:
        stderr.print(f"{path}: cut off a partial last line (a run stopped mid-write)")
    if json_output:
        print_json(result)
        return
    rows = {key: value for key, value in result.items() if key not in ("dropped", "dropped_records", "repaired")}
    rows.update({f"dropped: {reason}": count for reason, count in result["dropped"].items() if count})
    print_table(f"synth: {result['records']} records in {result['out']}", rows)
