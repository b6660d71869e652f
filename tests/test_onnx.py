"""ONNX export: onnxruntime computes what torch computes, at any batch and length; `slm eval` runs it."""

from __future__ import annotations

import json
import re
import sys

import pytest
import torch
from conftest import SAMPLE_TEXT, VOCAB, run_slm, tiny_config, tiny_model
from test_cli import assert_one_line_error

from slmkit import load, save
from slmkit.errors import SlmError

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from slmkit.exporters import export_onnx  # noqa: E402
from slmkit.runtime.onnx import OnnxModel  # noqa: E402

LABELS = {0: "neg", 1: "pos"}
TEXTS = ["small models run locally", "quantization stores weights", "a table of numbers", "pruning",
         "distillation teaches a student", "run it offline"]


@pytest.fixture(scope="module")
def bert_tokenizer(tmp_path_factory):
    """A WordPiece tokenizer that gives token_type_ids, as BERT's do (the shared tiny one does not)."""
    from transformers import BertTokenizerFast

    words = sorted(set(re.findall(r"[a-z]+", SAMPLE_TEXT.lower())))
    vocab = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words][:VOCAB]) + "\n")
    return BertTokenizerFast(vocab_file=str(vocab))


def tiny_classifier():
    from transformers import BertForSequenceClassification

    config = tiny_config("bert")
    config.update({"architectures": ["BertForSequenceClassification"], "num_labels": 2, "id2label": LABELS,
                   "label2id": {name: index for index, name in LABELS.items()}, "pad_token_id": 1})
    torch.manual_seed(0)
    return BertForSequenceClassification(config).eval()


@pytest.fixture(scope="module")
def classifier_dirs(tmp_path_factory, tiny_tokenizer):
    """A tiny classifier checkpoint and its ONNX export."""
    root = tmp_path_factory.mktemp("onnx-classifier")
    checkpoint = save(tiny_classifier(), root / "clf", tiny_tokenizer)
    export_onnx(load(str(checkpoint)), root / "clf-onnx")
    return checkpoint, root / "clf-onnx"


def padded_batch(names: list[str]) -> dict[str, torch.Tensor]:
    """3 x 23 (the export traced 2 x 16), padding in two rows, both token types."""
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(5, VOCAB, (3, 23), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 9:] = 0
    attention_mask[2, 2:] = 0
    values = {"input_ids": input_ids, "attention_mask": attention_mask,
              "token_type_ids": torch.randint(0, 2, (3, 23), generator=generator)}
    return {name: values[name] for name in names}


@pytest.mark.parametrize("model_type, inputs", [
    ("bert", ["input_ids", "attention_mask", "token_type_ids"]),
    ("distilbert", ["input_ids", "attention_mask"]),  # takes no token_type_ids, though its tokenizer gives them
    ("mobilebert", ["input_ids", "attention_mask", "token_type_ids"]),
])
def test_encoder_export_matches_torch_at_new_shapes(model_type, inputs, tmp_path, bert_tokenizer):
    lm = load(str(save(tiny_model(model_type), tmp_path / model_type, bert_tokenizer)))
    written = export_onnx(lm, tmp_path / "onnx")
    assert written.inputs == inputs and written.output == "last_hidden_state" and written.kind == "encoder"
    assert {"model.onnx", "config.json", "tokenizer.json", "slmkit.json"} <= {p.name for p in written.path.iterdir()}
    assert sorted(p.name for p in tmp_path.iterdir()) == [model_type, "onnx"]  # no temporary directory left
    onnx_lm = OnnxModel(written.path)
    assert onnx_lm.kind == "encoder" and onnx_lm.backend == "onnx" and onnx_lm.model.input_names == inputs
    batch = padded_batch(inputs)
    with torch.no_grad():
        expected = lm.model(**batch).last_hidden_state
    got = onnx_lm.model(**batch).last_hidden_state
    assert got.shape == expected.shape == (3, 23, 32)
    assert (got - expected).abs().max() < 1e-4


def test_classifier_export_matches_torch(classifier_dirs):
    checkpoint, exported = classifier_dirs
    lm, onnx_lm = load(str(checkpoint)), OnnxModel(exported / "model.onnx")  # the file itself loads too
    assert onnx_lm.kind == "classifier" and onnx_lm.model.input_names == ["input_ids", "attention_mask"]
    assert onnx_lm.config.id2label == LABELS
    batch = padded_batch(["input_ids", "attention_mask"])
    with torch.no_grad():
        expected = lm.model(**batch).logits
    assert (onnx_lm.model(**batch).logits - expected).abs().max() < 1e-4
    manifest = json.loads((exported / "slmkit.json").read_text())
    assert manifest["stage"] == "export" and manifest["config"]["format"] == "onnx"
    assert onnx_lm.parameters == sum(p.numel() for p in lm.model.parameters())


def test_eval_classification_on_onnx_matches_torch(classifier_dirs, tiny_tokenizer, tmp_path):
    checkpoint, exported = classifier_dirs
    with torch.no_grad():
        predicted = tiny_classifier()(**tiny_tokenizer(TEXTS, padding=True, return_tensors="pt")).logits.argmax(-1)
    gold = [int(p) if i % 3 else 1 - int(p) for i, p in enumerate(predicted)]  # two of six wrong
    tsv = tmp_path / "dev.tsv"
    tsv.write_text("text\tlabel\n" + "".join(f"{text}\t{LABELS[g]}\n" for text, g in zip(TEXTS, gold, strict=True)))
    results = {}
    for model in (checkpoint, exported):
        result = run_slm("eval", str(model), "--data", str(tsv), "--batch-size", "4", "--json")
        assert result.returncode == 0, result.stderr
        results[model] = json.loads(result.stdout)
    assert results[exported]["accuracy"] == results[checkpoint]["accuracy"] == pytest.approx(4 / 6)
    assert results[exported]["macro_f1"] == results[checkpoint]["macro_f1"]


def test_bench_runs_the_onnx_encoder(classifier_dirs):
    from slmkit.evaluation.bench import bench

    result = bench(OnnxModel(classifier_dirs[1]), prompt_tokens=32, repeats=2)
    assert result["backend"] == "onnx" and result["gen_tokens"] == 0 and result["prefill_tokens_per_s"] > 0
    assert result["bytes_on_disk"] > 100_000  # model.onnx


@pytest.mark.parametrize("case", ["decoder", "existing_out", "quant", "onnx_file_out", "perplexity", "info",
                                  "encoder_for_classification", "backend_onnx_on_checkpoint"])
def test_bad_input_is_one_line(case, classifier_dirs, tiny_llama_dir, tiny_tokenizer, tmp_path):
    checkpoint, exported = classifier_dirs
    out = tmp_path / "out"
    if case == "decoder":
        args, expected = ["export", str(tiny_llama_dir), "--format", "onnx", "--out", str(out)], \
            ["ONNX export covers encoder models", "--format gguf"]
    elif case == "existing_out":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
        args, expected = ["export", str(checkpoint), "--format", "onnx", "--out", str(out)], ["not empty", "--force"]
    elif case == "quant":
        args, expected = ["export", str(checkpoint), "--format", "onnx", "--quant", "q8_0", "--out", str(out)], \
            ["--quant applies to --format gguf"]
    elif case == "onnx_file_out":
        args, expected = ["export", str(checkpoint), "--format", "onnx", "--out", str(tmp_path / "m.onnx")], \
            ["should name a directory"]
    elif case == "perplexity":
        (tmp_path / "t.txt").write_text("Small models run on laptops. " * 20)
        args, expected = ["eval", str(exported), "--data", str(tmp_path / "t.txt")], \
            ["perplexity needs a causal language model", "ONNX model is a sequence classifier"]
    elif case == "info":
        args, expected = ["info", str(exported)], ["an ONNX export", "slm eval"]
    elif case == "encoder_for_classification":
        encoder = tmp_path / "encoder-onnx"
        export_onnx(load(str(save(tiny_model("distilbert"), tmp_path / "encoder", tiny_tokenizer))), encoder)
        (tmp_path / "c.tsv").write_text("text\tlabel\nhi\tpos\n")
        args, expected = ["eval", str(encoder), "--data", str(tmp_path / "c.tsv")], \
            ["a sequence classifier was asked for", "ONNX model is an encoder"]
    else:
        (tmp_path / "c.tsv").write_text("text\tlabel\nhi\tpos\n")
        args, expected = ["eval", str(checkpoint), "--data", str(tmp_path / "c.tsv"), "--backend", "onnx"], \
            ["--backend onnx", "slm export --format onnx"]
    assert_one_line_error(run_slm(*args), *expected)
    if case == "existing_out":
        assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    elif case != "encoder_for_classification":
        assert not out.exists()


def test_force_replaces_and_seq2seq_is_refused(classifier_dirs, tmp_path, tiny_tokenizer):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    export_onnx(load(str(classifier_dirs[0])), out, force=True)
    assert not (out / "old.txt").exists() and (out / "model.onnx").is_file()
    t5 = load(str(save(tiny_model("t5"), tmp_path / "t5", tiny_tokenizer)))
    with pytest.raises(SlmError, match="ONNX export covers encoder models.*sequence-to-sequence.*--format gguf"):
        export_onnx(t5, tmp_path / "t5-onnx")
    assert not (tmp_path / "t5-onnx").exists()


def test_missing_extra_names_the_install_command(monkeypatch, tmp_path):
    from slmkit.exporters.onnx import check_onnx_target

    monkeypatch.setitem(sys.modules, "onnxscript", None)  # makes `import onnxscript` fail
    with pytest.raises(SlmError, match=re.escape("pip install 'slmkit[onnx]'")):
        check_onnx_target(tmp_path / "out", force=False)
