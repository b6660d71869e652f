"""`slm synth --teacher T --prompts P --out FILE.jsonl`: a teacher writes chat training data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slmkit.cli.common import (AllowPickleOpt, BackendOpt, DeviceOpt, DtypeOpt, JsonOpt, TrustRemoteCodeOpt,
                               WeightsOpt, load_model, print_json, print_table, progress_bar, stderr)
from slmkit.cli.generate import (MaxNewOpt, MinPOpt, RepetitionOpt, TemperatureOpt, TopKOpt, TopPOpt)
from slmkit.models.catalog import DEFAULT_MODEL


def synth_command(
    prompts: Annotated[Path, typer.Option(help=".jsonl ({\"prompt\": ...} per line) or .txt (one per line).")],
    out: Annotated[Path, typer.Option(help="Chat JSONL to append to (`slm finetune` reads it); dropped answers "
                                           "go beside it, in NAME.dropped.jsonl. A re-run resumes it.")],
    teacher: Annotated[str, typer.Option("--teacher", "-t", help="Alias, directory, .gguf or hub id.")] = DEFAULT_MODEL,
    n: Annotated[int | None, typer.Option("--n", help="Answer only the first N prompts.")] = None,
    samples_per_prompt: Annotated[int, typer.Option(help="Answers per prompt (needs --temperature > 0).")] = 1,
    style: Annotated[str, typer.Option(help="plain: --system both ways. orca: the teacher answers under a "
                                            "step-by-step instruction (--system replaces it), the record keeps a "
                                            "generic system prompt (Orca 2's prompt erasing).")] = "plain",
    system: Annotated[str | None, typer.Option(help="System prompt (see --style).")] = None,
    temperature: TemperatureOpt = 0.7, top_p: TopPOpt = 1.0, top_k: TopKOpt = 0, min_p: MinPOpt = 0.0,
    repetition_penalty: RepetitionOpt = 1.0,
    seed: Annotated[int | None, typer.Option(help="Seeds every (prompt, sample) pair: the same answers in every "
                                                  "run, resumed or not.")] = None,
    max_new_tokens: MaxNewOpt = 256,
    batch_size: Annotated[int | None, typer.Option(help="torch teacher: prompts per forward pass [default: the "
                                                        "size measured fastest on 2 CPU cores; a GPU takes "
                                                        "more].")] = None,
    min_words: Annotated[int, typer.Option(help="Drop shorter answers.")] = 3,
    max_words: Annotated[int, typer.Option(help="Drop longer answers.")] = 1000,
    keep_unfinished: Annotated[bool, typer.Option(help="Keep answers cut off at --max-new-tokens.")] = False,
    repeat_ngram: Annotated[int, typer.Option(help="Word n-gram that measures loops.")] = 4,
    max_repeat_fraction: Annotated[float, typer.Option(help="Drop answers with more of their n-grams "
                                                            "repeated.")] = 0.3,
    echo_fraction: Annotated[float, typer.Option(help="Drop answers with this share of word 3-grams from the "
                                                      "prompt.")] = 0.8,
    dedup_threshold: Annotated[float, typer.Option(help="MinHash Jaccard similarity at which an answer is a "
                                                        "near-duplicate of a kept one.")] = 0.8,
    backend: BackendOpt = "auto", device: DeviceOpt = "auto", dtype: DtypeOpt = "auto", weights: WeightsOpt = "float32",
    allow_pickle: AllowPickleOpt = False, trust_remote_code: TrustRemoteCodeOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Have a teacher answer prompts; keep the good answers as chat records for `slm finetune`.

    Dropped (and counted by reason): empty, cut off, too short or too long, looping, refusals,
    echoes of the prompt, near-duplicates of a kept answer. Run again, it goes on where it stopped.

    Examples:
      slm synth --prompts questions.txt --out data.jsonl --n 100
      slm synth -t ./teacher --prompts q.jsonl --out orca.jsonl --style orca --samples-per-prompt 4 --seed 0
      slm synth -t model.q4_0.gguf --prompts q.txt --out data.jsonl --temperature 0
    """
    from slmkit.runtime import SamplingConfig
    from slmkit.synth import FilterConfig, SynthConfig, read_prompts, synth
    from slmkit.synth.output import check_output_path

    # slmkit.synth is imported here, not above: it imports torch, which `slm --help` should not wait for.
    batch = {"batch_size": batch_size} if batch_size is not None else {}
    config = SynthConfig(
        style=style, system=system, samples_per_prompt=samples_per_prompt, n=n, **batch,
        sampling=SamplingConfig(temperature, top_p, top_k, min_p, repetition_penalty, seed, max_new_tokens),
        filters=FilterConfig(min_words=min_words, max_words=max_words, keep_unfinished=keep_unfinished,
                             repeat_ngram=repeat_ngram, max_repeat_fraction=max_repeat_fraction,
                             echo_fraction=echo_fraction, dedup_threshold=dedup_threshold))
    questions = read_prompts(prompts)  # before the model loads: a bad file fails at once
    check_output_path(out, reads=[prompts])
    lm = load_model(teacher, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, backend=backend,
                    weights=weights, device=device, dtype=dtype)
    with progress_bar("answering") as update:
        result = synth(lm, questions, out, config, progress=update)
    for path in result.repaired:
        stderr.print(f"{path}: cut off a partial last line (a run stopped mid-write)")
    if json_output:
        print_json(result.to_dict())
        return
    rows = {key: value for key, value in result.to_dict().items()
            if key not in ("dropped", "dropped_records", "repaired")}
    rows.update({f"dropped: {reason}": count for reason, count in result.dropped.items() if count})
    print_table(f"synth: {result.records} records in {result.out}", rows)
