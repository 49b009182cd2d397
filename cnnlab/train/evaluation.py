"""Class probabilities of a trained model, with test-time augmentation, and of ensembles.

    p = predict_proba(model, images, mean=..., std=..., tta="10crop")   # (N, classes)
    p = ensemble_proba([p_a, p_b, p_c])                                   # mean over models
    accuracy(p, labels), nll(p, labels)

Test-time augmentation (TTA) averages the softmax over several crops of each image,
p(y | x) = (1/K) sum_k softmax(f(crop_k(x))):

- ``"none"``: one crop, the image itself (or its centre ``input_size`` window if larger).
- ``"10crop"`` (Krizhevsky et al. 2012): the four corner windows of ``input_size``, the centre
  one, and the five mirrored left-right. An image no larger than ``input_size`` is first
  zero-padded by ``pad`` pixels per side (default 2, the random shift of
  ``cnnlab train --augment shift``, RandomCrop(padding=2)), so the corners are the four
  diagonal 2-pixel shifts.
- ``"multiscale"`` (He et al. 2016): for each short side s in ``scales``, resize the image so
  that min(H, W) = s and take its 10 crops as above; K = 10 * len(scales). Default scales:
  the ResNet protocol {224, 256, 384, 480, 640} scaled to the model,
  round(input_size * s / 224), e.g. (28, 32, 48, 60, 80) for a 28x28 model.

``flips=False`` drops the mirrored crops (5 per scale instead of 10): for classes that a
left-right flip changes, such as digits (on mnist-5k, LeNets lose about 3 points with the
mirrored crops and gain a little without them; see docs/tricks.md). ``cnnlab eval`` decides
from the checkpoint's training augmentation (``commands.trained_with_flips``).

Images are uint8 (N, H, W) or (N, H, W, C), scaled to [0, 1] and normalised with the
checkpoint's ``mean``/``std`` after cropping (padding is 0 before normalisation, as in
training). Crops of many images go through the model together, about ``batch_size`` crops
per forward call.
"""
from __future__ import annotations

import sys

import numpy as np
from tqdm import tqdm

from ..backend import to_numpy
from ..data.imageops import to_float_batch
from ..data.tta import (center_crop_batch, default_scales, pad_batch, resize_short_side_batch,
                        softmax, ten_crop_batch)
from ..errors import CnnlabError, ShapeError

#: the values of ``tta``
TTA_MODES = ("none", "10crop", "multiscale")
#: default zero padding per side before 10 crops of an image the model's size: the shift of
#: ``--augment shift`` (RandomCrop(padding=2))
DEFAULT_PAD = 2
#: probabilities are clipped here before the log in :func:`nll`
NLL_FLOOR = 1e-12

__all__ = ["TTA_MODES", "DEFAULT_PAD", "predict_proba", "ensemble_proba", "accuracy", "nll",
           "tta_crop_count", "default_scales"]


def predict_proba(model, images, *, mean=None, std=None, tta: str = "none", input_size=None,
                  pad=None, scales=None, batch_size: int = 500,
                  flips: bool = True) -> np.ndarray:
    """Class probabilities (N, classes), float64, rows summing to 1; see the module docstring.

    model: a cnnlab Module mapping float32 (B, C, s, s) to scores (B, classes); it is put in
        eval mode (``model.eval()``) and left there.
    images: uint8 (N, H, W) or (N, H, W, C) (float images are used unscaled).
    mean, std: the normalisation the model was trained with, on the [0, 1] scale (scalars or
        one per channel; None: none), as in a checkpoint's ``info["normalization"]``.
    tta: "none", "10crop" or "multiscale".
    input_size: the model's input side s (default: min(H, W)). Images smaller than s are an
        error; larger ones are cropped (centre crop with "none").
    pad: zero padding per side before the 10 crops of an image no larger than s (default 2:
        the training shift of ``--augment shift``); used by "10crop" and "multiscale".
    scales: the short sides of "multiscale", each >= s (default :func:`default_scales`).
    batch_size: about this many crops per forward call (at least one image's crops); does
        not change the result. A tqdm bar shows the progress on a terminal.
    flips: include the mirrored crops of "10crop" and "multiscale" (False: the 5 windows only).
    """
    images = _check_images(images)
    n, h, w = images.shape[:3]
    size, pad, scales = _tta_settings(tta, input_size, pad, scales, (h, w))
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise CnnlabError(f"batch_size must be a positive integer, got {batch_size!r}")
    per_image = tta_crop_count(tta, scales, flips)
    chunk = max(1, int(batch_size) // per_image)
    model.eval()
    xp = model.array_module()
    out = []
    with tqdm(total=n, unit="image", desc=f"predict ({tta})", leave=False, file=sys.stderr,
              disable=None if n > chunk else True) as bar:
        for start in range(0, n, chunk):
            crops = _crops(images[start:start + chunk], tta, size, pad, scales, flips)
            m, k = crops.shape[:2]
            x = to_float_batch(crops.reshape(m * k, *crops.shape[2:]), mean, std)
            scores = to_numpy(model.forward(xp.asarray(x)))
            if scores.ndim != 2 or scores.shape[0] != m * k:
                raise ShapeError(f"the model must return scores (B, classes) for B = {m * k} "
                                 f"crops, got {scores.shape}")
            out.append(softmax(scores).reshape(m, k, -1).mean(axis=1))
            bar.update(m)
    return np.concatenate(out)


def tta_crop_count(tta: str, scales=None, flips: bool = True) -> int:
    """Crops per image: 1 for "none", 10 for "10crop", 10 * len(scales) for "multiscale"
    (5 and 5 * len(scales) without ``flips``)."""
    per_scale = 10 if flips else 5
    if tta == "none":
        return 1
    if tta == "10crop":
        return per_scale
    if tta == "multiscale":
        return per_scale * len(scales if scales is not None else default_scales(224))
    raise CnnlabError(f"unknown tta {tta!r}; choose one of {', '.join(TTA_MODES)}")


def ensemble_proba(probas) -> np.ndarray:
    """The ensemble's class probabilities: the mean of the models' (N, classes) arrays,
    p = (1/M) sum_m p_m, float64."""
    probas = [np.asarray(p, dtype=np.float64) for p in probas]
    if not probas:
        raise CnnlabError("an ensemble needs at least one model's probabilities")
    shapes = [p.shape for p in probas]
    if probas[0].ndim != 2 or any(s != shapes[0] for s in shapes):
        raise ShapeError(f"an ensemble averages probabilities of the same shape (N, classes) "
                         f"on the same images, got shapes {', '.join(map(str, shapes))}; "
                         f"evaluate every model on the same data, with the same classes")
    return np.mean(np.stack(probas), axis=0)


def accuracy(proba, labels) -> float:
    """Fraction of rows whose most probable class (first on ties) is the label."""
    proba, labels = _check_proba_labels(proba, labels)
    return float(np.mean(proba.argmax(axis=1) == labels))


def nll(proba, labels) -> float:
    """Mean negative log-likelihood -(1/N) sum_n log max(p[n, y_n], 1e-12)."""
    proba, labels = _check_proba_labels(proba, labels)
    p = proba[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.maximum(p, NLL_FLOOR))))


# -- helpers --------------------------------------------------------------------------------
def _check_images(images) -> np.ndarray:
    a = np.asarray(images)
    if a.ndim not in (3, 4) or a.shape[0] < 1 or 0 in a.shape[1:3]:
        raise ShapeError(f"images must be a non-empty stack (N, H, W) or (N, H, W, C), "
                         f"got {a.shape}")
    if a.dtype != np.uint8 and not np.issubdtype(a.dtype, np.floating):
        raise ShapeError(f"images must be uint8 (0..255) or float, got dtype {a.dtype}")
    return a


def _tta_settings(tta, input_size, pad, scales, image_hw):
    """Check the options; return (input side, padding, scales) with the defaults filled in."""
    if tta not in TTA_MODES:
        raise CnnlabError(f"unknown tta {tta!r}; choose one of {', '.join(TTA_MODES)}")
    h, w = image_hw
    size = min(h, w) if input_size is None else int(input_size)
    if size < 1:
        raise CnnlabError(f"input_size must be positive, got {input_size!r}")
    if min(h, w) < size:
        raise ShapeError(f"the images are {h}x{w}, smaller than the model's {size}x{size} "
                         f"input; test-time crops cannot enlarge them: evaluate on images of "
                         f"at least {size}x{size}")
    pad = DEFAULT_PAD if pad is None else int(pad)
    if pad < 0:
        raise CnnlabError(f"pad must be >= 0, got {pad}")
    if tta != "multiscale":
        if scales is not None:
            raise CnnlabError(f"scales apply to tta 'multiscale' only, not {tta!r}")
        return size, pad, None
    scales = default_scales(size) if scales is None else tuple(int(s) for s in scales)
    if not scales or min(scales) < size:
        raise CnnlabError(f"multiscale scales must be non-empty and each at least the model's "
                          f"input size {size}, got {list(scales)}")
    return size, pad, scales


def _crops(images, tta: str, size: int, pad: int, scales, flips: bool) -> np.ndarray:
    """(m, H, W[, C]) -> (m, K, size, size[, C]), K = :func:`tta_crop_count`."""
    if tta == "none":
        return center_crop_batch(images, size)[:, None]
    if tta == "10crop":
        return _ten_crops(images, size, pad, flips)
    return np.concatenate([_ten_crops(resize_short_side_batch(images, s), size, pad, flips)
                           for s in scales], axis=1)


def _ten_crops(images, size: int, pad: int, flips: bool) -> np.ndarray:
    """Ten crops (five without ``flips``); an image no larger than the crop is zero-padded
    by ``pad`` first."""
    if max(images.shape[1:3]) <= size:
        images = pad_batch(images, pad)
    crops = ten_crop_batch(images, size)
    return crops if flips else crops[:, :5]


def _check_proba_labels(proba, labels):
    proba = np.asarray(proba, dtype=np.float64)
    labels = np.asarray(labels)
    if proba.ndim != 2 or labels.shape != (proba.shape[0],) or proba.shape[0] == 0:
        raise ShapeError(f"expected probabilities (N, classes) with N > 0 and labels (N,), got "
                         f"{proba.shape} and {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 \
            or labels.max() >= proba.shape[1]:
        raise ShapeError(f"labels must be integers in [0, {proba.shape[1]}), got "
                         f"{labels.dtype} in [{labels.min()}, {labels.max()}]")
    return proba, labels
