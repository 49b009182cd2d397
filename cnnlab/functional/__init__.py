"""Pure math: every op as a ``*_forward(...) -> (out, cache)`` / ``*_backward(dout, cache)`` pair.

No state lives here; :mod:`cnnlab.nn` wraps these in modules.
"""
from .activation import (leaky_relu_backward, leaky_relu_forward, relu_backward, relu_forward,
                         sigmoid_backward, sigmoid_forward, tanh_backward, tanh_forward)
from .batchnorm import batchnorm_backward, batchnorm_forward, batchnorm_running_update
from .conv import conv2d_backward, conv2d_forward, shared_prepared
from .dropout import dropconnect_backward, dropconnect_forward, dropout_backward, dropout_forward
from .linear import flatten_backward, flatten_forward, linear_backward, linear_forward
from .loss import (l2_penalty_backward, l2_penalty_forward, log_softmax, softmax,
                   softmax_cross_entropy_backward, softmax_cross_entropy_forward,
                   svm_hinge_backward, svm_hinge_forward)
from .pool import (avg_pool_backward, avg_pool_forward, global_avg_pool_backward,
                   global_avg_pool_forward, max_pool_backward, max_pool_forward, pool_params)

__all__ = [name for name in dir() if name.endswith(("_forward", "_backward", "_update"))] + [
    "softmax", "log_softmax", "shared_prepared", "pool_params"]
