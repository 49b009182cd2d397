"""Transfer learning: features from any layer, linear classifiers on them, finetuning.

- ``extract_features(model, x, layer)`` / ``extract_many``: outputs of named layers.
- ``LinearClassifier`` (softmax or SVM, trained by cnnlab) and ``fit_cv`` (k-fold over L2).
- ``set_lr_mult`` / ``train_from`` / ``resolve_layer``: per-layer learning rates, freezing.
- ``replace_head`` / ``finetune``: a new classifier on a pretrained network, trained with
  cnnlab.train.Trainer.
Importing this package registers the data sets mnist-5k-digits0-4 and mnist-5k-digits5-9.
"""
from . import datasets  # noqa: F401  (registers the digit-subset data sets)
from .features import extract_features, extract_many, layer_output
from .layers import (layer_aliases, resolve_layer, set_lr_mult, train_from, trainable_summary)
from .linear import CVResult, LinearClassifier, cross_validate, fit_cv, stratified_folds

__all__ = ["extract_features", "extract_many", "layer_output", "layer_aliases", "resolve_layer",
           "set_lr_mult", "train_from", "trainable_summary", "LinearClassifier", "CVResult",
           "cross_validate", "fit_cv", "stratified_folds"]
