"""Accuracy and macro-F1 of a sequence-classification model on (text, label) rows."""

from __future__ import annotations

from collections.abc import Callable

from slmkit.errors import SlmError
from slmkit.runtime import as_runtime


def _gold_ids(lm, labels: list[str]) -> list[int]:
    """Map file labels to the model's label ids: by name first, then as integers."""
    label2id = {str(name): int(index) for name, index in (lm.config.label2id or {}).items()}
    if all(label in label2id for label in labels):
        return [label2id[label] for label in labels]
    num_labels = lm.config.num_labels
    if all(label.lstrip("-").isdigit() and 0 <= int(label) < num_labels for label in labels):
        return [int(label) for label in labels]
    unknown = next(label for label in labels if label not in label2id)
    raise SlmError(f"label {unknown!r} is not one of the model's labels ({', '.join(sorted(label2id))}) "
                   f"nor an id below {num_labels}")


def macro_f1(gold: list[int], predicted: list[int]) -> float:
    # Hand-written: four lines do not justify a scikit-learn dependency.
    scores = []
    for label in sorted(set(gold) | set(predicted)):
        tp = sum(g == label and p == label for g, p in zip(gold, predicted))
        fp = sum(g != label and p == label for g, p in zip(gold, predicted))
        fn = sum(g == label and p != label for g, p in zip(gold, predicted))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(scores) / len(scores)


def classification_accuracy(lm, rows: list[tuple[str, str]], *, batch_size: int = 32, max_length: int = 512,
                            progress: Callable[[int], None] | None = None) -> dict:
    lm = as_runtime(lm)
    lm.require("classifier", "classification")
    gold = _gold_ids(lm, [label for _, label in rows])
    predicted: list[int] = []
    for start in range(0, len(rows), batch_size):
        texts = [text for text, _ in rows[start:start + batch_size]]
        predicted += lm.classify(texts, max_length).argmax(dim=-1).tolist()
        if progress:
            progress(len(texts))
    accuracy = sum(g == p for g, p in zip(gold, predicted)) / len(gold)
    return {"accuracy": accuracy, "macro_f1": macro_f1(gold, predicted), "examples": len(gold)}
