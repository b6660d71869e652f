import json
import math

import pytest
import torch
import torch.nn.functional as F

import slmkit
from slmkit.evaluation import evaluate
from slmkit.evaluation.perplexity import perplexity

from conftest import SAMPLE_TEXT


@pytest.fixture(scope="module")
def tiny_lm(tiny_llama_dir):
    return slmkit.load(str(tiny_llama_dir))


def direct_nll(model, ids: torch.Tensor, begin: int, end: int, first_scored: int) -> tuple[float, int]:
    """Sum of -log p(token) for tokens first_scored..end-1, given the window begin..end."""
    with torch.no_grad():
        logprobs = F.log_softmax(model(ids[None, begin:end]).logits[0].double(), dim=-1)
    nll = -sum(logprobs[pos - begin - 1, ids[pos]].item() for pos in range(first_scored, end))
    return nll, end - first_scored


def test_perplexity_equals_direct_computation(tiny_lm):
    ids = torch.tensor(tiny_lm.tokenizer(SAMPLE_TEXT).input_ids)
    total, count = 0.0, 0
    for begin in range(0, len(ids), 64):
        end = min(begin + 64, len(ids))
        if end - begin > 1:
            nll, n = direct_nll(tiny_lm.model, ids, begin, end, begin + 1)
            total, count = total + nll, count + n
    result = perplexity(tiny_lm, SAMPLE_TEXT, max_length=64, batch_size=3)
    assert result["scored_tokens"] == count
    assert result["token_perplexity"] == pytest.approx(math.exp(total / count), rel=1e-4)
    words = len(SAMPLE_TEXT.split())
    assert result["word_perplexity"] == pytest.approx(math.exp(total / words), rel=1e-4)
    assert result["bits_per_byte"] == pytest.approx(total / len(SAMPLE_TEXT.encode()) / math.log(2), rel=1e-4)


def test_sliding_window_scores_each_token_once_with_context(tiny_lm):
    ids = torch.tensor(tiny_lm.tokenizer(SAMPLE_TEXT).input_ids)
    total, count, scored_until = 0.0, 0, 1
    for begin in range(0, len(ids), 16):
        end = min(begin + 64, len(ids))
        nll, n = direct_nll(tiny_lm.model, ids, begin, end, max(scored_until, begin + 1))
        total, count, scored_until = total + nll, count + n, end
        if end == len(ids):
            break
    result = perplexity(tiny_lm, SAMPLE_TEXT, max_length=64, stride=16)
    assert count == len(ids) - 1 == result["scored_tokens"]
    assert result["token_perplexity"] == pytest.approx(math.exp(total / count), rel=1e-4)


def test_batching_does_not_change_perplexity(tiny_lm):
    one = perplexity(tiny_lm, SAMPLE_TEXT, max_length=48, batch_size=1)
    four = perplexity(tiny_lm, SAMPLE_TEXT, max_length=48, batch_size=4)
    assert four["token_perplexity"] == pytest.approx(one["token_perplexity"], rel=1e-5)


def test_limit_and_bad_lengths(tiny_lm):
    assert perplexity(tiny_lm, SAMPLE_TEXT, max_length=32, limit=2)["windows"] == 2
    for kwargs, message in [({"max_length": 1000}, "longer than the model's context"),
                            ({"max_length": 32, "stride": 0}, "--stride")]:
        with pytest.raises(slmkit.SlmError, match=message):
            perplexity(tiny_lm, SAMPLE_TEXT, **kwargs)


@pytest.fixture(scope="module")
def sky_model(tiny_llama_dir, tmp_path_factory):
    """A tiny llama overfit on one fact, so a multiple-choice answer is known."""
    lm = slmkit.load(str(tiny_llama_dir))
    ids = lm.tokenizer("Question: What colour is the sky?\nAnswer: blue", return_tensors="pt").input_ids
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(lm.model.parameters(), lr=3e-2)
    lm.model.train()
    for _ in range(1000):  # until it has learned the sentence: a fixed step count missed on some versions
        optimizer.zero_grad()
        loss = lm.model(input_ids=ids, labels=ids).loss
        if loss.item() < 1e-3:
            break
        loss.backward()
        optimizer.step()
    lm.model.eval()
    return lm


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_choice_picks_the_learned_answer(sky_model, tmp_path):
    arc = write_jsonl(tmp_path / "arc.jsonl", [{
        "question": "What colour is the sky?",
        "choices": {"text": ["green", "blue", "red"], "label": ["A", "B", "C"]}, "answerKey": "B"}])
    result = evaluate(sky_model, arc)
    assert result["task"] == "choice"
    assert (result["acc"], result["acc_norm"], result["examples"]) == (1.0, 1.0, 1)
    wrong = write_jsonl(tmp_path / "wrong.jsonl", [{
        "question": "What colour is the sky?",
        "choices": {"text": ["green", "blue", "red"], "label": ["A", "B", "C"]}, "answerKey": "C"}])
    assert evaluate(sky_model, wrong)["acc"] == 0.0


def test_choice_matches_manual_loglikelihood_and_acc_norm(tiny_lm, tmp_path):
    """acc_norm divides by the choice's length in characters, so a long choice can win."""
    from slmkit.evaluation.loglikelihood import loglikelihoods

    choices = ["a", "the small models run on a laptop"]
    pairs = [("Question: Where?\nAnswer:", f" {c}") for c in choices]
    logprobs = [lp for lp, _ in loglikelihoods(tiny_lm, pairs)]
    tokenizer = tiny_lm.tokenizer
    for (context, continuation), logprob in zip(pairs, logprobs):
        context_ids = tokenizer(context).input_ids
        whole = tokenizer(context + continuation).input_ids
        with torch.no_grad():
            scores = F.log_softmax(tiny_lm.model(torch.tensor([whole])).logits[0].double(), dim=-1)
        manual = sum(scores[i - 1, whole[i]].item() for i in range(len(context_ids), len(whole)))
        assert logprob == pytest.approx(manual, abs=1e-4)
    record = {"question": "Where?", "choices": {"text": choices, "label": ["A", "B"]}, "answerKey": "A"}
    result = evaluate(tiny_lm, write_jsonl(tmp_path / "q.jsonl", [record]), task="choice")
    best = max(range(2), key=lambda i: logprobs[i])
    best_norm = max(range(2), key=lambda i: logprobs[i] / len(choices[i]))
    assert result["acc"] == float(best == 0) and result["acc_norm"] == float(best_norm == 0)


def test_hellaswag_schema(sky_model, tmp_path):
    record = {"activity_label": "Weather", "ctx_a": "Question: What colour is the sky?",
              "ctx_b": "", "endings": ["green", "blue"], "label": "1"}
    result = evaluate(sky_model, write_jsonl(tmp_path / "hs.jsonl", [record]))
    assert result["task"] == "choice"
    assert (result["acc"], result["acc_norm"], result["examples"]) == (1.0, 1.0, 1)  # the learned "blue"
    wrong = write_jsonl(tmp_path / "hs-wrong.jsonl", [{**record, "label": "0"}])
    assert evaluate(sky_model, wrong)["acc"] == 0.0  # the label picks the gold ending


def test_lambada_last_word(sky_model, tmp_path):
    path = write_jsonl(tmp_path / "lambada_toy.jsonl", [{"text": "Question: What colour is the sky?\nAnswer: blue"}])
    result = evaluate(sky_model, path)
    assert result["task"] == "lambada"
    from slmkit.evaluation.loglikelihood import loglikelihoods

    [(logprob, greedy)] = loglikelihoods(sky_model, [("Question: What colour is the sky?\nAnswer:", " blue")])
    assert greedy and result["acc"] == 1.0
    assert result["perplexity"] == pytest.approx(math.exp(-logprob))


def test_classification_accuracy(tiny_tokenizer, tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    from conftest import VOCAB

    config = BertConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_labels=2, id2label={0: "neg", 1: "pos"},
                        label2id={"neg": 0, "pos": 1}, pad_token_id=1)
    torch.manual_seed(0)
    model = BertForSequenceClassification(config).eval()
    out = slmkit.save(model, tmp_path / "clf", tiny_tokenizer)
    lm = slmkit.load(str(out))
    assert lm.kind == "classifier"
    texts = ["small models run locally", "quantization stores weights", "a table of numbers", "pruning"]
    with torch.no_grad():
        predicted = model(**tiny_tokenizer(texts, padding=True, return_tensors="pt")).logits.argmax(-1).tolist()
    gold = [predicted[0], predicted[1], 1 - predicted[2], predicted[3]]
    names = {0: "neg", 1: "pos"}
    tsv = tmp_path / "dev.tsv"
    tsv.write_text("text\tlabel\n" + "".join(f"{t}\t{names[g]}\n" for t, g in zip(texts, gold)))
    result = evaluate(lm, tsv)
    assert result["task"] == "classification" and result["accuracy"] == 0.75
    with pytest.raises(slmkit.SlmError, match="not one of the model's labels"):
        bad = tmp_path / "bad.tsv"
        bad.write_text("text\tlabel\nhello\tmaybe\n")
        evaluate(lm, bad)


def test_macro_f1():
    from slmkit.evaluation.classification import macro_f1

    assert macro_f1([0, 0, 1, 1], [0, 0, 1, 1]) == 1.0
    # class 0: tp=1 fp=0 fn=1 -> 2/3; class 1: tp=2 fp=1 fn=0 -> 4/5
    assert macro_f1([0, 0, 1, 1], [0, 1, 1, 1]) == pytest.approx((2 / 3 + 4 / 5) / 2)


def test_bench_reports_speeds(tiny_lm):
    from slmkit.evaluation.bench import bench

    result = bench(tiny_lm, prompt_tokens=16, gen_tokens=8, repeats=2)
    assert result["parameters"] == sum(p.numel() for p in tiny_lm.model.parameters())
    assert result["prefill_tokens_per_s"] > 0 and result["decode_tokens_per_s"] > 0
    assert result["time_to_first_token_s"] > 0 and result["peak_rss_bytes"] > 10_000_000
    with pytest.raises(slmkit.SlmError, match="exceed the model's context"):
        bench(tiny_lm, prompt_tokens=120, gen_tokens=16)
