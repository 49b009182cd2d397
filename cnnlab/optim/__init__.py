"""Optimizers (own their per-parameter state) and learning-rate schedules."""
from .optimizer import OPTIMIZERS, SGD, Adam, Optimizer, RMSprop, make_optimizer
from .schedule import Constant, Cosine, StepDecay, Warmup, apply_schedule, make_schedule

__all__ = ["Optimizer", "SGD", "Adam", "RMSprop", "OPTIMIZERS", "make_optimizer", "Constant",
           "StepDecay", "Cosine", "Warmup", "make_schedule", "apply_schedule"]
