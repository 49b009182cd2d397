"""Geometric augmentation through one resampling path.

Coordinates are pixel centres relative to the image centre: x to the right, y down,
centre ((W - 1) / 2, (H - 1) / 2). A :class:`Warp` is a chain of maps from input to
output positions: affine maps (3x3 homogeneous matrices, adjacent ones multiplied into
one) and radial lens maps. To apply it, the output pixel grid is pulled back through the
chain (inverse affine maps; the lens map below), and the input is sampled once at the
resulting positions with ``scipy.ndimage.map_coordinates`` (bilinear, blending with
``fill`` beyond the edge).

Lens distortion with coefficient k: an output point at normalised radius r (1 at the
image corners) is sampled from radius r' = r (1 + k r^2). k > 0 pulls content towards
the centre (barrel), k < 0 pushes it out (pincushion); k must exceed -1/3 so that the
map stays monotonic on [0, 1].
"""
from __future__ import annotations

import math

import numpy as np
from scipy.ndimage import map_coordinates

from .imageops import cast_like, check_image
from .transforms import Transform, check_rng

LENS_K_MIN = -1.0 / 3.0


def translation_matrix(tx: float, ty: float) -> np.ndarray:
    """Move content right by ``tx`` and down by ``ty`` pixels."""
    return np.array([[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]])


def rotation_matrix(degrees: float) -> np.ndarray:
    """Rotate content counter-clockwise (as displayed) by ``degrees`` about the centre.

    With y pointing down this is [[cos, sin], [-sin, cos]]; 90 degrees matches np.rot90.
    """
    t = math.radians(degrees)
    c, s = math.cos(t), math.sin(t)
    return np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])


def scale_matrix(sx: float, sy: float | None = None) -> np.ndarray:
    """Scale content by ``sx`` horizontally and ``sy`` vertically (stretching when sx != sy)."""
    sy = sx if sy is None else sy
    if sx <= 0 or sy <= 0:
        raise ValueError(f"scale factors must be positive, got ({sx}, {sy})")
    return np.diag([float(sx), float(sy), 1.0])


def shear_matrix(x_degrees: float, y_degrees: float = 0.0) -> np.ndarray:
    """Shear: x <- x + tan(x_degrees) y, y <- y + tan(y_degrees) x."""
    for d in (x_degrees, y_degrees):
        if not -90.0 < d < 90.0:
            raise ValueError(f"shear angles must lie in (-90, 90) degrees, got {d}")
    return np.array([[1.0, math.tan(math.radians(x_degrees)), 0.0],
                     [math.tan(math.radians(y_degrees)), 1.0, 0.0],
                     [0.0, 0.0, 1.0]])


class Warp:
    """A chain of geometric maps, applied to an image with a single resampling.

    Internally the chain is stored as *sampling* steps (output position -> input
    position), in the order they are applied to the output grid.
    """

    def __init__(self, steps=()):
        self.steps = tuple(steps)

    @classmethod
    def affine(cls, matrix) -> "Warp":
        """The affine map ``matrix`` (3x3, or 2x3 for its top rows), input -> output."""
        m = np.asarray(matrix, dtype=np.float64)
        if m.shape == (2, 3):
            m = np.vstack([m, [0.0, 0.0, 1.0]])
        if m.shape != (3, 3) or not np.allclose(m[2], [0.0, 0.0, 1.0]):
            raise ValueError(f"an affine matrix must be 2x3 or 3x3 with last row [0, 0, 1], got {m.tolist()}")
        try:
            inv = np.linalg.inv(m)
        except np.linalg.LinAlgError:
            raise ValueError(f"affine matrix {m.tolist()} is singular; it cannot be undone") from None
        return cls((("affine", inv),))

    @classmethod
    def lens(cls, k: float) -> "Warp":
        """Radial lens distortion with coefficient ``k`` (see the module docstring)."""
        k = float(k)
        if not k > LENS_K_MIN:
            raise ValueError(f"lens coefficient k must be > {LENS_K_MIN:.4f}, got {k}")
        return cls((("lens", k),)) if k else cls()

    def then(self, other: "Warp") -> "Warp":
        """The warp that applies ``self`` and then ``other``."""
        steps = list(other.steps)
        for step in self.steps:
            if steps and steps[-1][0] == "affine" and step[0] == "affine":
                steps[-1] = ("affine", step[1] @ steps[-1][1])
            else:
                steps.append(step)
        return Warp(steps)

    def sampling_grid(self, height: int, width: int) -> np.ndarray:
        """Input (row, col) positions sampled for each output pixel: (2, height, width)."""
        cy, cx = (height - 1) / 2.0, (width - 1) / 2.0
        ys, xs = np.meshgrid(np.arange(height, dtype=np.float64) - cy,
                             np.arange(width, dtype=np.float64) - cx, indexing="ij")
        radius = math.hypot(cx, cy) or 1.0
        for kind, value in self.steps:
            if kind == "affine":
                xs, ys = (value[0, 0] * xs + value[0, 1] * ys + value[0, 2],
                          value[1, 0] * xs + value[1, 1] * ys + value[1, 2])
            else:
                factor = 1.0 + value * ((xs * xs + ys * ys) / (radius * radius))
                xs, ys = xs * factor, ys * factor
        return np.stack([ys + cy, xs + cx])

    def is_identity(self) -> bool:
        return all(kind == "affine" and np.allclose(v, np.eye(3), rtol=0, atol=1e-12)
                   for kind, v in self.steps)

    def apply(self, image, fill: float = 0.0, order: int = 1) -> np.ndarray:
        """Resample ``image`` (H, W) or (H, W, C) through the warp; same shape and dtype.

        ``order`` is the spline order of map_coordinates (1: bilinear); the input is taken
        to continue with ``fill`` beyond its edge ("grid-constant"), so a position half a
        pixel outside blends the edge pixel with ``fill`` instead of becoming ``fill``.
        """
        image = check_image(image)
        if self.is_identity():
            return image.copy()
        grid = self.sampling_grid(image.shape[0], image.shape[1])
        planes = np.ascontiguousarray(image[None] if image.ndim == 2 else image.transpose(2, 0, 1))
        out = np.empty(planes.shape, dtype=np.float32)
        for c in range(planes.shape[0]):                 # contiguous planes sample faster
            map_coordinates(planes[c], grid, output=out[c], order=order,
                            mode="grid-constant", cval=float(fill))
        out = out[0] if image.ndim == 2 else out.transpose(1, 2, 0)
        return cast_like(out, image)

    def __repr__(self) -> str:
        return f"Warp({[k for k, _ in self.steps]})"


def warp(image, matrix=None, lens: float = 0.0, fill: float = 0.0, order: int = 1) -> np.ndarray:
    """Apply the affine ``matrix`` (input -> output, centred coordinates) and then lens
    distortion ``lens`` to ``image`` in one resampling."""
    w = Warp() if matrix is None else Warp.affine(matrix)
    return w.then(Warp.lens(lens)).apply(image, fill=fill, order=order)


def _symmetric(v, name: str, low=None, high=None) -> tuple[float, float] | None:
    """A number a -> (-a, a); a pair -> itself; 0 or None -> None (disabled)."""
    if v is None:
        return None
    if np.isscalar(v):
        a = float(v)
        if not math.isfinite(a):
            raise ValueError(f"{name} must be a finite number, got {v}")
        if a < 0:
            raise ValueError(f"{name} must be >= 0 (a range half-width) or a (low, high) pair, got {v}")
        if a == 0:
            return None
        lo, hi = -a, a
    else:
        try:
            lo, hi = (float(t) for t in v)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a number or a (low, high) pair, got {v!r}") from None
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
            raise ValueError(f"{name} must be (low, high) finite with low <= high, got {v!r}")
    if (low is not None and lo <= low) or (high is not None and hi >= high):
        raise ValueError(f"{name} range ({lo}, {hi}) must lie inside ({low}, {high})")
    return lo, hi


class RandomWarp(Transform):
    """Random stretch, shear, rotation, translation (composed into one affine map, in that
    order) followed by lens distortion, all applied with a single resampling.

    Arguments (0 disables one and draws nothing for it):

    - ``translate``: a -> shift by U(-a, a) times the width / height; or a pair (ax, ay).
    - ``rotate``: d -> angle U(-d, d) degrees; or a (low, high) pair.
    - ``stretch``: a -> horizontal and vertical scale drawn independently from U(1-a, 1+a);
      or a (low, high) pair of scales (anisotropic scaling).
    - ``shear``: d -> x and y shear angles drawn independently from U(-d, d) degrees.
    - ``lens``: a -> lens coefficient k ~ U(-a, a); or a (low, high) pair; k > -1/3.
    - ``fill``: value for pixels whose source lies outside the image.
    """

    def __init__(self, translate=0.0, rotate=0.0, stretch=0.0, shear=0.0, lens=0.0, fill: float = 0.0):
        if np.isscalar(translate) or translate is None:
            t = float(translate or 0.0)
            if not 0.0 <= t <= 1.0:
                raise ValueError(f"translate must be a fraction of the image size in [0, 1], got {translate}")
            self.translate = (t, t)
        else:
            tx, ty = _pair_of_fractions(translate)
            self.translate = (tx, ty)
        self.rotate = _symmetric(rotate, "rotate")
        if np.isscalar(stretch) and stretch is not None:
            if not 0.0 <= float(stretch) < 1.0:
                raise ValueError(f"stretch must lie in [0, 1), got {stretch}")
            self.stretch = (1.0 - float(stretch), 1.0 + float(stretch)) if stretch else None
        else:
            self.stretch = _symmetric(stretch, "stretch", low=0.0)
        self.shear = _symmetric(shear, "shear", low=-90.0, high=90.0)
        self.lens = _symmetric(lens, "lens", low=LENS_K_MIN)
        self.fill = float(fill)

    def sample_warp(self, shape, rng) -> Warp:
        """Draw this transform's parameters for an image of ``shape`` = (H, W) as a Warp."""
        check_rng(rng)
        h, w = shape[:2]
        m = np.eye(3)
        if self.stretch is not None:
            sx, sy = rng.uniform(*self.stretch, size=2)
            m = scale_matrix(sx, sy) @ m
        if self.shear is not None:
            ax, ay = rng.uniform(*self.shear, size=2)
            m = shear_matrix(ax, ay) @ m
        if self.rotate is not None:
            m = rotation_matrix(rng.uniform(*self.rotate)) @ m
        if any(self.translate):
            tx = rng.uniform(-self.translate[0], self.translate[0]) * w
            ty = rng.uniform(-self.translate[1], self.translate[1]) * h
            m = translation_matrix(tx, ty) @ m
        out = Warp.affine(m)
        if self.lens is not None:
            out = out.then(Warp.lens(rng.uniform(*self.lens)))
        return out

    def __call__(self, image, rng):
        image = check_image(image)
        return self.sample_warp(image.shape[:2], rng).apply(image, fill=self.fill)

    def __repr__(self) -> str:
        parts = [f"translate={self.translate}"] if any(self.translate) else []
        parts += [f"{k}={getattr(self, k)}" for k in ("rotate", "stretch", "shear", "lens")
                  if getattr(self, k) is not None]
        if self.fill:
            parts.append(f"fill={self.fill}")
        return f"{type(self).__name__}({', '.join(parts)})"


def _pair_of_fractions(v) -> tuple[float, float]:
    try:
        a, b = (float(t) for t in v)
    except (TypeError, ValueError):
        raise ValueError(f"translate must be a fraction or an (x, y) pair of fractions, got {v!r}") from None
    if not (0.0 <= a <= 1.0 and 0.0 <= b <= 1.0):
        raise ValueError(f"translate fractions must lie in [0, 1], got {v!r}")
    return a, b


class RandomTranslate(RandomWarp):
    """Shift by up to ``fraction`` of the width and height (see RandomWarp)."""

    def __init__(self, fraction=0.1, fill: float = 0.0):
        super().__init__(translate=fraction, fill=fill)


class RandomRotation(RandomWarp):
    """Rotate by an angle drawn from U(-degrees, degrees) (or a (low, high) pair)."""

    def __init__(self, degrees=15.0, fill: float = 0.0):
        super().__init__(rotate=degrees, fill=fill)


class RandomStretch(RandomWarp):
    """Anisotropic scaling: x and y scales drawn independently from U(1-amount, 1+amount)."""

    def __init__(self, amount=0.2, fill: float = 0.0):
        super().__init__(stretch=amount, fill=fill)


class RandomShear(RandomWarp):
    """Shear x and y by angles drawn independently from U(-degrees, degrees)."""

    def __init__(self, degrees=10.0, fill: float = 0.0):
        super().__init__(shear=degrees, fill=fill)


class RandomLens(RandomWarp):
    """Barrel (k > 0) / pincushion (k < 0) distortion, k ~ U(-amount, amount)."""

    def __init__(self, amount=0.2, fill: float = 0.0):
        super().__init__(lens=amount, fill=fill)
