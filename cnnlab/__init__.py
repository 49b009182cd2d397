"""cnnlab: convolutional networks in practice.

Pure forward/backward ops in :mod:`cnnlab.functional`, convolution algorithms in
:mod:`cnnlab.conv`, thin stateful modules in :mod:`cnnlab.nn`, optimizers in
:mod:`cnnlab.optim`, data in :mod:`cnnlab.data`, training in :mod:`cnnlab.train`.
"""
__version__ = "0.1.0"
