"""What an evaluation reports beside the loss, by a task's `metric` (data.tasks): a classifier's accuracy, or
the perplexity of a language model (a seq2seq model's: of its targets)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from slmkit.train.base import perplexity


@dataclass(frozen=True)
class Metric:
    """`report(evaluation)`: the metric from `Trainer.evaluate()`'s dict, for the run's result;
    `trainer_options`: what the Trainer needs to compute it (none: the loss is enough)."""

    report: Callable[[dict], dict]
    trainer_options: dict = field(default_factory=dict)

    @property
    def loss_only(self) -> bool:
        """Whether evaluation keeps the loss alone (a language model's logits are vocabulary-sized)."""
        return not self.trainer_options


def _predicted_class(logits, labels):
    return logits.argmax(dim=-1)


def _accuracy(prediction) -> dict:
    predicted, gold = prediction.predictions, prediction.label_ids
    return {"accuracy": float((predicted == gold).mean())}


def _accuracy_report(evaluation: dict) -> dict:
    return {"eval_accuracy": evaluation.get("eval_accuracy")}


def _perplexity_report(evaluation: dict) -> dict:
    if evaluation.get("eval_loss") is None:
        return {}
    report = {}
    if "eval_ce_loss" in evaluation:  # a distillation's eval_loss holds more than the cross-entropy
        report["eval_ce_loss"] = evaluation["eval_ce_loss"]
    report["eval_perplexity"] = perplexity(evaluation.get("eval_ce_loss", evaluation["eval_loss"]))
    return report


METRICS = {
    "accuracy": Metric(_accuracy_report, {"compute_metrics": _accuracy,
                                          "preprocess_logits_for_metrics": _predicted_class}),
    "perplexity": Metric(_perplexity_report),
}
