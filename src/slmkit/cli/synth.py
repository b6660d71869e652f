"""`slm synth [TEACHER] --prompts P --out FILE.jsonl`: a teacher writes chat training data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slmkit.cli.common import JsonOpt, load_model, print_json, print_table, progress_bar, stderr
from slmkit.cli.generate import OptionalModelArg, one_model
from slmkit.cli.options import with_config
from slmkit.synth.config import SynthSettings

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
    # Here, not above: answering imports torch, which `slm --help` should not wait for.
    from slmkit.synth import read_prompts, synth
    from slmkit.synth.output import check_output_path

    spec = one_model(teacher, teacher_option, flags="-t/--teacher", what="teacher")
    questions = read_prompts(config.prompts)  # before the model loads: a bad file fails at once
    check_output_path(out, reads=[config.prompts])
    lm = load_model(spec, **config.runtime_options(), **config.open_options())
    with progress_bar("answering") as update:
        result = synth(lm, questions, out, config.synth_config(), progress=update)
    for path in result.repaired:
        stderr.print(f"{path}: cut off a partial last line (a run stopped mid-write)")
    if json_output:
        print_json(result.to_dict())
        return
    rows = {key: value for key, value in result.to_dict().items()
            if key not in ("dropped", "dropped_records", "repaired")}
    rows.update({f"dropped: {reason}": count for reason, count in result.dropped.items() if count})
    print_table(f"synth: {result.records} records in {result.out}", rows)
