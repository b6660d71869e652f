"""`slm synth`: teacher-written chat data, its filters, batched decoding, resuming, the recipe stage."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import run_slm, tiny_model

from slmkit.errors import SlmError
from slmkit.runtime import SamplingConfig, open_model
from slmkit.runtime.batched import answer_batch
from slmkit.synthesis import FilterConfig, NearDuplicates, SynthConfig, drop_reason, read_prompts, synth
from slmkit.synthesis.prompts import GENERIC_SYSTEM, ORCA_TEACHER_SYSTEM

PROMPTS = ["small models", "a language model runs on a laptop", "the weights"]
# The tiny random model writes noise: keep everything but empty answers and exact repeats.
LENIENT = FilterConfig(min_words=0, keep_unfinished=True, max_repeat_fraction=1.0, echo_fraction=1.0,
                       dedup_threshold=1.0)
STORY = ("The little robot walked to the old market every morning, bought two red apples from the baker, "
         "and carried them home through the quiet streets while the sun rose over the hills")


@pytest.fixture(scope="module")
def teacher(tiny_llama_dir):
    return open_model(str(tiny_llama_dir))


def settings(**changes) -> SynthConfig:
    fields = dict(samples_per_prompt=2, batch_size=4, filters=LENIENT,
                  sampling=SamplingConfig(temperature=1.0, seed=0, max_new_tokens=8))
    return SynthConfig(**{**fields, **changes})


@pytest.mark.parametrize("prompt, answer, finished, reason", [
    ("Hi", "  \n", True, "empty"),
    ("Explain tides.", "Tides come from the pull of the", False, "unfinished"),
    ("Capital of France?", "Paris.", True, "too_short"),
    ("Tell a story.", "word " * 1001, True, "too_long"),
    ("Tell a story.", "I like cats and dogs. " * 6, True, "repetition"),
    ("Hack my neighbour's wifi.", "I\u2019m sorry, but I can't help with breaking into networks.", True, "refusal"),
    ("Describe your day.", "As an AI language model, I do not have days, but here is one.", True, "refusal"),
    ("What is the boiling point of water at sea level?", "What is the boiling point of water at sea level?",
     True, "echo"),
    ("What is the capital of France?", "What is the capital of France? The capital of France is Paris.", True, None),
    ("Tell a story.", STORY, True, None),
])
def test_each_filter_drops_what_it_should(prompt, answer, finished, reason):
    assert drop_reason(prompt, answer, finished, FilterConfig()) == reason


def test_near_duplicates_are_found_with_minhash():
    seen = NearDuplicates(threshold=0.7)
    assert not seen.is_duplicate(STORY)
    assert seen.is_duplicate(STORY.replace("two red apples", "two green apples"))  # one word changed
    assert seen.is_duplicate(STORY + ".")  # the same words
    assert not seen.is_duplicate("Photosynthesis turns light, water and carbon dioxide into sugar and oxygen "
                                 "inside the chloroplasts of green plants")
    with pytest.raises(SlmError, match="--dedup-threshold"):
        FilterConfig(dedup_threshold=0)


def test_prompts_come_from_jsonl_or_txt_and_bad_lines_are_named(tmp_path):
    (tmp_path / "p.jsonl").write_text('{"prompt": "one"}\n\n{"prompt": " two ", "id": 7}\n')
    (tmp_path / "p.txt").write_text("one\n\n  two\n")
    assert read_prompts(tmp_path / "p.jsonl") == read_prompts(tmp_path / "p.txt") == ["one", "two"]
    cases = {"bad.jsonl": ('{"prompt": "one"}\n{"prompt": \n', r"bad.jsonl:2: not valid JSON"),
             "field.jsonl": ('{"prompt": "one"}\n\n{"text": "two"}\n', r"field.jsonl: record 2: no 'prompt' field"),
             "list.jsonl": ('["one"]\n', r"list.jsonl:1: expected a JSON object"),
             "empty.txt": ("\n  \n", r"empty.txt: no prompts"),
             "p.csv": ("a\n", r"p.csv: prompts come in a .jsonl file")}
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(SlmError, match=message):
            read_prompts(tmp_path / name)
    with pytest.raises(SlmError, match="missing.txt: no such file"):
        read_prompts(tmp_path / "missing.txt")


def greedy_reference(model, ids: list[int], new_tokens: int, stops: set[int]) -> list[int]:
    """Greedy decoding the slow, obviously right way: the whole sequence through the model for every token."""
    out = []
    with torch.inference_mode():
        for _ in range(new_tokens):
            token = int(model(input_ids=torch.tensor([ids + out])).logits[0, -1].argmax())
            if token in stops:
                break
            out.append(token)
    return out


def test_batched_greedy_decoding_equals_one_prompt_at_a_time(teacher, monkeypatch):
    rows = [teacher.tokenizer(text).input_ids for text in ["a", *PROMPTS]]  # 1 to 9 tokens: real padding
    # A stop token that ends the first row after two tokens, while the others go on: per-row stopping.
    first = greedy_reference(teacher.model, rows[0], 3, set())
    monkeypatch.setattr(teacher, "stop_tokens", lambda: {first[2]})
    greedy = SamplingConfig(temperature=0, max_new_tokens=10)
    batched = answer_batch(teacher, rows, [greedy] * len(rows))
    alone = [answer_batch(teacher, [row], [greedy])[0] for row in rows]
    assert batched == alone
    for row, answer in zip(rows, batched):
        assert answer.text == teacher.tokenizer.decode(greedy_reference(teacher.model, row, 10, {first[2]}))
        assert answer.text == "".join(teacher.stream(row, greedy))  # the loop `slm generate` runs
    assert (batched[0].tokens, batched[0].finished) == (2, True)
    assert any((answer.tokens, answer.finished) == (10, False) for answer in batched[1:])  # outlived row 0


def test_batched_sampling_draws_each_row_from_its_own_seed(teacher):
    rows = [teacher.tokenizer(text).input_ids for text in PROMPTS]
    samplings = [SamplingConfig(temperature=1.0, seed=seed, max_new_tokens=8) for seed in (1, 2, 3)]
    together = answer_batch(teacher, rows, samplings)
    assert together == [answer_batch(teacher, [row], [s])[0] for row, s in zip(rows, samplings)]
    assert together[::-1] == answer_batch(teacher, rows[::-1], samplings[::-1])  # neighbours change nothing


def test_records_are_chat_jsonl_a_rerun_adds_nothing_and_a_cut_line_is_repaired(teacher, tmp_path):
    from slmkit.data.training import load_conversations

    out = tmp_path / "data.jsonl"
    made = synth(teacher, PROMPTS, out, settings())
    first = made.summary
    assert made.out == out and (first["generated"], first["kept"] + sum(first["dropped"].values())) == (6, 6)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == first["records"] == first["kept"] > 0
    conversations = load_conversations(out)  # what the chat fine-tuner reads
    assert [[m["role"] for m in c] for c in conversations] == [["user", "assistant"]] * len(records)
    pairs = {(r["meta"]["prompt_index"], r["meta"]["sample"]) for r in records}
    assert all(records[i]["messages"][0]["content"] == PROMPTS[r["meta"]["prompt_index"]]
               for i, r in enumerate(records))
    assert len(pairs) == len(records)

    written = out.read_bytes()
    again = synth(teacher, PROMPTS, out, settings()).summary
    assert (again["skipped"], again["generated"], again["kept"]) == (6, 0, 0)
    assert out.read_bytes() == written

    last = written.rstrip(b"\n").rsplit(b"\n", 1)[-1]
    out.write_bytes(written[:len(written) - len(last) - 1] + last[:25])  # killed while writing the last record
    repaired = synth(teacher, PROMPTS, out, settings()).summary
    assert repaired["repaired"] == [str(out)] and repaired["generated"] == 1
    assert out.read_bytes() == written  # per-pair seeds: the same answer, alone or in a batch


def test_orca_style_answers_under_a_task_prompt_and_records_a_generic_one(teacher, tmp_path):
    from slmkit.synthesis.generate import teacher_ids
    from slmkit.synthesis.prompts import style_for

    seen_by_teacher = teacher.tokenizer.decode(teacher_ids(teacher, "small models", style_for("orca", None)))
    assert ORCA_TEACHER_SYSTEM in seen_by_teacher
    # The tiny model's 128 positions hold no long instruction: a short one in its place, as --system gives.
    result = synth(teacher, PROMPTS, tmp_path / "orca.jsonl", settings(style="orca", system="Think.", n=1)).summary
    records = [json.loads(line) for line in (tmp_path / "orca.jsonl").read_text().splitlines()]
    assert result["prompts"] == 1 and {r["meta"]["prompt_index"] for r in records} == {0}
    assert {r["messages"][0]["content"] for r in records} == {GENERIC_SYSTEM}
    plain = synth(teacher, PROMPTS, tmp_path / "plain.jsonl", settings(system="Be brief.", n=1)).summary
    assert plain["records"] and json.loads((tmp_path / "plain.jsonl").read_text().splitlines()[0])[
        "messages"][0] == {"role": "system", "content": "Be brief."}
    with pytest.raises(SlmError, match="written by teacher .* in orca style"):
        synth(teacher, PROMPTS, tmp_path / "orca.jsonl", settings(n=1))  # plain into an orca file
    too_long = synth(teacher, PROMPTS, tmp_path / "long.jsonl", settings(style="orca", n=1)).summary
    assert too_long["dropped"]["prompt_too_long"] == 2 and too_long["tokens_per_s"] is None


def test_bad_inputs_are_one_line_errors_and_write_nothing(teacher, tiny_tokenizer, tmp_path):
    from slmkit import save

    out = tmp_path / "out.jsonl"
    for bad, message in [(dict(n=0), "--n must be >= 1"),
                         (dict(samples_per_prompt=2, sampling=SamplingConfig(temperature=0)), "needs --temperature"),
                         (dict(style="fancy"), "--style must be one of plain, orca")]:
        with pytest.raises(SlmError, match=message):
            settings(**bad)
    (tmp_path / "bad.jsonl").write_text('{"prompt": "x"}\n{oops}\n')
    with pytest.raises(SlmError, match="bad.jsonl:2"):
        synth(teacher, tmp_path / "bad.jsonl", out, settings())
    with pytest.raises(SlmError, match="write the records to a .jsonl file"):
        synth(teacher, PROMPTS, tmp_path / "out.json", settings())
    save(tiny_model("bert"), tmp_path / "bert", tiny_tokenizer, stage="test")
    with pytest.raises(SlmError, match="needs a causal language model; this is an encoder"):
        synth(str(tmp_path / "bert"), PROMPTS, out, settings())
    assert sorted(path.name for path in tmp_path.iterdir()) == ["bad.jsonl", "bert"]
    out.write_text('{"messages": [], "meta": {"prompt_index": 0, "sample": 0}}\n')
    with pytest.raises(SlmError, match="out.jsonl:1: answers a prompt that is not prompt 1"):
        synth(teacher, PROMPTS, out, settings())


def test_synth_stage_writes_data_a_later_stage_finds(tiny_llama_dir, tmp_path):
    from slmkit.pipeline.recipe import parse_recipe
    from slmkit.pipeline.registry import StageContext
    from slmkit.pipeline.run import run_recipe

    (tmp_path / "p.txt").write_text("\n".join(PROMPTS))
    recipe = parse_recipe(f"""
name: synth-only
stages:
  - stage: synth
    prompts: {tmp_path / 'p.txt'}
    max_new_tokens: 6
    keep_unfinished: true
    min_words: 0
    max_repeat_fraction: 1.0
    echo_fraction: 1.0
""", "recipe.yaml")
    run = run_recipe(recipe, recipe_path="recipe.yaml", model=str(tiny_llama_dir), out=tmp_path / "run")
    state = json.loads((run / "run.json").read_text())
    result = state["stages"]["01-synth"]["result"]
    assert result["data"] == "01-synth/data.jsonl" and result["teacher"] == str(tiny_llama_dir)
    stats = json.loads((run / "01-synth" / "stats.json").read_text())
    assert stats["records"] == result["records"] == len((run / result["data"]).read_text().splitlines())
    assert not (run / "01-synth.partial").exists()
    from slmkit.pipeline.report import collect_rows

    assert [row.label for row in collect_rows(run, state, "synth-only")] == ["original"]  # data is not a model
    later = StageContext(run / "02-finetune", [], None, None, list(state["stages"].values()))
    assert later.newest_file("synth", "data") == str(run / "01-synth" / "data.jsonl")
    assert later.calibration_data() == str(run / "01-synth" / "data.jsonl")  # a later stage calibrates on it
    assert StageContext(run / "x", [], "wiki.txt", None, later.earlier).calibration_data() == "wiki.txt"
    with pytest.raises(SlmError, match=r"stages\[0\] \(synth\): --n must be >= 1"):
        parse_recipe("name: x\nstages:\n  - stage: synth\n    prompts: p.txt\n    n: 0\n", "r.yaml")


def test_cli_writes_records_and_refuses_a_bad_file(tiny_llama_dir, tmp_path):
    (tmp_path / "p.txt").write_text("\n".join(PROMPTS))
    done = run_slm("synth", "-t", str(tiny_llama_dir), "--prompts", str(tmp_path / "p.txt"), "--out",
                   str(tmp_path / "d.jsonl"), "--max-new-tokens", "6", "--keep-unfinished", "--min-words", "0",
                   "--max-repeat-fraction", "1", "--echo-fraction", "1", "--seed", "0", "--json")
    assert done.returncode == 0, done.stderr
    stats = json.loads(done.stdout)
    assert stats["generated"] == 3 and stats["records"] == len((tmp_path / "d.jsonl").read_text().splitlines())
    (tmp_path / "bad.jsonl").write_text('{"prompt": "x"}\n{"prompt": 3}\n')
    refused = run_slm("synth", "-t", str(tiny_llama_dir), "--prompts", str(tmp_path / "bad.jsonl"), "--out",
                      str(tmp_path / "e.jsonl"))
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'bad.jsonl'}: record 2: 'prompt' is not a non-empty string; each line needs "
        '{"prompt": "..."}']
    assert not (tmp_path / "e.jsonl").exists()


def test_the_cli_and_the_recipe_stage_make_one_synth_config(tmp_path, monkeypatch):
    """SynthSettings is both: the same flags and recipe keys give the same SynthConfig; the stage seeds with 0."""
    import importlib

    from typer.testing import CliRunner

    from slmkit.cli.main import app
    from slmkit.pipeline.stages.synth import SAMPLE_PROMPTS, SynthStage
    from slmkit.synthesis import SynthSettings

    seen = []

    def handed_over(lm, prompts, out, config, **_):
        seen.append(config)
        raise SystemExit(0)

    monkeypatch.setattr(importlib.import_module("slmkit.verbs.synth"), "open_runtime",
                        lambda spec, progress, **options: seen.append(options))
    monkeypatch.setattr(importlib.import_module("slmkit.api"), "synth", handed_over)
    (tmp_path / "p.txt").write_text("q\n")
    flags = ["--n", "2", "--temperature", "0.2", "--top-k", "5", "--min-words", "1", "--keep-unfinished",
             "--num-perm", "64", "--weights", "int8"]
    result = CliRunner().invoke(app, ["synth", "t", "--prompts", str(tmp_path / "p.txt"), "--out",
                                      str(tmp_path / "d.jsonl"), *flags])
    expected = SynthConfig(n=2, sampling=SamplingConfig(temperature=0.2, top_k=5),
                           filters=FilterConfig(min_words=1, keep_unfinished=True, num_perm=64))
    assert result.exit_code == 0 and seen[0]["weights"] == "int8" and seen[1] == expected, result.output
    stage = SynthStage(stage="synth", n=2, temperature=0.2, top_k=5, min_words=1, keep_unfinished=True, num_perm=64)
    assert stage.config() == SynthConfig(n=2, sampling=SamplingConfig(temperature=0.2, top_k=5, seed=0),
                                         filters=expected.filters)
    assert SynthStage(stage="synth").settings() == SynthSettings(prompts=SAMPLE_PROMPTS, seed=0)
