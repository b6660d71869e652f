"""Teacher and student must read and write the same token ids, or distillation trains on the wrong ones.

Logit distillation compares the two distributions id by id, so the check runs before the first step and
names the first difference of three kinds:

  vocabulary   the sizes of the output layers, or the token a given id stands for
  special ids  eos / bos / pad / unk mapped to different ids (the end of an answer would be another token)
  tokenizing   the same text split into different ids (another pre-tokenizer or normalizer over the same
               vocabulary), found by encoding sample texts with both
"""

from __future__ import annotations

from slmkit.errors import SlmError

SPECIAL_TOKENS = ("eos_token_id", "bos_token_id", "pad_token_id", "unk_token_id")
# Text that splits differently under most pre-tokenizer differences: spaces, digits, case, code, non-ASCII.
PROBE_TEXTS = ("Hello world!  Two  spaces, then 12345 and 3.14159.", "def f(x):\n    return x ** 2  # square",
               "Ünïcödé, 日本語, emoji 🙂 and CamelCaseWords.", " leading space and trailing ")


def check_same_vocabulary(teacher_tokenizer, student_tokenizer, teacher_vocab_size: int, student_vocab_size: int,
                          texts: list[str] | tuple[str, ...] = ()) -> None:
    """Refuse, in one line naming what differs, a teacher and student whose token ids do not mean the same."""
    if teacher_vocab_size != student_vocab_size:
        raise SlmError(f"teacher and student vocabularies differ: the teacher's output layer has "
                       f"{teacher_vocab_size} tokens, the student's {student_vocab_size}; distill into a student "
                       "made from the teacher (slm student) or one with the teacher's tokenizer")
    teacher_vocab, student_vocab = teacher_tokenizer.get_vocab(), student_tokenizer.get_vocab()
    if teacher_vocab != student_vocab:
        teacher_ids = {index: token for token, index in teacher_vocab.items()}
        student_ids = {index: token for token, index in student_vocab.items()}
        index = min(i for i in teacher_ids.keys() | student_ids.keys() if teacher_ids.get(i) != student_ids.get(i))
        raise SlmError(f"teacher and student vocabularies differ: token id {index} is "
                       f"{teacher_ids.get(index)!r} to the teacher and {student_ids.get(index)!r} to the student")
    for name in SPECIAL_TOKENS:
        teacher_id, student_id = getattr(teacher_tokenizer, name, None), getattr(student_tokenizer, name, None)
        if teacher_id is not None and student_id is not None and teacher_id != student_id:
            raise SlmError(f"teacher and student special tokens differ: {name} is {teacher_id} for the teacher "
                           f"and {student_id} for the student")
    for text in (*PROBE_TEXTS, *texts):
        teacher_ids = teacher_tokenizer(text, add_special_tokens=False).input_ids
        student_ids = student_tokenizer(text, add_special_tokens=False).input_ids
        if teacher_ids != student_ids:
            at = next((i for i, (a, b) in enumerate(zip(teacher_ids, student_ids)) if a != b),
                      min(len(teacher_ids), len(student_ids)))
            raise SlmError(f"teacher and student tokenize the same text differently: {text[:40]!r} gives id "
                           f"{_at(teacher_ids, at)} to the teacher and {_at(student_ids, at)} to the student at "
                           f"token {at}")


def _at(ids: list[int], index: int) -> str:
    return str(ids[index]) if index < len(ids) else "nothing (the text ended)"
