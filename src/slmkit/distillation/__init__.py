"""Distillation: students made from a teacher, and the trainer that distills the teacher into them.

Example:
    slmkit.student(lm := slmkit.load("minilm-l6"), StudentConfig(layers=(0, 2, 4)))
    slmkit.distill("teacher", "out/student", "out/kd", DistillConfig(data="train.tsv", loss="fkl"))
"""

from slmkit.distillation.config import DISTILL_TASKS, DistillConfig
from slmkit.distillation.student import StudentConfig, evenly_spaced, make_student, parse_layers

__all__ = ["DISTILL_TASKS", "DistillConfig", "StudentConfig", "evenly_spaced", "make_student", "parse_layers"]

