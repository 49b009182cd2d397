"""The VGG-16/19 trunk that neural style differentiates, and its input-gradient pass.

Built from cnnlab modules (``cnnlab.models.vgg.make_features``), truncated after the
deepest layer a loss reads, with every parameter frozen. Parameter names are
torchvision's (``features.N.weight``), so published state dicts load directly.

The style pass needs the loss's gradient with respect to the *image* only, so
:meth:`VGGFeatures.forward` / :meth:`VGGFeatures.backward` run the layers through the
public functional and convolution APIs and keep only what the data gradient needs:

    conv   y = conv(x, W) + b     keeps (W, geometry)        dx = conv_transpose(dy, W)
                                  (not x: no weight gradient is ever computed)
                                  through Conv2d.conv / conv_transpose, so each layer
                                  keeps its transformed weights (Winograd's U) across
                                  evaluations: its weight is frozen (Conv2d.weight_cache)
    relu   y = max(y, 0) in place keeps the mask y > 0       dx = dy * mask, in place
    pool   cnnlab.functional pooling (2x2/2 windows on its fast path: boolean winners
           for max, nothing but the shape for average); a 2x2/2 max pool right above a
           ReLU also applies that ReLU's mask, at the pooled size (the ReLU keeps none)

so a layer's activation is freed as soon as the next layer has read it, unless a loss
asked for it. Arrays are float32 in a style run, float64 in the checks: the pass keeps
the dtype of its input.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from .. import functional as F
from .. import nn
from ..conv import default_algo
from ..conv.threads import by_channels
from ..errors import CnnlabError
from ..models.vgg import CONFIGS, layer_names, make_features

MODELS = ("vgg16", "vgg19")


def check_layers(model: str, layers) -> list[str]:
    """The conventional layer names of ``model`` (conv1_1, relu1_1, ..., pool5); raises
    CnnlabError naming the valid ones when any of ``layers`` is unknown."""
    if model not in MODELS:
        raise CnnlabError(f"unknown style model {model!r}; choose one of {', '.join(MODELS)}")
    names = layer_names(CONFIGS[model])
    unknown = [name for name in layers if name not in names]
    if unknown:
        raise CnnlabError(f"{model} has no layer {', '.join(map(repr, unknown))}; its layers are "
                          f"{', '.join(names)}")
    return names


# ------------------------------------------------------------------------------ fast layers
# Element-wise passes split by channels over cnnlab.conv's worker pool (numpy's loops release
# the GIL), like the convolutions: cnnlab.conv.threads.by_channels.


def _add_bias(y, b):
    """y += b per channel (in place)."""
    b = b.reshape(1, -1, 1, 1)

    def block(c0, c1):
        np.add(y[:, c0:c1], b[:, c0:c1], out=y[:, c0:c1])
    by_channels(block, y)


def _relu(x, copy, mask):
    """max(x, 0), in place unless ``copy``; with ``mask`` also returns the mask y > 0
    (what the backward pass needs), else None."""
    y = np.empty_like(x) if copy else x
    m = np.empty(x.shape, dtype=bool) if mask else None

    def block(c0, c1):
        np.maximum(x[:, c0:c1], 0, out=y[:, c0:c1])
        if m is not None:
            np.greater(y[:, c0:c1], 0, out=m[:, c0:c1])
    by_channels(block, x)
    return y, m


def _multiply_inplace(g, mask):
    """g *= mask (the ReLU backward), in place."""
    def block(c0, c1):
        np.multiply(g[:, c0:c1], mask[:, c0:c1], out=g[:, c0:c1])
    by_channels(block, g)


def _maxpool_relu_backward(dout, cache):
    """Max pool backward after the ReLU below it: the ReLU mask, which matters only at the
    window maxima (> 0 exactly where the pooled output is), applied at the pooled size."""
    pool_cache, positive = cache
    return F.max_pool_backward(dout * positive, pool_cache)


class _NoTape(list):
    """A tape that forgets: forward without backward keeps no masks."""

    def append(self, item):
        pass


def _is_pool2(m, x) -> bool:
    """A 2x2 stride-2 unpadded max pool (whose backward can apply the ReLU mask below it)."""
    return (type(m) is nn.MaxPool2d and m.kernel_size in (2, (2, 2)) and m.stride in (2, (2, 2))
            and m.padding in (0, (0, 0)) and x.shape[2] >= 2 and x.shape[3] >= 2
            and isinstance(x, np.ndarray))


class VGGFeatures(nn.Module):
    """VGG-16 or VGG-19 convolutional layers up to ``last`` (a name such as "relu5_1").

    ``features`` is the cnnlab Sequential (torchvision indices), frozen; ``names`` its
    layer names. Random weights by default (He-normal, zero bias, see :meth:`randomize`);
    :func:`cnnlab.style.weights.load_vgg_weights` supplies published ones.
    """

    def __init__(self, model="vgg19", last="relu5_1", pooling="max", rng=None):
        super().__init__()
        names = check_layers(model, [last])
        if pooling not in ("max", "avg"):
            raise CnnlabError(f"pooling must be 'max' or 'avg', got {pooling!r}")
        depth = names.index(last) + 1
        rng = rng if rng is not None else np.random.default_rng()
        full = make_features(CONFIGS[model][: self._cfg_length(model, depth)], False, 3, pooling, rng)
        self.features = nn.Sequential(OrderedDict((str(i), m) for i, m in enumerate(full) if i < depth))
        self.features.freeze()
        self.features.eval()
        self.model, self.pooling = model, pooling
        self.names = names[:depth]
        self._tape = None

    @staticmethod
    def _cfg_length(model, depth):
        """Entries of CONFIGS[model] needed to build ``depth`` layers (a conv is conv + relu)."""
        built = 0
        for i, v in enumerate(CONFIGS[model]):
            built += 1 if v == "M" else 2
            if built >= depth:
                return i + 1
        return len(CONFIGS[model])

    def convs(self):
        """(index, Conv2d) of the trunk in order."""
        return [(int(i), m) for i, m in self.features.named_children() if isinstance(m, nn.Conv2d)]

    def randomize(self, rng, calibration=None, rms=1.0):
        """Untrained weights for style (He, Wang & Hopcroft 2016 use untrained VGGs).

        W ~ N(0, 2 / fan_in) (He-normal, drawn from ``rng``; with None the weights cnnlab's
        Conv2d started with, which are He-normal), b = 0. He-normal keeps the mean square of the ReLU
        activations roughly constant from layer to layer, but max pooling raises it at every
        block, so with ``calibration`` (a (1, 3, H, W) network input) each conv is then
        rescaled, first to last, so that its ReLU output has root-mean-square ``rms`` on
        that image (a data-dependent initialisation, as LSUV, Mishkin & Matas 2016; new
        arrays, never in place, so no layer keeps transforms of the old weights). With
        zero biases the network is positively homogeneous, so ``rms`` sets the balance of the
        losses: content scales as rms^2, style as rms^4.
        """
        for _, m in (self.convs() if rng is not None else ()):
            fan_in = m.weight.data[0].size
            m.weight.data = (rng.standard_normal(m.weight.data.shape) * np.sqrt(2.0 / fan_in)
                             ).astype(m.weight.data.dtype)
            if m.bias is not None:
                m.bias.data = np.zeros_like(m.bias.data)
        if calibration is not None:
            x = np.asarray(calibration, dtype=np.float32)
            with default_algo("im2col"):          # one small pass: not worth auto-tuning
                self._calibrate(x, rms)
        return self

    def _calibrate(self, x, rms):
        for m in self.features:
            if isinstance(m, nn.Conv2d):
                y = m.forward(x)
                m._cache = None
                scale = rms / max(float(np.sqrt(np.mean(np.maximum(y, 0) ** 2))), 1e-12)
                m.weight.data = m.weight.data * np.float32(scale)
                if m.bias is not None:
                    m.bias.data = m.bias.data * np.float32(scale)
                x = y * np.float32(scale)
            else:
                x = m.forward(x)
                m._cache = None

    # ------------------------------------------------------------------ the style pass
    def forward(self, x, keep=(), record=True):
        """x (N, 3, H, W) -> {name: activation} for the names in ``keep``.

        With ``record`` it keeps what :meth:`backward` needs (and nothing else); without,
        it keeps nothing (capturing targets). A kept activation is the array the next layer
        also read; do not modify it.
        """
        keep = set(keep)
        self._tape = None
        tape, out = ([] if record else _NoTape()), {}
        if x.ndim != 4 or x.shape[1] != 3:
            raise CnnlabError(f"VGG expects an image batch (N, 3, H, W), got {tuple(x.shape)}")
        prev_kept = True                     # the caller's x is not ours to modify
        mods = list(self.features)
        for i, (name, m) in enumerate(zip(self.names, mods)):
            if isinstance(m, nn.Conv2d):
                g = m.geometry(x.shape)
                y = m.conv(x, g)
                if m.bias is not None:
                    _add_bias(y, m.bias.data)
                tape.append(("conv", m, g))
            elif isinstance(m, nn.ReLU):
                # ReLU then max pool: the ReLU mask matters only where the pool routes the
                # gradient, i.e. at the window maxima, which are > 0 exactly where the
                # pooled output is; the pool applies it at a quarter of the size.
                pooled = name not in keep and i + 1 < len(mods) and _is_pool2(mods[i + 1], x)
                y, mask = _relu(x, copy=prev_kept, mask=not pooled)
                tape.append(("relu", mask))
            elif _is_pool2(m, x) and tape and tape[-1][0] == "relu" and tape[-1][1] is None:
                y, cache = F.max_pool_forward(x, 2, 2, 0)
                tape.append(("pool", _maxpool_relu_backward, (cache, y > 0)))
            elif isinstance(m, nn.AvgPool2d):
                y, cache = F.avg_pool_forward(x, m.kernel_size, m.stride, m.padding, m.count_include_pad)
                tape.append(("pool", F.avg_pool_backward, cache))
            elif isinstance(m, nn.MaxPool2d):
                y, cache = F.max_pool_forward(x, m.kernel_size, m.stride, m.padding)
                tape.append(("pool", F.max_pool_backward, cache))
            else:  # pragma: no cover - make_features builds only the kinds above
                raise CnnlabError(f"style VGG cannot run layer {name} ({type(m).__name__})")
            prev_kept = name in keep
            if prev_kept:
                out[name] = y
            x = y
        self._tape = tape if record else None
        return out

    def backward(self, inject):
        """Input gradient (N, 3, H, W) of a loss whose gradient with respect to layer ``name``
        is ``inject[name]()`` (callables, evaluated when the backward pass reaches the layer,
        so each loss frees its cache as late as possible and its gradient as early)."""
        if self._tape is None:
            raise CnnlabError("VGGFeatures.backward called before forward")
        tape, self._tape = self._tape, None
        g = None
        for i in range(len(tape) - 1, -1, -1):
            name = self.names[i]
            if name in inject:
                extra = inject[name]()
                if g is None:
                    g = extra
                else:
                    g += extra
            entry = tape.pop()
            if g is None:
                continue                     # nothing above this layer feeds a loss
            kind = entry[0]
            if kind == "relu":
                if entry[1] is not None:     # None: applied by the max pool above
                    _multiply_inplace(g, entry[1])
            elif kind == "conv":
                _, m, geom = entry
                g = m.conv_transpose(g, geom)
            else:
                g = entry[1](g, entry[2])
        if g is None:
            raise CnnlabError("no loss is attached to any layer of the style network")
        return g
