"""The fine-tuning data layer: assistant-only chat labels, exact completion masks, packing that keeps
documents apart, collators, and the one-line DataErrors."""

import copy
import itertools
import json

import pytest
import torch
from conftest import tiny_model

from slmkit.data.loaders import infer_task, load_text
from slmkit.data.training import IGNORE, collator, load_conversations, pack, pad_token_id, training_data
from slmkit.errors import DataError

CONVERSATION = [{"role": "user", "content": "What is a small model?"},
                {"role": "assistant", "content": "A model with few weights."},
                {"role": "user", "content": "Why use one?"},
                {"role": "assistant", "content": "It runs where the data lives."}]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def labelled_runs(tokenizer, example) -> list[str]:
    """The decoded text of each run of consecutive labelled tokens; every label is its token or IGNORE."""
    assert all(label in (token, IGNORE) for token, label in zip(example["input_ids"], example["labels"]))
    runs = itertools.groupby(example["labels"], key=lambda label: label != IGNORE)
    return [tokenizer.decode(list(run)) for labelled, run in runs if labelled]


@pytest.mark.parametrize("template, end_of_turn", [("tiny", "\n"), ("smol", "<|im_end|>\n")])
def test_chat_labels_are_the_assistant_turns_and_their_end_markers(tmp_path, tiny_tokenizer, chatml,
                                                                   template, end_of_turn):
    tokenizer = {"tiny": tiny_tokenizer, "smol": chatml}[template]
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": CONVERSATION}])
    data = training_data("chat", path, tokenizer, max_length=512)
    (example,) = data.examples
    assert tokenizer.decode(example["input_ids"]) == tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    assistant = [m["content"] + end_of_turn for m in CONVERSATION if m["role"] == "assistant"]
    assert labelled_runs(tokenizer, example) == assistant
    assert (data.task, data.records, data.tokens, data.label_names) == ("chat", 1, len(example["input_ids"]), None)
    if template == "smol":  # the injected system message is context, never a target
        assert "You are a helpful AI assistant" in tokenizer.decode(example["input_ids"])


def test_completion_labels_mask_exactly_the_prompt(tmp_path, tiny_tokenizer):
    prompt, completion = "Question: what runs on a laptop?\nAnswer:", " A small model."
    path = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": prompt, "completion": completion}])
    (example,) = training_data("completion", path, tiny_tokenizer, max_length=512).examples
    prompt_ids = tiny_tokenizer(prompt)["input_ids"]
    eos = tiny_tokenizer.eos_token_id
    completion_ids = tiny_tokenizer(completion, add_special_tokens=False)["input_ids"] + [eos]
    assert example["input_ids"] == prompt_ids + completion_ids
    assert example["labels"] == [IGNORE] * len(prompt_ids) + completion_ids
    assert labelled_runs(tiny_tokenizer, example) == [completion + tiny_tokenizer.eos_token]


def test_text_documents_end_in_eos_and_long_ones_are_chunked(tmp_path, tiny_tokenizer):
    long = "Small models are fast and run where the data lives. " * 6
    path = tmp_path / "docs.txt"
    path.write_text(f"A short document.\n\n  \n{long}\n")
    data = training_data("text", path, tiny_tokenizer, max_length=16)
    eos = tiny_tokenizer.eos_token_id
    assert data.records == 2 and data.tokens == sum(len(e["input_ids"]) for e in data.examples)
    assert all(1 < len(e["input_ids"]) <= 16 and e["labels"] == e["input_ids"] for e in data.examples)
    assert data.examples[0]["input_ids"] == tiny_tokenizer("A short document.")["input_ids"] + [eos]
    rejoined = [token for example in data.examples[1:] for token in example["input_ids"]]
    assert rejoined[-1] == eos and tiny_tokenizer.decode(rejoined[:-1]) == long.strip()
    jsonl = write_jsonl(tmp_path / "docs.jsonl", [{"text": "One."}, {"text": "Two."}])
    assert training_data("text", jsonl, tiny_tokenizer, max_length=16).records == 2


def lm_examples(tokenizer, tmp_path):
    sentences = ["Small models run on laptops.", "Distillation teaches a student.", "Quantization saves memory.",
                 "Pruning removes weights that matter little.", "A tokenizer splits text."]
    path = write_jsonl(tmp_path / "docs.jsonl", [{"text": s} for s in sentences])
    return training_data("text", path, tokenizer, max_length=24).examples


def test_pack_fills_rows_and_the_collator_restarts_positions_per_document(tmp_path, tiny_tokenizer):
    examples = lm_examples(tiny_tokenizer, tmp_path)
    rows = pack(examples, 24)
    assert len(rows) < len(examples)
    assert all(len(row["input_ids"]) <= 24 and sum(row["seq_lengths"]) == len(row["input_ids"]) for row in rows)
    assert sorted(map(tuple, (e["input_ids"] for e in examples))) == sorted(
        tuple(row["input_ids"][start:start + length]) for row in rows
        for start, length in zip(itertools.accumulate([0, *row["seq_lengths"][:-1]]), row["seq_lengths"]))

    batch = collator("text", tiny_tokenizer, packing=True)(rows[:2])
    lengths = [length for row in rows[:2] for length in row["seq_lengths"]]
    assert batch["position_ids"][0].tolist() == [p for length in lengths for p in range(length)]
    assert "attention_mask" not in batch and batch["use_cache"] is False
    starts = list(itertools.accumulate([0, *lengths[:-1]]))
    assert all(batch["labels"][0, start] == IGNORE for start in starts)  # no document predicts the next one


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_a_packed_batch_attends_within_each_document_only(tmp_path, tiny_tokenizer, attention):
    model = tiny_model("llama")
    model.set_attn_implementation(attention)
    assert model.config.use_cache  # the batch's own use_cache=False is what keeps documents apart
    rows = pack(lm_examples(tiny_tokenizer, tmp_path), 24)
    batch = collator("text", tiny_tokenizer, packing=True)(rows)
    documents = [row["input_ids"][start:start + length] for row in rows
                 for start, length in zip(itertools.accumulate([0, *row["seq_lengths"][:-1]]), row["seq_lengths"])]
    with torch.no_grad():
        packed = model(**batch).logits[0]
        alone = torch.cat([model(torch.tensor([document])).logits[0] for document in documents])
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=0)


def test_lm_collator_keeps_prebuilt_labels_and_pads_with_eos_without_a_pad_token(tmp_path, tiny_tokenizer):
    no_pad = copy.deepcopy(tiny_tokenizer)
    no_pad.pad_token = None
    vocabulary = len(no_pad)
    path = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": "Q: why?", "completion": " Speed."},
                                               {"prompt": "Q: what is small, then?", "completion": " Tiny."}])
    short, longer = training_data("completion", path, no_pad, max_length=64).examples
    batch = collator("completion", no_pad)([short, longer])
    width = len(longer["input_ids"])
    assert batch["labels"][0].tolist() == short["labels"] + [IGNORE] * (width - len(short["labels"]))
    assert batch["input_ids"][0, len(short["input_ids"]):].eq(no_pad.eos_token_id).all()
    assert batch["attention_mask"][0].sum() == len(short["input_ids"])
    assert pad_token_id(no_pad) == no_pad.eos_token_id
    texts = tmp_path / "t.tsv"
    texts.write_text("text\tlabel\nshort\ta\na longer line of text\tb\n")
    examples = training_data("classification", texts, no_pad, max_length=64).examples
    batch = collator("classification", no_pad)(examples)
    assert batch["input_ids"][0, -1] == no_pad.eos_token_id
    assert no_pad.pad_token is None and len(no_pad) == vocabulary  # the caller's tokenizer is left alone


def test_classification_ids_follow_sorted_labels_and_eval_labels_must_be_known(tmp_path, tiny_tokenizer):
    train = tmp_path / "train.tsv"
    train.write_text("text\tlabel\ngreat and fast\tpos\nslow\tneg\nfine\tneutral\n" + "word " * 50 + "\tpos\n")
    data = training_data("classification", train, tiny_tokenizer, max_length=8)
    assert data.label_names == ("neg", "neutral", "pos")
    assert [e["labels"] for e in data.examples] == [2, 0, 1, 2]
    assert all(set(e) >= {"input_ids", "attention_mask"} and len(e["input_ids"]) <= 8 for e in data.examples)
    batch = collator("classification", tiny_tokenizer)(data.examples)
    assert batch["input_ids"].shape == (4, 8) and batch["labels"].tolist() == [2, 0, 1, 2]

    held_out = tmp_path / "eval.tsv"
    held_out.write_text("text\tlabel\nok\tpos\n")  # one label only, but the training file's names apply
    kept = training_data("classification", held_out, tiny_tokenizer, max_length=8, label_names=data.label_names)
    assert kept.label_names == data.label_names and kept.examples[0]["labels"] == 2
    held_out.write_text("text\tlabel\nok\tpos\nhmm\tmixed\n")
    with pytest.raises(DataError, match=r"eval\.tsv: row 2: label 'mixed' is not one of the training labels"):
        training_data("classification", held_out, tiny_tokenizer, max_length=8, label_names=data.label_names)
    one = tmp_path / "one.tsv"
    one.write_text("text\tlabel\na\tpos\nb\tpos\n")
    with pytest.raises(DataError, match=r"one\.tsv: classification needs at least 2 distinct labels"):
        training_data("classification", one, tiny_tokenizer, max_length=8)


def test_seq2seq_examples_and_batches(tmp_path, tiny_tokenizer):
    path = write_jsonl(tmp_path / "s2s.jsonl", [{"input": "translate: small", "target": "klein"},
                                                {"input": "translate: small model", "target": "kleines Modell"}])
    assert infer_task(path, training=True) == "seq2seq"
    data = training_data("seq2seq", path, tiny_tokenizer, max_length=32)
    first, second = data.examples
    assert set(first) == {"input_ids", "attention_mask", "labels"}
    # The target and then eos, which this tokenizer does not add itself (T5's adds </s>): the model learns to stop.
    assert second["labels"] == tiny_tokenizer(text_target="kleines Modell")["input_ids"] + [tiny_tokenizer.eos_token_id]
    batch = collator("seq2seq", tiny_tokenizer)(data.examples)
    assert batch["input_ids"].shape == (2, len(second["input_ids"]))
    assert batch["labels"].shape == (2, len(second["labels"]))
    assert batch["labels"][0, len(first["labels"]):].eq(IGNORE).all()
    assert load_text(path).startswith("translate: small\nklein")  # the new schema reads as text elsewhere


def test_infer_task_for_training(tmp_path):
    files = {"c.jsonl": {"messages": CONVERSATION}, "p.jsonl": {"prompt": "a", "completion": "b"},
             "t.jsonl": {"text": "a"}}
    for name, record in files.items():
        write_jsonl(tmp_path / name, [record])
    (tmp_path / "d.txt").write_text("text")
    (tmp_path / "l.csv").write_text("text,label\na,x\n")
    assert [infer_task(tmp_path / n, training=True) for n in ["c.jsonl", "p.jsonl", "t.jsonl", "d.txt", "l.csv"]] == [
        "chat", "completion", "text", "text", "classification"]
    arc = write_jsonl(tmp_path / "arc.jsonl", [{"question": "q", "choices": {"text": ["a"], "label": ["A"]},
                                                "answerKey": "A"}])
    with pytest.raises(DataError, match=r"arc\.jsonl: arc records make an evaluation file"):
        infer_task(arc, training=True)
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(DataError, match=r"x\.json: cannot tell the task .* pass --task"):
        infer_task(tmp_path / "x.json", training=True)


@pytest.mark.parametrize("messages, problem", [
    ([{"role": "user", "content": "hi"}], "no assistant turn"),
    ([{"role": "robot", "content": "hi"}], "message 1: unknown role 'robot'"),
    ([{"role": "user", "content": ["hi"]}, {"role": "assistant", "content": "a"}],
     "message 1: 'content' must be a string"),
    ([], "'messages' must be a non-empty list"),
    ([{"role": "assistant", "content": "a"}], "the conversation opens with an assistant turn"),
])
def test_bad_conversations_are_named(tmp_path, tiny_tokenizer, messages, problem):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"messages": CONVERSATION}, {"messages": messages}])
    with pytest.raises(DataError, match=rf"bad\.jsonl: record 2: {problem}"):
        training_data("chat", path, tiny_tokenizer, max_length=64)


def test_load_conversations_keeps_roles(tmp_path):
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "system", "content": "Be brief."},
                                                               *CONVERSATION]}])
    assert [m["role"] for m in load_conversations(path)[0]] == ["system", "user", "assistant", "user", "assistant"]


def test_template_problems_are_data_errors(tmp_path, tiny_tokenizer):
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": CONVERSATION}])
    untemplated = copy.deepcopy(tiny_tokenizer)
    untemplated.chat_template = None
    with pytest.raises(DataError, match="the model has no chat template.*--task completion"):
        training_data("chat", path, untemplated, max_length=64)
    untemplated.chat_template = "{{ raise_exception('roles must alternate') }}"
    with pytest.raises(DataError, match=r"chat\.jsonl: record 1: the model's chat template failed: roles must"):
        training_data("chat", path, untemplated, max_length=64)
    untemplated.chat_template = "{{ messages | length }}{% for m in messages %}{{ m.content }}{% endfor %}"
    with pytest.raises(DataError, match=r"record 1: the chat template is not prefix-stable at message 2"):
        training_data("chat", path, untemplated, max_length=64)


def test_length_errors(tmp_path, tiny_tokenizer):
    chat = write_jsonl(tmp_path / "chat.jsonl", [{"messages": CONVERSATION}])
    with pytest.raises(DataError, match=r"chat\.jsonl: record 1: no trainable token within --max-length 6"):
        training_data("chat", chat, tiny_tokenizer, max_length=6)
    prompts = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": "ok", "completion": " yes"},
                                                  {"prompt": "a long prompt " * 5, "completion": " no"}])
    with pytest.raises(DataError, match=r"pc\.jsonl: record 2: no trainable token within --max-length 8"):
        training_data("completion", prompts, tiny_tokenizer, max_length=8)
    with pytest.raises(DataError, match="--max-length must be a positive"):
        training_data("text", prompts, tiny_tokenizer, max_length=0)
    with pytest.raises(DataError, match=r"pc\.jsonl: --task chat needs records with messages; these are "
                                        r"prompt_completion records \(try --task completion\)"):
        training_data("chat", prompts, tiny_tokenizer, max_length=8)
    bad = write_jsonl(tmp_path / "n.jsonl", [{"prompt": "a", "completion": 3}])
    with pytest.raises(DataError, match=r"n\.jsonl: record 1: 'completion' must be a string, got int"):
        training_data("completion", bad, tiny_tokenizer, max_length=8)


def test_each_task_is_one_record_that_every_task_list_reads():
    from slmkit.data import training
    from slmkit.data.loaders import SCHEMA_TASKS
    from slmkit.data.tasks import TASKS
    from slmkit.distillation.config import DISTILL_TASKS, ON_POLICY_TASKS
    from slmkit.finetuning.config import TASKS as FINETUNE_TASKS
    from slmkit.models.kinds import KINDS
    from slmkit.train.metrics import METRICS

    for name, task in TASKS.items():
        assert callable(getattr(training, task.examples)) and callable(getattr(training, task.collator)), name
        assert task.kind in task.accepts and set(task.accepts) <= set(KINDS) and task.metric in METRICS, name
    assert SCHEMA_TASKS == {task.schema: name for name, task in TASKS.items() if task.schema is not None}
    assert FINETUNE_TASKS == ("chat", "completion", "text", "classification", "seq2seq")
    assert DISTILL_TASKS == ("chat", "completion", "text", "classification")
    assert ON_POLICY_TASKS == ("chat", "completion")
    with pytest.raises(DataError, match="unknown task 'poetry'; expected one of chat, completion, text, "
                                        "classification, seq2seq"):
        collator("poetry", None)
