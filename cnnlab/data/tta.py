"""Test-time augmentation: predict on several crops of each image and average.

Crops as in Krizhevsky et al. 2012 (ten crops) and He et al. 2016 (ten crops at
several scales). An image is (H, W) or (H, W, C), uint8 or float; crops come back
stacked as (K, h, w[, C]) in the image's dtype. The ``*_batch`` functions do the same
for a stack of equally sized images (N, H, W[, C]) at once, without a Python loop over
the images; :mod:`cnnlab.train.evaluation` uses them to evaluate models with TTA.
"""
from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from .imageops import check_image, crop, resize_short_side, size_pair, to_float_batch

DEFAULT_SCALES = (224, 256, 384, 480, 640)
MODES = ("center", "ten_crop", "multiscale")


def ten_crop_positions(height: int, width: int, size) -> list[tuple[int, int]]:
    """(top, left) of the five windows: top-left, top-right, bottom-left, bottom-right, centre."""
    h, w = size_pair(size)
    if h > height or w > width:
        raise ShapeError(f"crop {h}x{w} does not fit in an image of {height}x{width}; resize first")
    return [(0, 0), (0, width - w), (height - h, 0), (height - h, width - w),
            ((height - h) // 2, (width - w) // 2)]


def ten_crop(image, size) -> np.ndarray:
    """The four corner crops and the centre crop of ``size``, then each of those five
    mirrored left-right (in the same order): (10, h, w[, C])."""
    image = check_image(image)
    return ten_crop_batch(image[None], size)[0]


def ten_crop_batch(images, size) -> np.ndarray:
    """:func:`ten_crop` of every image of a stack: (N, H, W[, C]) -> (N, 10, h, w[, C]).

    crops[n, k] for k < 5 is images[n] at window k of :func:`ten_crop_positions`
    (top-left, top-right, bottom-left, bottom-right, centre); crops[n, k + 5] is
    crops[n, k] flipped left-right (the same set as the five windows of the flipped image,
    in another order).
    """
    images = _check_batch(images)
    h, w = size_pair(size)
    windows = [images[:, top:top + h, left:left + w]
               for top, left in ten_crop_positions(*images.shape[1:3], (h, w))]
    five = np.stack(windows, axis=1)                       # (N, 5, h, w[, C])
    return np.concatenate([five, five[:, :, :, ::-1]], axis=1)


def pad_batch(images, pad: int) -> np.ndarray:
    """Zero-pad every image of (N, H, W[, C]) by ``pad`` pixels on each side:
    (N, H + 2 pad, W + 2 pad[, C]) — the padding of ``RandomCrop(padding=pad)``."""
    images = _check_batch(images)
    pad = int(pad)
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    if pad == 0:
        return images
    widths = [(0, 0), (pad, pad), (pad, pad)] + [(0, 0)] * (images.ndim - 3)
    return np.pad(images, widths, mode="constant")


def center_crop_batch(images, size) -> np.ndarray:
    """The central ``size`` window of every image: (N, H, W[, C]) -> (N, h, w[, C]);
    the window of :func:`ten_crop_positions` number 4."""
    images = _check_batch(images)
    h, w = size_pair(size)
    top, left = ten_crop_positions(*images.shape[1:3], (h, w))[4]
    return images[:, top:top + h, left:left + w]


def resize_short_side_batch(images, short: int) -> np.ndarray:
    """:func:`~cnnlab.data.imageops.resize_short_side` of every image (they keep a common
    size): (N, H, W[, C]) -> (N, H', W'[, C]) with min(H', W') = ``short``."""
    images = _check_batch(images)
    if min(images.shape[1:3]) == int(short):
        return images
    return np.stack([resize_short_side(image, short) for image in images])


def default_scales(input_size: int) -> tuple[int, ...]:
    """The multi-scale protocol of He et al. 2016 scaled to a model's input side: short
    sides round(input_size * s / 224) for s in (224, 256, 384, 480, 640), halves rounded
    up. For a 224 model exactly (224, 256, 384, 480, 640); for 28: (28, 32, 48, 60, 80)."""
    input_size = int(input_size)
    if input_size < 1:
        raise ValueError(f"input_size must be positive, got {input_size}")
    return tuple(int(np.floor(input_size * s / 224 + 0.5)) for s in DEFAULT_SCALES)


def _check_batch(images) -> np.ndarray:
    a = np.asarray(images)
    if a.ndim not in (3, 4) or 0 in a.shape[1:3]:
        raise ShapeError(f"expected a stack of images (N, H, W) or (N, H, W, C), got {a.shape}")
    return a


def multiscale_ten_crop(image, scales=DEFAULT_SCALES, size=224) -> np.ndarray:
    """For each short side s in ``scales``: resize so that min(H, W) = s, then :func:`ten_crop`.

    Returns (10 * len(scales), size, size[, C]), scale by scale. Every scale must be at
    least ``size``.
    """
    image = check_image(image)
    h, w = size_pair(size)
    scales = [int(s) for s in scales]
    if not scales or min(scales) < max(h, w):
        raise ValueError(f"scales must be non-empty and each >= the crop size {size}, got {scales}")
    return np.concatenate([ten_crop(resize_short_side(image, s), (h, w)) for s in scales])


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (K, classes) logits, computed stably in float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def tta_predict(predict_fn, images, mode: str = "ten_crop", size=224, scales=DEFAULT_SCALES,
                mean=None, std=None) -> np.ndarray:
    """Average the softmax of ``predict_fn`` over test-time crops of each image.

    predict_fn: float32 (K, C, h, w) -> logits (K, classes).
    images: a stack (N, H, W[, C]) or a list of images (sizes may differ), uint8 (scaled
        to [0, 1]) or float.
    mode: "center" (one centre crop), "ten_crop", or "multiscale" (:func:`multiscale_ten_crop`).
    mean, std: normalisation applied to the crops as in the DataLoader.
    Returns float64 (N, classes): class probabilities, each row summing to 1.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    out = []
    for image in images:
        image = check_image(image)
        if mode == "center":
            top, left = ten_crop_positions(*image.shape[:2], size)[4]
            h, w = size_pair(size)
            crops = crop(image, top, left, h, w)[None]
        elif mode == "ten_crop":
            crops = ten_crop(image, size)
        else:
            crops = multiscale_ten_crop(image, scales, size)
        logits = np.asarray(predict_fn(to_float_batch(crops, mean, std)))
        if logits.ndim != 2 or logits.shape[0] != len(crops):
            raise ShapeError(f"predict_fn must return logits ({len(crops)}, classes) for "
                             f"{len(crops)} crops, got {logits.shape}")
        out.append(softmax(logits).mean(axis=0))
    return np.stack(out)
