"""Parameterised layers: Conv2d, Linear, DropConnectLinear, BatchNorm1d/2d.

Shapes (NCHW, weights as in PyTorch):
    Conv2d      x (N, C, H, W) -> (N, O, HO, WO); weight (O, C/groups, KH, KW), bias (O,)
    Linear      x (N, D) -> (N, K);               weight (K, D), bias (K,)
    BatchNorm1d x (N, D);  BatchNorm2d x (N, C, H, W); weight=gamma, bias=beta, running stats
Weights start He-normal (for ReLU networks), biases at zero; pass ``rng`` for reproducibility.
"""
from __future__ import annotations

import numpy as np

from .. import functional as F
from ..backend import get_xp
from ..conv import ALGORITHMS, ConvGeometry, WeightCache, check_algo_name, select
from ..conv.geometry import pair, resolve_padding
from ..errors import ShapeError, UnsupportedConfigError
from ..functional.dropout import check_drop_probability
from .init import default_rng, he_normal
from .module import Module
from .parameter import Parameter


class Conv2d(Module):
    """y = conv(x, W) + b by the algorithm ``algo`` ("auto": chosen per shape, cnnlab.conv).

    Frozen weight: while ``weight.frozen`` (and ``cache_weights``, the default), the layer
    keeps what the algorithm derives from W alone (Winograd's U = G W G^T, FFT's kernel
    spectra) in ``weight_cache`` (a :class:`cnnlab.conv.WeightCache`) instead of recomputing
    it on every forward and data-gradient pass, and "auto" times the algorithms that way
    (and keeps an algorithm whose weights the layer already holds when it measured within
    15% of the fastest, ``cnnlab.conv.chooser.REUSE_SLACK``).
    The cache is dropped when the weight is given new data (``weight.data = ...``,
    ``load_state_dict``) or is seen trainable; while it is held the weight array is
    read-only, so edit a frozen weight by assigning a new array, or call
    ``clear_weight_cache()`` first. Memory: ``weight_cache.nbytes`` (4x the weight for
    Winograd F(4x4), 1.8x for F(2x2)); ``cache_weights=False`` turns it off.

    Trainable weight, in training mode: the three passes are chosen together
    (``F.conv2d_forward(..., for_backward=True)``, ``cnnlab.conv.select_step``): where auto's
    timing of whole steps says so (without measurements: where two passes picked the same
    algorithm; a forced algorithm: always) the forward's U serves the data gradient and its
    input tiles V (Winograd: 2.25x the input for F(4x4)) or column matrices (im2col: KH*KW
    times the input) the weight gradient of the same step, held until the backward. The
    layer keeps U's buffer from step to step (the same memory as the
    frozen cache above, ``weight_cache.step_u``; a fresh 37.7 MB array would cost its page
    faults on every step); ``clear_weight_cache()`` frees it, ``cache_weights=False`` turns
    all of this off.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, algo="auto", rng=None, dtype=np.float32,
                 cache_weights=True):
        super().__init__()
        kh, kw = pair(kernel_size, "kernel_size")
        if min(kh, kw, in_channels, out_channels, groups) < 1:
            raise ShapeError(f"Conv2d needs kernel_size, in_channels, out_channels and groups "
                             f">= 1, got {kernel_size!r}, {in_channels!r}, {out_channels!r}, "
                             f"{groups!r}")
        if in_channels % groups or out_channels % groups:
            raise ShapeError(f"groups={groups} must divide in_channels={in_channels} and "
                             f"out_channels={out_channels}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = (kh, kw), pair(stride, "stride")
        self.dilation = pair(dilation, "dilation")
        self.padding = resolve_padding(padding, (kh, kw), self.dilation, self.stride)
        check_algo_name(algo, " (nn.Conv2d algo=)")
        if algo in ALGORITHMS:      # what a forced algorithm cannot do is known now
            smallest = tuple(d * (k - 1) + 1 for k, d in zip((kh, kw), self.dilation))
            g = ConvGeometry.of((1, in_channels, *smallest), (out_channels, in_channels // groups,
                                kh, kw), self.stride, self.padding, self.dilation, groups)
            reason = ALGORITHMS[algo].supports(g, "forward")
            if reason is not None:
                from ..conv import eligible
                raise UnsupportedConfigError(
                    f"nn.Conv2d algo={algo!r} cannot run this layer ({reason}); algorithms "
                    f"that can: {', '.join(eligible(g, 'forward'))}, or 'auto'")
        self.groups, self.algo = groups, algo
        fan_in = in_channels // groups * kh * kw
        rng = default_rng(rng)
        self.weight = Parameter(he_normal((out_channels, in_channels // groups, kh, kw), fan_in, rng, dtype))
        if bias:
            self.bias = Parameter(np.zeros(out_channels, dtype=dtype))
        else:
            self.bias = None
        self.cache_weights = bool(cache_weights)
        self.weight_cache = WeightCache()

    # -- the convolution itself (also used by cnnlab.style's input-gradient pass) ----------
    def geometry(self, x_shape) -> ConvGeometry:
        """The ConvGeometry of this layer on an input of shape ``x_shape`` (N, C, H, W)."""
        return ConvGeometry.of(x_shape, self.weight.data.shape, self.stride, self.padding,
                               self.dilation, self.groups)

    def conv(self, x, g=None):
        """conv(x, W) without the bias: x (N, C, H, W) -> (N, O, HO, WO)."""
        return self._run("forward", x, g if g is not None else self.geometry(x.shape))

    def conv_transpose(self, dy, g):
        """The data gradient dx = conv_transpose(dy, W): dy (N, O, HO, WO) -> (N, C, H, W),
        for the input geometry ``g``."""
        return self._run("backward_data", dy, g)

    def clear_weight_cache(self) -> None:
        """Drop the prepared weights (and make the weight array writeable again), and the
        buffer a training step keeps for its transformed weight."""
        self.weight_cache.clear()

    def _run(self, pass_, a, g):
        w = self.weight.data
        a = self._in_weight_dtype(a)            # a module computes in its weight's dtype
        if g.n == 0:
            return get_xp(a).zeros(g.y_shape if pass_ == "forward" else g.x_shape, w.dtype)
        frozen = self.cache_weights and self.weight.frozen
        if not frozen and len(self.weight_cache):
            self.weight_cache.clear()           # trainable again: its transforms go stale
        held = self.weight_cache.held(g, pass_) if frozen and w is self.weight_cache.array else ()
        algorithm = select(g, pass_, self.algo, a.dtype, prepared=frozen, held=held,
                           xp=get_xp(a, w))
        prepared = self.weight_cache.get(algorithm, w, g, pass_) if frozen else None
        return algorithm.run(pass_, a, w, g, prepared=prepared)

    def forward(self, x):
        """As ``F.conv2d_forward`` (and with its cache), through ``conv``."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ShapeError(f"Conv2d expects input with {self.in_channels} channels (N, "
                             f"{self.in_channels}, H, W), got {tuple(x.shape)}")
        w = self.weight.data
        x = self._in_weight_dtype(x)
        b = self.bias.data if self.bias is not None else None
        if self.training and self.cache_weights and not self.weight.frozen:
            if len(self.weight_cache):                  # a training step: see above
                self.weight_cache.clear()               # trainable again: its transforms go stale
            out, self._cache = F.conv2d_forward(
                x, w, b, self.stride, self.padding, self.dilation, self.groups, self.algo,
                for_backward=True, need_dx=self.need_input_grad,
                reuse=self.weight_cache.step_u)
            self.weight_cache.step_u = F.shared_prepared(self._cache)
            return out
        self.weight_cache.step_u = None
        g = self.geometry(x.shape)
        out = self.conv(x, g)
        if b is not None:
            out += b.reshape(1, -1, 1, 1)
        self._cache = (x, w, b is not None, g, self.algo, None)    # F.conv2d_forward's layout
        return out

    def backward(self, dout):
        """dx (None without ``need_input_grad``); the weight's and the bias's gradients each
        accumulated unless that parameter is frozen (a frozen weight with a trainable bias
        costs only the bias's sum over dout)."""
        cache = self._take_cache()
        need_w = not self.weight.frozen
        need_b = self.bias is not None and not self.bias.frozen
        db = None
        if not need_w and cache[1] is self.weight.data:       # no weight gradient
            dx = self.conv_transpose(dout, cache[3]) if self.need_input_grad else None
        else:
            dx, dw, db = F.conv2d_backward(dout, cache, self.need_input_grad, need_w)
            if need_w:
                self.weight.accumulate(dw)
        if need_b:
            self.bias.accumulate(db if db is not None else
                                 dout.sum(axis=(0, 2, 3)).astype(self.bias.data.dtype))
        return dx

    def extra_repr(self):
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if any(self.padding):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.algo != "auto":
            s += f", algo={self.algo!r}"
        if not self.cache_weights:
            s += ", cache_weights=False"
        return s


class Linear(Module):
    def __init__(self, in_features, out_features, bias=True, rng=None, dtype=np.float32):
        super().__init__()
        if min(in_features, out_features) < 1:
            raise ShapeError(f"Linear needs in_features and out_features >= 1, got "
                             f"{in_features!r}, {out_features!r}")
        self.in_features, self.out_features = in_features, out_features
        rng = default_rng(rng)
        self.weight = Parameter(he_normal((out_features, in_features), in_features, rng, dtype))
        self.bias = Parameter(np.zeros(out_features, dtype=dtype)) if bias else None

    def _forward(self, x, w):
        b = self.bias.data if self.bias is not None else None
        return F.linear_forward(x, w, b)

    def forward(self, x):
        out, self._cache = self._forward(self._in_weight_dtype(x), self.weight.data)
        return out

    def _grads(self, dout, cache, need_dw):
        return F.linear_backward(dout, cache, self.need_input_grad, need_dw)

    def backward(self, dout):
        """dx; the weight's and the bias's gradients each accumulated unless frozen."""
        need_w = not self.weight.frozen
        need_b = self.bias is not None and not self.bias.frozen
        dx, dw, db = self._grads(self._in_weight_dtype(dout), self._take_cache(), need_w or need_b)
        if need_w:
            self.weight.accumulate(dw)
        if need_b:
            self.bias.accumulate(db)
        return dx

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}" + (
            ", bias=False" if self.bias is None else "")


class DropConnectLinear(Linear):
    """Linear layer whose weights are dropped with probability ``p`` in training (Wan et al. 2013).

    ``per_sample``: one weight mask per example, as in the paper (memory batch x out x in),
    instead of one per mini-batch (a single GEMM); see :mod:`cnnlab.functional.dropout`.
    """

    def __init__(self, in_features, out_features, p=0.5, bias=True, rng=None, dtype=np.float32,
                 per_sample=False):
        super().__init__(in_features, out_features, bias, rng, dtype)
        check_drop_probability(p)
        self.p, self.per_sample = p, bool(per_sample)
        self.rng = rng if rng is not None else np.random.default_rng()

    def forward(self, x):
        b = self.bias.data if self.bias is not None else None
        out, self._cache = F.dropconnect_forward(self._in_weight_dtype(x), self.weight.data, b,
                                                 self.p, self.rng,
                                                 self.training, per_sample=self.per_sample)
        return out

    def _grads(self, dout, cache, need_dw):
        return F.dropconnect_backward(dout, cache, self.need_input_grad, need_dw)

    def extra_repr(self):
        return super().extra_repr() + f", p={self.p}" + (", per_sample=True" if self.per_sample else "")


class _BatchNorm(Module):
    ndim = None

    def __init__(self, num_features, eps=1e-5, momentum=0.1, dtype=np.float32):
        super().__init__()
        if num_features < 1 or not eps > 0 or not 0 <= momentum <= 1:
            raise ShapeError(f"{type(self).__name__} needs num_features >= 1, eps > 0 and "
                             f"momentum in [0, 1], got {num_features!r}, {eps!r}, {momentum!r}")
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.weight = Parameter(np.ones(num_features, dtype=dtype))
        self.bias = Parameter(np.zeros(num_features, dtype=dtype))
        self.register_buffer("running_mean", np.zeros(num_features, dtype=dtype))
        self.register_buffer("running_var", np.ones(num_features, dtype=dtype))

    def forward(self, x):
        if x.ndim != self.ndim:
            raise ShapeError(f"{type(self).__name__} expects a {self.ndim}-d input, got {tuple(x.shape)}")
        out, cache = F.batchnorm_forward(self._in_weight_dtype(x), self.weight.data,
                                         self.bias.data, self.running_mean, self.running_var,
                                         self.training, self.eps)
        if self.training:
            rm, rv = F.batchnorm_running_update(self.running_mean, self.running_var, cache, self.momentum)
            self.register_buffer("running_mean", rm.astype(self.running_mean.dtype))
            self.register_buffer("running_var", rv.astype(self.running_var.dtype))
        self._cache = cache
        return out

    def backward(self, dout):
        """dx; gamma's (weight) and beta's (bias) gradients each accumulated unless frozen."""
        need_g, need_b = not self.weight.frozen, not self.bias.frozen
        dx, dg, db = F.batchnorm_backward(self._in_weight_dtype(dout), self._take_cache(),
                                          self.need_input_grad, need_g or need_b)
        if need_g:
            self.weight.accumulate(dg)
        if need_b:
            self.bias.accumulate(db)
        return dx

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


class BatchNorm1d(_BatchNorm):
    ndim = 2


class BatchNorm2d(_BatchNorm):
    ndim = 4
