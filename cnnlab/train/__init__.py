"""Training: the Trainer loop, checkpoints, metrics.json and the loss/accuracy plot.

``Trainer(model, loss, optimizer, schedule, out_dir=..., seed=...).fit(train_ds, test_ds)``;
``save_checkpoint`` / ``load_checkpoint`` read and write the checkpoint files (.npz or
.safetensors, atomic); ``build_from_checkpoint`` rebuilds a model a run was trained with.
The ``cnnlab train`` and ``cnnlab eval`` commands live in :mod:`cnnlab.train.commands`.
"""
from .checkpoint import (Checkpoint, build_from_checkpoint, build_model_from_config,
                         load_checkpoint, resolve_checkpoint, save_checkpoint)
from .trainer import Trainer, TrainingDiverged

__all__ = ["Trainer", "TrainingDiverged", "Checkpoint", "save_checkpoint", "load_checkpoint",
           "resolve_checkpoint", "build_from_checkpoint", "build_model_from_config"]
