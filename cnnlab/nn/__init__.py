"""Thin stateful modules around the pure ops in :mod:`cnnlab.functional` (PyTorch-like names)."""
from .containers import Concat, Residual, Sequential
from .layers import BatchNorm1d, BatchNorm2d, Conv2d, DropConnectLinear, Linear
from .loss import LOSSES, CrossEntropyLoss, SVMLoss
from .module import Module
from .parameter import Parameter
from .simple import (AvgPool2d, Dropout, Flatten, GlobalAvgPool2d, Identity, LeakyReLU,
                     MaxPool2d, ReLU, Sigmoid, Tanh)

__all__ = ["Module", "Parameter", "Sequential", "Residual", "Concat", "Conv2d", "Linear",
           "DropConnectLinear", "BatchNorm1d", "BatchNorm2d", "ReLU", "LeakyReLU", "Sigmoid",
           "Tanh", "Flatten", "MaxPool2d", "AvgPool2d", "GlobalAvgPool2d", "Dropout", "Identity",
           "CrossEntropyLoss", "SVMLoss", "LOSSES"]
