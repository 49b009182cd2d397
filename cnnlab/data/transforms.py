"""Composable, seeded data augmentation.

Every transform is called as ``t(image, rng)``: ``image`` is one image, uint8 (values
0..255) or float, shaped (H, W) or (H, W, C); ``rng`` is the ``numpy.random.Generator``
that supplies all of its randomness (nothing reads a global seed), so the same
generator state gives the same output. The output has the input's dtype and number of
dimensions. :func:`apply_to_batch` runs a transform over a batch, sample by sample,
drawing from one generator in sample order.

Geometric warps (translation, rotation, stretching, shearing, lens distortion) live in
:mod:`cnnlab.data.geometric`; consecutive warps inside a :class:`Compose` are fused into a
single resampling.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import ShapeError
from .imageops import cast_like, check_image, crop, resize, resize_short_side, size_pair

# ITU-R BT.601 luma weights, used for "grey" in contrast and saturation.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def check_rng(rng) -> np.random.Generator:
    """Return ``rng`` after checking it is a numpy Generator (the only source of randomness)."""
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"transforms take a numpy.random.Generator, got {type(rng).__name__}; "
            "pass np.random.default_rng(seed)"
        )
    return rng


def _probability(p, name: str = "p") -> float:
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
    return p


def _callable_transform(t, where: str):
    if not callable(t):
        raise TypeError(f"{where} must be callable as t(image, rng), got {t!r}")
    return t


class Transform:
    """Base class: subclasses implement ``__call__(image, rng) -> image``."""

    def __call__(self, image, rng):  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class Compose(Transform):
    """Apply ``transforms`` in order. Consecutive warps (anything with ``sample_warp``)
    draw their parameters in order and are then applied as one resampling."""

    def __init__(self, transforms):
        self.transforms = [_callable_transform(t, "each transform in Compose") for t in transforms]

    def __call__(self, image, rng):
        check_rng(rng)
        i, ts = 0, self.transforms
        while i < len(ts):
            if hasattr(ts[i], "sample_warp"):
                image = check_image(image)
                warp, last = ts[i].sample_warp(image.shape[:2], rng), ts[i]
                i += 1
                while i < len(ts) and hasattr(ts[i], "sample_warp"):
                    warp, last = warp.then(ts[i].sample_warp(image.shape[:2], rng)), ts[i]
                    i += 1
                image = warp.apply(image, fill=last.fill)
            else:
                image = ts[i](image, rng)
                i += 1
        return image


class RandomApply(Transform):
    """Apply ``transform`` with probability ``p`` (one uniform draw, then the transform's own)."""

    def __init__(self, transform, p: float = 0.5):
        self.transform = _callable_transform(transform, "RandomApply's transform")
        self.p = _probability(p)

    def __call__(self, image, rng):
        if check_rng(rng).random() < self.p:
            return self.transform(image, rng)
        return image


class RandomChoice(Transform):
    """Apply one of ``transforms``, chosen with probabilities ``p`` (default: uniform)."""

    def __init__(self, transforms, p=None):
        self.transforms = [_callable_transform(t, "each RandomChoice option") for t in transforms]
        if not self.transforms:
            raise ValueError("RandomChoice needs at least one transform")
        if p is not None:
            p = np.asarray(p, dtype=np.float64)
            if p.shape != (len(self.transforms),) or np.any(p < 0) or p.sum() <= 0:
                raise ValueError(
                    f"RandomChoice p must be {len(self.transforms)} non-negative weights, got {p}"
                )
            p = p / p.sum()
        self.p = p

    def __call__(self, image, rng):
        k = check_rng(rng).choice(len(self.transforms), p=self.p)
        return self.transforms[k](image, rng)


class HorizontalFlip(Transform):
    """Mirror left-right with probability ``p``: out[:, j] = image[:, W - 1 - j]."""

    def __init__(self, p: float = 0.5):
        self.p = _probability(p)

    def __call__(self, image, rng):
        image = check_image(image)
        if check_rng(rng).random() < self.p:
            return image[:, ::-1].copy()
        return image


class RandomCrop(Transform):
    """Pad each side by ``padding`` pixels, then take a random ``size`` = (h, w) window.

    ``pad_mode`` is a numpy.pad mode: "constant" (with ``fill``), "edge" or "reflect".
    The CIFAR recipe is ``RandomCrop(32, padding=4)``.
    """

    def __init__(self, size, padding: int = 0, fill: float = 0, pad_mode: str = "constant"):
        self.size = size_pair(size)
        self.padding = int(padding)
        if self.padding < 0:
            raise ValueError(f"padding must be >= 0, got {padding}")
        if pad_mode not in ("constant", "edge", "reflect"):
            raise ValueError(f"pad_mode must be 'constant', 'edge' or 'reflect', got {pad_mode!r}")
        self.fill, self.pad_mode = fill, pad_mode

    def __call__(self, image, rng):
        image = check_image(image)
        check_rng(rng)
        if self.padding:
            p = self.padding
            widths = ((p, p), (p, p)) + (((0, 0),) if image.ndim == 3 else ())
            kw = {"constant_values": self.fill} if self.pad_mode == "constant" else {}
            image = np.pad(image, widths, mode=self.pad_mode, **kw)
        h, w = self.size
        if h > image.shape[0] or w > image.shape[1]:
            raise ShapeError(
                f"RandomCrop {h}x{w} is larger than the padded image "
                f"{image.shape[0]}x{image.shape[1]}; lower the size or add padding"
            )
        top = int(rng.integers(0, image.shape[0] - h + 1))
        left = int(rng.integers(0, image.shape[1] - w + 1))
        return crop(image, top, left, h, w).copy()


class RandomResizedCrop(Transform):
    """Crop a random window and resize it to ``size`` (Szegedy et al. 2015, "Inception").

    The window covers a fraction of the image area drawn uniformly from ``scale`` and has
    aspect ratio w/h drawn log-uniformly from ``ratio``; after ``attempts`` windows that do
    not fit, the largest central window with a ratio inside ``ratio`` is used.
    """

    def __init__(self, size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), attempts: int = 10):
        self.size = size_pair(size)
        self.scale = _ordered_pair(scale, "scale", low=0.0, high=1.0, strict_low=True)
        self.ratio = _ordered_pair(ratio, "ratio", low=0.0, strict_low=True)
        self.attempts = int(attempts)
        if self.attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {attempts}")

    def __call__(self, image, rng):
        image = check_image(image)
        check_rng(rng)
        top, left, h, w = self.window(image.shape[0], image.shape[1], rng)
        return resize(crop(image, top, left, h, w), self.size)

    def window(self, height: int, width: int, rng) -> tuple[int, int, int, int]:
        """Draw (top, left, h, w) for an image of ``height`` x ``width``."""
        area = height * width
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        for _ in range(self.attempts):
            target = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(log_lo, log_hi))
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = int(rng.integers(0, height - h + 1))
                left = int(rng.integers(0, width - w + 1))
                return top, left, h, w
        aspect = width / height
        if aspect < self.ratio[0]:
            w, h = width, int(round(width / self.ratio[0]))
        elif aspect > self.ratio[1]:
            h, w = height, int(round(height * self.ratio[1]))
        else:
            h, w = height, width
        h, w = max(1, min(h, height)), max(1, min(w, width))
        return (height - h) // 2, (width - w) // 2, h, w


class ScaleAugmentation(Transform):
    """ResNet scale augmentation (He et al. 2016, after Simonyan & Zisserman 2015).

    Draw the short side L uniformly from the integers in ``short_side`` = [lo, hi]
    (default [256, 480]), resize so that min(H, W) = L keeping the aspect ratio, then take
    a random ``size`` x ``size`` crop (default 224).
    """

    def __init__(self, short_side=(256, 480), size=224):
        lo, hi = _ordered_pair(short_side, "short_side", low=1)
        self.short_side = (int(lo), int(hi))
        self.size = size_pair(size)
        if self.short_side[0] < max(self.size):
            raise ValueError(
                f"short_side lower bound {self.short_side[0]} is smaller than the crop "
                f"{self.size}; the crop would not fit"
            )

    def __call__(self, image, rng):
        image = check_image(image)
        L = int(check_rng(rng).integers(self.short_side[0], self.short_side[1] + 1))
        image = resize_short_side(image, L)
        h, w = self.size
        top = int(rng.integers(0, image.shape[0] - h + 1))
        left = int(rng.integers(0, image.shape[1] - w + 1))
        return crop(image, top, left, h, w).copy()


class ColorJitter(Transform):
    """Random brightness, contrast and saturation, in that order.

    Each factor f is drawn uniformly from [max(0, 1 - v), 1 + v] for its strength v
    (0 disables it, drawing nothing). With grey(x) = 0.299 R + 0.587 G + 0.114 B:

        brightness:  x <- f x
        contrast:    x <- m + f (x - m),          m = mean of grey(x) over the image
        saturation:  x <- grey(x) + f (x - grey(x))   (RGB images only; others unchanged)

    uint8 results are rounded and clipped to 0..255; float images are not clipped.
    """

    def __init__(self, brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0):
        for name, v in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
            if not 0.0 <= float(v):
                raise ValueError(f"ColorJitter {name} must be >= 0, got {v}")
        self.brightness = float(brightness)
        self.contrast = float(contrast)
        self.saturation = float(saturation)

    @staticmethod
    def _factor(v: float, rng) -> float:
        return float(rng.uniform(max(0.0, 1.0 - v), 1.0 + v))

    def __call__(self, image, rng):
        image = check_image(image)
        check_rng(rng)
        if image.ndim == 3 and image.shape[2] == 4:     # RGBA: the alpha channel stays as it is
            return np.concatenate([self(image[:, :, :3], rng), image[:, :, 3:]], axis=2)
        x = image.astype(np.float32)
        rgb = x.ndim == 3 and x.shape[2] == 3
        if self.brightness:
            x *= self._factor(self.brightness, rng)
        if self.contrast:
            f = self._factor(self.contrast, rng)
            m = float((x @ _LUMA).mean()) if rgb else float(x.mean())
            x = m + f * (x - m)
        if self.saturation:
            f = self._factor(self.saturation, rng)
            if rgb:
                g = (x @ _LUMA)[:, :, None]
                x = g + f * (x - g)
        if image.dtype == np.uint8:
            x = np.clip(x, 0, 255)
        return cast_like(x, image)


def pca_lighting_basis(images, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Principal components of RGB pixel values over a training set.

    ``images``: (N, H, W, 3) or (H, W, 3); uint8 values are scaled to [0, 1], float ones
    used as they are. Returns ``(eigvals, eigvecs)``: the eigenvalues (3,) of the 3x3
    covariance of all pixels, in decreasing order, and the matching unit eigenvectors as
    the columns of (3, 3). Accumulated in float64, ``chunk`` images at a time.
    """
    a = np.asarray(images)
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4 or a.shape[-1] != 3:
        raise ShapeError(f"pca_lighting_basis needs RGB images (N, H, W, 3), got {a.shape}")
    scale = 1.0 / 255.0 if a.dtype == np.uint8 else 1.0
    n, total, outer = 0, np.zeros(3), np.zeros((3, 3))
    for start in range(0, a.shape[0], chunk):
        px = a[start:start + chunk].reshape(-1, 3).astype(np.float64) * scale
        n += px.shape[0]
        total += px.sum(axis=0)
        outer += px.T @ px
    if n < 2:
        raise ShapeError("pca_lighting_basis needs at least two pixels")
    mean = total / n
    cov = (outer - n * np.outer(mean, mean)) / (n - 1)
    eigvals, eigvecs = np.linalg.eigh(cov)
    order = np.argsort(eigvals)[::-1]
    return np.clip(eigvals[order], 0.0, None), eigvecs[:, order]


class PCALighting(Transform):
    """Lighting noise along the principal components of RGB (Krizhevsky et al. 2012).

    Each image gets the same offset added to every pixel:
    ``offset = eigvecs @ (alpha * eigvals)``, alpha ~ N(0, ``std``) per component, with
    (eigvals, eigvecs) from :func:`pca_lighting_basis` (pixel values in [0, 1]). The offset
    is scaled by 255 for uint8 images, which are then rounded and clipped.
    """

    def __init__(self, eigvals, eigvecs, std: float = 0.1):
        self.eigvals = np.asarray(eigvals, dtype=np.float64)
        self.eigvecs = np.asarray(eigvecs, dtype=np.float64)
        if self.eigvals.shape != (3,) or self.eigvecs.shape != (3, 3):
            raise ShapeError(
                f"PCALighting needs eigvals (3,) and eigvecs (3, 3), got {self.eigvals.shape} "
                f"and {self.eigvecs.shape}; compute them with pca_lighting_basis(images)"
            )
        self.std = float(std)
        if self.std < 0:
            raise ValueError(f"std must be >= 0, got {std}")

    def offset(self, rng) -> np.ndarray:
        """Draw one RGB offset (3,), in [0, 1] pixel units."""
        alpha = check_rng(rng).normal(0.0, self.std, size=3)
        return self.eigvecs @ (alpha * self.eigvals)

    def __call__(self, image, rng):
        image = check_image(image)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ShapeError(f"PCALighting needs an RGB image (H, W, 3), got {image.shape}")
        off = self.offset(rng) * (255.0 if image.dtype == np.uint8 else 1.0)
        return cast_like(image.astype(np.float64) + off, image)


def apply_to_batch(transform, batch, rng, layout: str = "NCHW") -> np.ndarray:
    """Apply ``transform`` to each sample of ``batch`` in order, drawing from ``rng``.

    ``layout`` "NCHW": float batch (N, C, H, W) -> float32 (N, C, H', W') (samples are
    transformed as (H, W, C)). "NHWC": a stack (N, H, W) or (N, H, W, C) of any dtype ->
    a stack of the same dtype and rank. Every output must have the same shape.
    """
    check_rng(rng)
    batch = np.asarray(batch)
    if layout == "NCHW":
        if batch.ndim != 4:
            raise ShapeError(f"apply_to_batch with layout NCHW needs (N, C, H, W), got {batch.shape}")
        out = [transform(np.ascontiguousarray(s.transpose(1, 2, 0)), rng) for s in batch]
        return np.ascontiguousarray(_stack(out).transpose(0, 3, 1, 2), dtype=np.float32)
    if layout == "NHWC":
        if batch.ndim not in (3, 4):
            raise ShapeError(f"apply_to_batch with layout NHWC needs (N, H, W[, C]), got {batch.shape}")
        return _stack([transform(s, rng) for s in batch])
    raise ValueError(f"layout must be 'NCHW' or 'NHWC', got {layout!r}")


def _stack(samples) -> np.ndarray:
    shapes = {s.shape for s in samples}
    if len(shapes) > 1:
        raise ShapeError(
            f"transformed samples differ in shape {sorted(shapes)}; end the pipeline with a "
            "fixed-size crop or resize"
        )
    return np.stack(samples)


def _ordered_pair(v, name: str, low=None, high=None, strict_low: bool = False) -> tuple[float, float]:
    try:
        lo, hi = (float(a) for a in v)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a (low, high) pair, got {v!r}") from None
    if lo > hi:
        raise ValueError(f"{name} must be (low, high) with low <= high, got {v!r}")
    if low is not None and (lo < low or (strict_low and lo <= low)):
        raise ValueError(f"{name} must lie above {low}, got {v!r}")
    if high is not None and hi > high:
        raise ValueError(f"{name} must lie in ({low}, {high}], got {v!r}")
    return lo, hi
