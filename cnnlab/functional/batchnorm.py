"""Batch normalization (Ioffe & Szegedy 2015) for (N, D) and (N, C, H, W) inputs.

Statistics are per feature D / per channel C, over N (and H, W):

    train:  mu, var = mean(x), mean((x - mu)^2)       (biased, used to normalise)
    eval:   mu, var = running_mean, running_var
    xhat = (x - mu) / sqrt(var + eps),   out = gamma * xhat + beta

Backward (train), m = number of values per feature:
    dgamma = sum(dout * xhat),  dbeta = sum(dout)
    dx = gamma / sqrt(var + eps) * (dout - dbeta / m - xhat * dgamma / m)
(the textbook form with dxhat = dout * gamma, since sum(dxhat) = gamma dbeta and
sum(dxhat * xhat) = gamma dgamma). Sums per channel run over the contiguous H*W axis first
(numpy's pairwise summation), then over N; element-wise steps work in place where they can.
Result dtypes are numpy's promotion of the formulas above (e.g. a float32 input with float64
running statistics normalises in float64 in eval mode).
In eval mode the statistics are constants: dx = dout * gamma / sqrt(var + eps).

The running statistics follow PyTorch: running = (1 - momentum) * running + momentum * batch,
with the unbiased batch variance; :func:`batchnorm_running_update` computes them (pure).
"""
from __future__ import annotations

from ..backend import get_xp
from ..conv.threads import by_channels
from ..errors import ShapeError


def _axes(x, gamma):
    if x.ndim == 2:
        axes, shape = (0,), (1, -1)
    elif x.ndim == 4:
        axes, shape = (0, 2, 3), (1, -1, 1, 1)
    else:
        raise ShapeError(f"batch norm expects (N, D) or (N, C, H, W), got {tuple(x.shape)}")
    if x.shape[1] != gamma.shape[0]:
        raise ShapeError(f"batch norm over {gamma.shape[0]} features got input {tuple(x.shape)}")
    return axes, shape


def _check_vectors(c, **vectors):
    for name, v in vectors.items():
        if v is not None and tuple(v.shape) != (c,):
            raise ShapeError(f"batch norm over {c} features needs {name} of shape ({c},), got "
                             f"{tuple(v.shape)}")


def _channel_sum(a):
    """Per-feature sums of (N, D) or (N, C, H, W) ``a`` -> (D,) / (C,)."""
    if a.ndim == 2:
        return a.sum(axis=0)
    return a.reshape(a.shape[0], a.shape[1], -1).sum(axis=2).sum(axis=0)


def batchnorm_forward(x, gamma, beta, running_mean, running_var, training=True, eps=1e-5):
    """Return (out, cache). In training, cache carries the batch mean/var for the running update.

    Large inputs are computed in channel blocks on the convolution pool
    (``cnnlab.conv.threads.by_channels``); every channel is computed the same way either way."""
    xp = get_xp(x)
    axes, shape = _axes(x, gamma)
    _check_vectors(x.shape[1], gamma=gamma, beta=beta, running_mean=running_mean,
                   running_var=running_var)
    m = x.size // x.shape[1]
    if training and m < 2:
        raise ShapeError(f"batch norm in training mode needs more than 1 value per channel, "
                         f"got input {tuple(x.shape)}; use a larger batch or model.eval()")
    c = x.shape[1]
    xhat = xp.empty(x.shape, dtype=x.dtype if training else xp.result_type(x, running_mean))
    out = xp.empty(x.shape, dtype=xp.result_type(xhat, gamma))
    if training:
        mu, var = xp.empty(c, dtype=x.dtype), xp.empty(c, dtype=x.dtype)
    else:
        mu, var = running_mean, running_var
    inv_std = xp.empty(c, dtype=xp.result_type(var, eps))

    def block(c0, c1):
        xs, xh = x[:, c0:c1], xhat[:, c0:c1]
        if training:
            mu[c0:c1] = _channel_sum(xs) / x.dtype.type(m)
            xp.subtract(xs, mu[c0:c1].reshape(shape), out=xh)
            sq = out[:, c0:c1] if out.dtype == xh.dtype else None    # out's block as scratch
            var[c0:c1] = _channel_sum(xp.multiply(xh, xh, out=sq)) / x.dtype.type(m)
        else:
            xp.subtract(xs, mu[c0:c1].reshape(shape), out=xh)
        inv_std[c0:c1] = 1.0 / xp.sqrt(var[c0:c1] + eps)
        xh *= inv_std[c0:c1].reshape(shape).astype(xh.dtype, copy=False)
        o = out[:, c0:c1]
        xp.multiply(xh, gamma[c0:c1].reshape(shape), out=o)
        o += beta[c0:c1].reshape(shape)
    by_channels(block, x)
    return out, (xhat, gamma, inv_std, axes, shape, training, mu, var)


def batchnorm_backward(dout, cache, need_dx=True, need_dw=True):
    """Return (dx, dgamma, dbeta)."""
    xhat, gamma, inv_std, axes, shape, training, _, _ = cache
    xp = get_xp(dout)
    c = dout.shape[1]
    sums = need_dw or (need_dx and training)
    dgamma = xp.empty(c, dtype=xp.result_type(dout, xhat)) if sums else None
    dbeta = xp.empty(c, dtype=dout.dtype) if sums else None
    dx_dtype = xp.result_type(xhat, dout) if training else xp.result_type(dout, gamma, inv_std)
    dx = xp.empty(dout.shape, dtype=dx_dtype) if need_dx else None
    m = dout.size // c

    def block(c0, c1):
        d = dout[:, c0:c1]
        if sums:
            scratch = dx[:, c0:c1] if need_dx and dx.dtype == dgamma.dtype else None
            dgamma[c0:c1] = _channel_sum(xp.multiply(d, xhat[:, c0:c1], out=scratch))
            dbeta[c0:c1] = _channel_sum(d)
        if need_dx:
            scale = (gamma[c0:c1] * inv_std[c0:c1]).reshape(shape)
            dxb = dx[:, c0:c1]
            if training:
                xp.multiply(xhat[:, c0:c1], (-dgamma[c0:c1] / m).reshape(shape), out=dxb)
                dxb += d
                dxb -= (dbeta[c0:c1] / m).reshape(shape)
                dxb *= scale
            else:
                xp.multiply(d, scale, out=dxb)
    by_channels(block, dout)
    if not need_dw:
        dgamma = dbeta = None
    return dx, dgamma, dbeta


def batchnorm_running_update(running_mean, running_var, cache, momentum=0.1):
    """New (running_mean, running_var) after a training-mode forward with this cache."""
    xhat, _, _, _, _, training, mu, var = cache
    if not training:
        return running_mean, running_var
    m = xhat.size // xhat.shape[1]
    unbiased = var * (m / (m - 1))
    return ((1 - momentum) * running_mean + momentum * mu,
            (1 - momentum) * running_var + momentum * unbiased)
