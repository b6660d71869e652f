"""Answers to several prompts come from the runtime's own batched decoding (`Model.open_batch`): on llama.cpp too,
so `slm synth` with a GGUF teacher decodes its prompts together, and each row answers as it would alone."""

import pytest

import slmkit
from slmkit.runtime import SamplingConfig, open_model
from slmkit.runtime.batched import answer_batch, answer_ids, batches_rows
from slmkit.runtime.open import as_runtime

PROMPTS = ["a", "small models run on", "the kitchen has a table and", "one two three four five six"]


@pytest.fixture(scope="module")
def gguf_teacher(tiny_llama_dir, tmp_path_factory):
    pytest.importorskip("llama_cpp")
    gguf = tmp_path_factory.mktemp("gguf") / "tiny.f32.gguf"
    slmkit.export(slmkit.load(str(tiny_llama_dir)), gguf, slmkit.GGUFConfig(quant="f32"))
    return open_model(str(gguf))


def test_a_gguf_teacher_decodes_its_rows_together_and_each_as_it_would_alone(gguf_teacher, tiny_llama_dir,
                                                                            monkeypatch):
    assert gguf_teacher.backend == "llamacpp" and batches_rows(gguf_teacher)
    opened = []
    open_batch = gguf_teacher.open_batch
    monkeypatch.setattr(gguf_teacher, "open_batch", lambda slots, length: opened.append(slots) or open_batch(
        slots, length))
    rows = [gguf_teacher.tokenizer(text).input_ids for text in PROMPTS]
    greedy = [SamplingConfig(temperature=0, max_new_tokens=4 + 3 * number) for number in range(len(rows))]
    together = answer_batch(gguf_teacher, rows, greedy)
    assert opened == [len(rows)]  # one batch for all the rows
    alone = [answer_batch(gguf_teacher, [row], [sampling])[0] for row, sampling in zip(rows, greedy)]
    assert together == alone
    assert together == answer_batch(slmkit.load(str(tiny_llama_dir)), rows, greedy)  # torch, the same weights
    seeded = [SamplingConfig(temperature=1.0, seed=seed, max_new_tokens=6) for seed in (1, 2, 3, 4)]
    assert answer_batch(gguf_teacher, rows, seeded)[::-1] == answer_batch(gguf_teacher, rows[::-1], seeded[::-1])


def test_an_answer_runs_through_the_stop_token_that_ends_it(gguf_teacher, tiny_llama_dir):
    rows = [gguf_teacher.tokenizer(text).input_ids for text in PROMPTS]
    greedy = [SamplingConfig(temperature=0, max_new_tokens=8)] * len(rows)
    for lm in (gguf_teacher, slmkit.load(str(tiny_llama_dir))):
        written = answer_ids(as_runtime(lm), rows, greedy)
        assert [len(ids) for ids in written] == [8] * len(rows)
        stop = written[0][2]
        ended = answer_ids(as_runtime(lm), rows, greedy, stops={stop})
        assert ended[0] == written[0][:written[0].index(stop) + 1]  # the stop token kept, nothing after it
        assert all(ids == full[:full.index(stop) + 1] if stop in full else ids == full
                   for ids, full in zip(ended, written))
