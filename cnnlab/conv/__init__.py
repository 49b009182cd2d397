"""Convolution algorithms behind one signature, and the per-layer chooser.

See :mod:`cnnlab.conv.algorithm` for the signature and :mod:`cnnlab.conv.chooser`
for how "auto" picks one.
"""
from . import direct, gemm  # noqa: F401 - registers the algorithms
from .algorithm import ALGORITHMS, PASSES, ConvAlgorithm, register
from .chooser import eligible, select
from .geometry import ConvGeometry
from .im2col import col2im, im2col

__all__ = ["ALGORITHMS", "PASSES", "ConvAlgorithm", "ConvGeometry", "register", "select",
           "eligible", "im2col", "col2im"]
