"""Distillation: students made from a teacher, and (to come) the trainer that distills into them."""

from slmkit.distill.student import StudentConfig, evenly_spaced, make_student, parse_layers

__all__ = ["StudentConfig", "evenly_spaced", "make_student", "parse_layers"]
