"""The training base: transformers' Trainer with atomic checkpoints, a NaN guard and SIGTERM handling."""

from slmkit.train.base import SlmTrainer, TrainingError, TrainProgress, loss_curve

__all__ = ["SlmTrainer", "TrainingError", "TrainProgress", "loss_curve"]
