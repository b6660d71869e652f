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


def test_a_rows_tokens_do_not_depend_on_the_sequences_decoded_beside_it(tiny_gguf, tiny_llama_dir):
    from slmkit.runtime import open_model
    from slmkit.runtime.batched import sample_rows
    from slmkit.runtime.open import as_runtime
    from slmkit.runtime.sampling import row_generators

    prefixes = [[1, 5], [1, 9, 17, 33], [1], [1, 40, 41], [1, 7]]  # rows of a batch finish at different steps

    def sample(lm, wave=None, length=20):
        return sample_rows(lm, prefixes, length, row_generators(torch.Generator().manual_seed(0), 5), wave=wave)

    on_llama_cpp = open_model(str(tiny_gguf))
    alone = [sample(on_llama_cpp, wave) for wave in (1, 2, 5)]
    assert torch.equal(alone[0], alone[1]) and torch.equal(alone[0], alone[2])
    assert [row[:len(prefix)] for row, prefix in zip(alone[0].tolist(), prefixes)] == prefixes
    on_torch = as_runtime(slmkit.load(str(tiny_llama_dir)))  # the same weights
    assert all(torch.equal(sample(on_torch, wave), alone[0]) for wave in (None, 2))  # rows join a running batch
    with pytest.raises(slmkit.SlmError, match="every prefix must hold 1 to 3 tokens to sample 4"):
        sample(on_llama_cpp, length=4)
    with pytest.raises(slmkit.SlmError, match="200 tokens per sequence exceed .*tiny.f32.gguf's trained context"):
        sample(on_llama_cpp, length=200)


def test_sampled_tokens_follow_the_softmax_and_never_a_banned_one():
    from slmkit.runtime.batched import sample_rows
    from slmkit.runtime.sampling import row_generators

    logits = torch.tensor([0.0, 1.0, 2.0, 0.0, 0.5, 0.0])

    class Fixed:  # a runtime whose next-token logits are always `logits`
        def open_batch(self, slots, length):
            return self

        def admits(self, running):
            return True

        def advance(self, new, going):
            return logits.repeat(len(new) + len(going), 1)

        def release(self, slot):
            pass

    rows = 20_000
    ids = sample_rows(Fixed(), [[0]] * rows, 3, row_generators(torch.Generator().manual_seed(0), rows),
                      banned=(3, 5))
    frequencies = torch.bincount(ids[:, 1:].flatten(), minlength=6) / (2 * rows)
    assert frequencies[3] == 0 and frequencies[5] == 0  # banned tokens (EOS, so every row runs the full length)
    assert torch.allclose(frequencies, torch.softmax(logits.index_fill(0, torch.tensor([3, 5]), float("-inf")), 0),
                          atol=0.01)


def test_sampled_text_is_cached_per_model_and_settings(tiny_llama_dir, tmp_path, cache, monkeypatch):
    lm = slmkit.load(str(tiny_llama_dir))
    assert sampling_engine(lm) == "torch"
    first = self_generated(lm, 3, 12, seed=0)
    assert len(list(cache.iterdir())) == 1

    def no_sampling(*args, **kwargs):
        raise AssertionError("sampled again")

    monkeypatch.setattr(calibration, "sample_rows", no_sampling)
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
