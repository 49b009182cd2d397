"""Convolution algorithms behind one signature, and the per-layer chooser.

Registered algorithms: ``direct`` (the reference), ``im2col`` (im2col + GEMM,
everything), ``fft`` (stride 1), ``winograd2`` / ``winograd4`` (3x3, stride 1).
See :mod:`cnnlab.conv.algorithm` for the signature, :mod:`cnnlab.conv.chooser`
for how "auto" picks one and how to force one, :mod:`cnnlab.conv.threads` for
how they use the cores, :mod:`cnnlab.conv.prepared` for keeping a frozen
layer's transformed weights, and docs/convolution.md for when each wins.
"""
from . import direct, fft, gemm, winograd  # noqa: F401 - registers the algorithms
from .algorithm import ALGORITHMS, PASSES, ConvAlgorithm, register
from .chooser import (CHOOSER, Choice, Chooser, check_algo_name, clear_choices, default_algo,
                      disable_disk_cache, eligible, enable_disk_cache, explain, get_default_algo,
                      get_workspace_limit, select, select_step, set_default_algo,
                      set_workspace_limit)
from .geometry import ConvGeometry
from .im2col import col2im, im2col
from .prepared import WeightCache
from .threads import get_num_threads, set_num_threads

__all__ = ["ALGORITHMS", "PASSES", "ConvAlgorithm", "ConvGeometry", "register", "select",
           "select_step",
           "eligible", "im2col", "col2im", "CHOOSER", "Chooser", "Choice", "explain",
           "set_default_algo", "get_default_algo", "default_algo", "set_workspace_limit",
           "get_workspace_limit", "enable_disk_cache", "disable_disk_cache", "clear_choices",
           "get_num_threads", "set_num_threads", "WeightCache", "check_algo_name"]
