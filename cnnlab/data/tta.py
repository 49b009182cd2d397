"""Test-time augmentation: predict on several crops of each image and average.

Crops as in Krizhevsky et al. 2012 (ten crops) and He et al. 2016 (ten crops at
several scales). An image is (H, W) or (H, W, C), uint8 or float; crops come back
stacked as (K, h, w[, C]) in the image's dtype.
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
    """The four corner crops and the centre crop of ``size``, then the same five of the
    horizontally flipped image: (10, h, w[, C])."""
    image = check_image(image)
    h, w = size_pair(size)
    crops = [crop(image, top, left, h, w) for top, left in ten_crop_positions(*image.shape[:2], (h, w))]
    return np.stack(crops + [c[:, ::-1] for c in crops])


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
