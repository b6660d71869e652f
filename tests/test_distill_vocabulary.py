"""A teacher and student whose token ids differ are refused before distilling, naming what differs."""

from __future__ import annotations

import copy

import pytest
from conftest import VOCAB

from slmkit.distillation.vocabulary import check_same_vocabulary
from slmkit.errors import SlmError


def test_the_same_tokenizer_passes(tiny_tokenizer):
    check_same_vocabulary(tiny_tokenizer, copy.deepcopy(tiny_tokenizer), VOCAB, VOCAB, ["small models"])


def test_output_layers_of_other_sizes_are_refused(tiny_tokenizer):
    with pytest.raises(SlmError, match=f"the teacher's output layer has {VOCAB} tokens, the student's 512"):
        check_same_vocabulary(tiny_tokenizer, tiny_tokenizer, VOCAB, 512)


def test_another_vocabulary_is_refused_at_its_first_different_id(tiny_tokenizer):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<|endoftext|>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(["a wholly different corpus of words " * 50], trainer)
    other = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", pad_token="<pad>")
    with pytest.raises(SlmError, match=r"token id \d+ is '.*' to the teacher and '.*' to the student"):
        check_same_vocabulary(tiny_tokenizer, other, VOCAB, VOCAB)


def test_special_ids_that_differ_are_refused(tiny_tokenizer):
    other = copy.deepcopy(tiny_tokenizer)
    other.eos_token = "<pad>"
    with pytest.raises(SlmError, match="eos_token_id is 0 for the teacher and 1 for the student"):
        check_same_vocabulary(tiny_tokenizer, other, VOCAB, VOCAB)


def test_the_same_vocabulary_tokenizing_differently_is_refused(tiny_tokenizer):
    from tokenizers import pre_tokenizers

    other = copy.deepcopy(tiny_tokenizer)
    other.backend_tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    with pytest.raises(SlmError, match="tokenize the same text differently: 'Hello world!.*' gives id \\d+ to the "
                                       "teacher and \\d+ to the student at token 0"):
        check_same_vocabulary(tiny_tokenizer, other, VOCAB, VOCAB)
