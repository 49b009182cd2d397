"""Small deterministic operations on single images, shared by transforms, TTA and loaders.

An *image* here is a numpy array of shape (H, W) (grayscale) or (H, W, C), uint8 with
values 0..255 or float32/float64 with any range. A *batch* of images is (N, H, W) or
(N, H, W, C). Networks take float32 (N, C, H, W); :func:`to_float_batch` converts.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from ..conv.geometry import pair as _pair
from ..errors import ShapeError


def check_image(image, name: str = "image") -> np.ndarray:
    """Return ``image`` as an array after checking it is (H, W) or (H, W, C), non-empty."""
    a = np.asarray(image)
    if a.ndim not in (2, 3) or a.shape[0] < 1 or a.shape[1] < 1:
        raise ShapeError(
            f"{name} must have shape (H, W) or (H, W, C), got {a.shape}; "
            "for a batch apply the transform per sample (see apply_to_batch)"
        )
    if a.dtype != np.uint8 and not np.issubdtype(a.dtype, np.floating):
        raise ShapeError(f"{name} must be uint8 or floating point, got dtype {a.dtype}")
    return a


def size_pair(size, name: str = "size") -> tuple[int, int]:
    """Normalise an int or an (h, w) pair to a pair of positive ints."""
    pair = _pair(size, name)
    if min(pair) < 1:
        raise ValueError(f"{name} must be positive, got {size!r}")
    return pair


def cast_like(values: np.ndarray, like: np.ndarray) -> np.ndarray:
    """Cast float ``values`` back to ``like``'s dtype: uint8 is rounded and clipped to 0..255."""
    if like.dtype == np.uint8:
        return np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return values.astype(like.dtype, copy=False)


def resize(image: np.ndarray, size) -> np.ndarray:
    """Resize ``image`` to exactly ``size`` = (h, w) with bilinear interpolation.

    Uses Pillow (antialiased when shrinking). uint8 images with 1, 3 or 4 channels are
    resized in one call; other channel counts and float images one channel at a time
    (float through Pillow's 32-bit float mode). The dtype is preserved.
    """
    image = check_image(image)
    h, w = size_pair(size)
    if image.shape[:2] == (h, w):
        return image.copy()
    if image.dtype == np.uint8 and (image.ndim == 2 or image.shape[2] in (3, 4)):
        out = Image.fromarray(np.ascontiguousarray(image)).resize((w, h), Image.BILINEAR)
        return np.asarray(out)
    if image.ndim == 2:
        return _resize_plane(image, h, w)
    return np.stack([_resize_plane(image[:, :, c], h, w) for c in range(image.shape[2])], axis=2)


def _resize_plane(plane: np.ndarray, h: int, w: int) -> np.ndarray:
    if plane.dtype == np.uint8:
        return np.asarray(Image.fromarray(np.ascontiguousarray(plane)).resize((w, h), Image.BILINEAR))
    f = Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32), mode="F")
    return np.asarray(f.resize((w, h), Image.BILINEAR)).astype(plane.dtype, copy=False)


def short_side_size(height: int, width: int, short: int) -> tuple[int, int]:
    """The (h, w) that makes the shorter side ``short`` and keeps the aspect ratio."""
    if height <= width:
        return short, max(1, int(round(width * short / height)))
    return max(1, int(round(height * short / width))), short


def resize_short_side(image: np.ndarray, short: int) -> np.ndarray:
    """Resize so that min(H, W) == ``short``, keeping the aspect ratio."""
    image = check_image(image)
    if short < 1:
        raise ValueError(f"short side must be positive, got {short}")
    return resize(image, short_side_size(image.shape[0], image.shape[1], int(short)))


def crop(image: np.ndarray, top: int, left: int, height: int, width: int) -> np.ndarray:
    """image[top:top+height, left:left+width], checked to lie inside the image."""
    if top < 0 or left < 0 or top + height > image.shape[0] or left + width > image.shape[1]:
        raise ShapeError(
            f"crop {height}x{width} at ({top}, {left}) does not fit in an image of "
            f"{image.shape[0]}x{image.shape[1]}; resize or pad first"
        )
    return image[top:top + height, left:left + width]


def center_crop(image: np.ndarray, size) -> np.ndarray:
    """The central ``size`` = (h, w) window (the extra pixel of an odd margin goes right/bottom)."""
    image = check_image(image)
    h, w = size_pair(size)
    return crop(image, (image.shape[0] - h) // 2, (image.shape[1] - w) // 2, h, w)


def to_float_batch(images: np.ndarray, mean=None, std=None) -> np.ndarray:
    """Stack of images (N, H, W) or (N, H, W, C) -> float32 (N, C, H, W).

    uint8 images are scaled by 1/255 first; then ``(x - mean) / std`` with ``mean`` and
    ``std`` scalars or one value per channel (None: 0 and 1).
    """
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[:, :, :, None]
    if images.ndim != 4:
        raise ShapeError(f"expected images (N, H, W) or (N, H, W, C), got {images.shape}")
    x = images.transpose(0, 3, 1, 2).astype(np.float32)
    if images.dtype == np.uint8:
        x *= np.float32(1.0 / 255.0)
    c = x.shape[1]
    if mean is not None:
        x -= _per_channel(mean, c, "mean")
    if std is not None:
        s = _per_channel(std, c, "std")
        if np.any(s <= 0):
            raise ValueError(f"std must be positive, got {std!r}")
        x /= s
    return np.ascontiguousarray(x)


def _per_channel(v, c: int, name: str) -> np.ndarray:
    a = np.asarray(v, dtype=np.float32).reshape(-1)
    if a.size not in (1, c):
        raise ShapeError(f"{name} must be a scalar or have one value per channel ({c}), got {v!r}")
    return a.reshape(1, -1, 1, 1)
