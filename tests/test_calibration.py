"""Data-free calibration text: sampled on llama.cpp several sequences at a time, or on torch, and cached."""

from __future__ import annotations

import os

import pytest
import torch

import slmkit
from slmkit.compress import calibration
from slmkit.compress.calibration import sampling_engine, self_generated, source_gguf

pytest.importorskip("llama_cpp")


@pytest.fixture(scope="module")
def tiny_gguf(tiny_llama_dir, tmp_path_factory):
    gguf = tmp_path_factory.mktemp("calibration") / "tiny.f32.gguf"
    slmkit.export(slmkit.load(str(tiny_llama_dir)), gguf, slmkit.GGUFConfig(quant="f32"))
    return gguf


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SLMKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "calibration"


def test_llama_cpp_samples_the_rows_torch_samples_from_the_same_weights(tiny_gguf, cache):
    lm = slmkit.load(str(tiny_gguf))
    assert source_gguf(lm) == tiny_gguf and sampling_engine(lm) == "llamacpp"
    steps = []
    on_llama_cpp = self_generated(lm, 5, 24, seed=3, engine="llamacpp", cache=False,
                                  progress=lambda done, total: steps.append((done, total)))
    on_torch = self_generated(lm, 5, 24, seed=3, engine="torch", cache=False)
    assert on_llama_cpp.shape == (5, 24)
    # The same per-row uniforms on the same float32 weights: the same tokens, whichever engine ran them.
    assert torch.equal(on_llama_cpp, on_torch)
    assert on_llama_cpp[:, 0].unique().numel() == 1 and on_llama_cpp[:, 1].unique().numel() > 1
    assert steps[-1] == (5 * 24, 5 * 24) and [done for done, _ in steps] == sorted(done for done, _ in steps)
    assert not torch.equal(on_llama_cpp, self_generated(lm, 5, 24, seed=4, engine="llamacpp", cache=False))
    assert not cache.exists()


def test_a_rows_tokens_do_not_depend_on_the_sequences_decoded_beside_it(tiny_gguf):
    from slmkit.runtime.llamacpp import sample_together

    prefixes = [[1, 5], [1, 9, 17, 33], [1], [1, 40, 41], [1, 7]]  # rows of a batch finish at different steps
    alone = [sample_together(tiny_gguf, prefixes, 20, torch.Generator().manual_seed(0), wave=wave)
             for wave in (1, 2, 5)]
    assert torch.equal(alone[0], alone[1]) and torch.equal(alone[0], alone[2])
    assert [row[:len(prefix)] for row, prefix in zip(alone[0].tolist(), prefixes)] == prefixes
    with pytest.raises(slmkit.SlmError, match="every prefix must hold 1 to 19 tokens"):
        sample_together(tiny_gguf, [[1] * 20], 20, torch.Generator())


def test_sampled_text_is_cached_per_model_and_settings(tiny_llama_dir, tmp_path, cache, monkeypatch):
    lm = slmkit.load(str(tiny_llama_dir))
    assert sampling_engine(lm) == "torch"
    first = self_generated(lm, 3, 12, seed=0)
    assert len(list(cache.iterdir())) == 1

    def no_sampling(*args):
        raise AssertionError("sampled again")

    monkeypatch.setattr(calibration, "_sample_on_torch", no_sampling)
    assert torch.equal(self_generated(lm, 3, 12, seed=0), first)
    with pytest.raises(AssertionError, match="sampled again"):
        self_generated(lm, 3, 12, seed=1)  # another seed is another sample
    with pytest.raises(AssertionError, match="sampled again"):
        self_generated(lm, 3, 12, seed=0, cache=False)
    weights = next(tiny_llama_dir.glob("*.safetensors"))
    stat = weights.stat()
    try:  # weights rewritten in place: the text is sampled again
        os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
        with pytest.raises(AssertionError, match="sampled again"):
            self_generated(lm, 3, 12, seed=0)
    finally:
        os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert len(list(cache.iterdir())) == 1
    next(cache.iterdir()).write_bytes(b"not a tensor")  # a damaged entry is sampled again, not a crash
    with pytest.raises(AssertionError, match="sampled again"):
        self_generated(lm, 3, 12, seed=0)


def test_calibration_defaults_and_the_cache_switch():
    from slmkit.settings import DATA_FREE_SAMPLES, DATA_FREE_SEQ_LEN
    from slmkit.verbs.prune import PruneSettings

    assert (slmkit.Calibration("wiki.txt").samples, slmkit.Calibration("wiki.txt").seq_len) == (128, 512)
    assert (slmkit.Calibration().samples, slmkit.Calibration().seq_len) == (DATA_FREE_SAMPLES, DATA_FREE_SEQ_LEN)
    assert slmkit.Calibration.from_settings(PruneSettings(calib_samples=8, calib_cache="off")).cache is False
    with pytest.raises(slmkit.SlmError, match="--calib-cache maybe: choose on or off"):
        PruneSettings(calib_cache="maybe")
