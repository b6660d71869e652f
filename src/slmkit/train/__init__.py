"""Training: transformers' Trainer with atomic checkpoints, a NaN guard and SIGTERM handling (base), what every
run does with it (run: the arguments a config declares, one Trainer made and trained), the life cycle of a run
on a data file that fine-tuning and distillation share (lifecycle), and its metrics."""

from slmkit.train.base import SlmTrainer, TrainingError, TrainProgress, loss_curve

__all__ = ["SlmTrainer", "TrainingError", "TrainProgress", "loss_curve"]
