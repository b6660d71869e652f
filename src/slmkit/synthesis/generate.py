"""`synth(teacher, prompts, out, SynthConfig())`: a teacher answers prompts, the answers become chat records.

Life cycle: the settings and the prompts are checked, then the teacher (it must be a causal LM), then what
earlier runs wrote to `out` (refused if it is another run's); only then is anything written. Each
(prompt, sample) pair not answered before is rendered with the teacher's chat template under the style's
teacher system prompt, answered (a torch teacher `batch_size` prompts per forward pass, others one at a time),
filtered, checked for near-duplicates against every answer kept so far, and appended to the kept or the
dropped file at once.

Every pair samples with its own seed, made from the run's seed and the pair: an answer does not depend on the
batch it was in, nor on whether the run was interrupted and resumed.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from slmkit.errors import SlmError
from slmkit.models.checkpoint import claimed
from slmkit.results import StageResult
from slmkit.runtime import SamplingConfig, as_runtime, open_model
from slmkit.runtime.batched import answer_batch, batches_rows
from slmkit.runtime.generate import applies_template, prompt_ids
from slmkit.synthesis.config import SynthConfig
from slmkit.synthesis.filters import REASONS, NearDuplicates, drop_reason
from slmkit.synthesis.output import SynthOutput, chat_record, check_output_path
from slmkit.synthesis.prompts import Style, read_prompts, style_for


Progress = Callable[[int, int], None] | None


def synth(teacher, prompts: str | Path | list[str], out: str | Path, config: SynthConfig | None = None, *,
          progress: Progress = None) -> StageResult:
    """Have `teacher` (a spec, or a model from open_model / slmkit.load) answer `prompts` (a .jsonl / .txt file,
    or a list) into the chat JSONL `out`, resuming what an earlier run of the same settings wrote. The result's
    `out` is that file; its summary says what this run did (`generated` = `kept` + every dropped reason) and what
    the files hold now:

    out, dropped_out: the kept and the dropped records' files; teacher, backend, style;
    prompts: prompts answered (after n); pairs: prompts x samples_per_prompt; skipped: pairs an earlier run
    answered; generated, kept; dropped: reason -> answers, every reason listed; records: kept records in `out`,
    earlier runs' included; dropped_records: reason -> records in the dropped file, earlier runs' included;
    new_tokens; seconds (generating); tokens_per_s; repaired: files whose partial last line (a crash's) was cut.

    Example: `slmkit.synth("smollm2-135m-instruct", "prompts.txt", "data.jsonl", SynthConfig(style="orca"))`.
    """
    config = config or SynthConfig()
    prompts_file = prompts if isinstance(prompts, str | Path) else None
    prompts = read_prompts(prompts) if prompts_file else list(prompts)
    if not prompts:
        raise SlmError("no prompts to answer")
    out = check_output_path(out, reads=[prompts_file])
    with claimed(out):  # two runs appending to one file would interleave their records
        lm = open_model(teacher) if isinstance(teacher, str) else as_runtime(teacher)
        lm.require("causal-lm", "writing training data")
        lm.require_tokenizer("writing training data")
        style = style_for(config.style, config.system)
        with SynthOutput(out, prompts, lm.spec, style.name) as output:
            return _answer_all(lm, prompts, output, style, config, progress)


def pair_seed(seed: int, prompt_index: int, sample: int) -> int:
    """A pair's own seed (31 bits: llama.cpp takes a uint32, torch anything), the same in every run."""
    digest = hashlib.sha256(f"{seed}:{prompt_index}:{sample}".encode()).digest()
    return int.from_bytes(digest[:4], "little") >> 1


def _answer_all(lm, prompts: list[str], output: SynthOutput, style: Style, config: SynthConfig,
                progress: Progress) -> StageResult:
    used = prompts[:config.n] if config.n else prompts
    pairs = [(index, sample) for index in range(len(used)) for sample in range(config.samples_per_prompt)]
    pending = [pair for pair in pairs if pair not in output.done]
    seed = config.sampling.seed if config.sampling.seed is not None else secrets.randbits(31)
    duplicates = NearDuplicates(config.filters.dedup_threshold, config.filters.num_perm)
    for answer in output.kept_answers:
        duplicates.is_duplicate(answer)  # indexes it
    counts, tokens, seconds = Counter(), 0, 0.0
    chunk = config.batch_size if batches_rows(lm) else 1
    for start in range(0, len(pending), chunk):
        batch = pending[start:start + chunk]
        began = time.perf_counter()
        answers = _answer(lm, batch, used, style, config.sampling, seed)
        seconds += time.perf_counter() - began
        for index, sample in batch:
            answer = answers.get((index, sample))
            text = answer.text.strip() if answer else ""
            tokens += answer.tokens if answer else 0
            reason = ("prompt_too_long" if answer is None else
                      drop_reason(used[index], text, answer.finished, config.filters) or
                      ("near_duplicate" if duplicates.is_duplicate(text) else None))
            meta = {"prompt_index": index, "sample": sample, "teacher": lm.spec, "style": style.name}
            output.write(chat_record(used[index], text, style.record_system, meta), dropped=reason)
            counts[reason or "kept"] += 1
        if progress:
            progress(min(start + chunk, len(pending)), len(pending))
    return _result(lm, output, style, used, pairs, pending, counts, tokens, seconds)


def _answer(lm, batch: list[tuple[int, int]], prompts: list[str], style: Style, sampling: SamplingConfig,
            seed: int) -> dict:
    """(prompt index, sample) -> the teacher's Answer, for the pairs whose prompt leaves room for
    max_new_tokens in the teacher's context (the others get none: "prompt_too_long")."""
    rows = {pair: teacher_ids(lm, prompts[pair[0]], style) for pair in batch}
    fitting = [pair for pair in batch if len(rows[pair]) + sampling.max_new_tokens <= lm.context]
    if not fitting:
        return {}
    samplings = [replace(sampling, seed=pair_seed(seed, *pair)) for pair in fitting]
    return dict(zip(fitting, answer_batch(lm, [rows[pair] for pair in fitting], samplings)))


def teacher_ids(lm, prompt: str, style: Style) -> list[int]:
    """The token ids the teacher answers: the prompt under the style's teacher system prompt, templated."""
    messages = ([{"role": "system", "content": style.teacher_system}] if style.teacher_system else [])
    messages.append({"role": "user", "content": prompt})
    templated = applies_template(lm)
    return prompt_ids(lm.tokenizer, messages, templated)


def _result(lm, output: SynthOutput, style: Style, used: list[str], pairs: list, pending: list, counts: Counter,
            tokens: int, seconds: float) -> StageResult:
    dropped = {reason: counts[reason] for reason in REASONS}
    dropped_records = {reason: output.dropped_before[reason] + dropped[reason] for reason in REASONS}
    return StageResult(dict(
        out=str(output.paths["kept"]), dropped_out=str(output.paths["dropped"]), teacher=lm.spec,
        backend=lm.backend, style=style.name, prompts=len(used), pairs=len(pairs), skipped=len(pairs) - len(pending),
        generated=len(pending), kept=counts["kept"], dropped=dropped,
        records=len(output.kept_answers) + counts["kept"], dropped_records=dropped_records, new_tokens=tokens,
        seconds=round(seconds, 3), tokens_per_s=tokens / seconds if tokens else None,
        repaired=output.repaired), Path(output.paths["kept"]))
