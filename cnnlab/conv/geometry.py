"""The shape of one 2-D convolution, shared by every algorithm and the chooser.

Conventions (as in PyTorch): input x is (N, C, H, W); weight w is
(O, C // groups, KH, KW); output y is (N, O, HO, WO) with

    HO = (H + 2*PH - DH*(KH - 1) - 1) // SH + 1      (same for W)

    y[n, o, i, j] = sum_{c in group(o), p, q} x_pad[n, c, i*SH + p*DH, j*SW + q*DW] * w[o, c, p, q]
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ShapeError


def _is_int(a) -> bool:
    return isinstance(a, (int, np.integer)) and not isinstance(a, (bool, np.bool_))


def pair(v, name: str) -> tuple[int, int]:
    """Normalise an int or a 2-sequence of ints to a pair of non-negative ints (floats,
    strings and booleans are errors, not truncated)."""
    if _is_int(v):
        t = (int(v), int(v))
    else:
        if isinstance(v, (str, bytes)) or not hasattr(v, "__len__") or len(v) != 2 \
                or not all(_is_int(a) for a in v):
            raise ShapeError(f"{name} must be an int or a pair of ints, got {v!r}")
        t = (int(v[0]), int(v[1]))
    if min(t) < 0:
        raise ShapeError(f"{name} must be non-negative, got {v!r}")
    return t


def resolve_padding(padding, kernel, dilation=1, stride=1) -> tuple[int, int]:
    """``padding`` as a pair of ints: an int or pair as it is; "valid": no padding; "same"
    (stride 1): the output the size of the input, (dilation * (kernel - 1)) / 2 per side,
    which must be a whole number (an even kernel needs padding on one side only: pad the
    input yourself, then use "valid")."""
    if not isinstance(padding, str):
        return pair(padding, "padding")
    kernel, dilation = pair(kernel, "kernel_size"), pair(dilation, "dilation")
    if padding == "valid":
        return (0, 0)
    if padding != "same":
        raise ShapeError(f"padding must be an int, a pair of ints, 'same' or 'valid', got "
                         f"{padding!r}")
    if pair(stride, "stride") != (1, 1):
        raise ShapeError(f"padding='same' needs stride 1, got stride {stride!r}")
    span = tuple(d * (k - 1) for k, d in zip(kernel, dilation))
    if any(s % 2 for s in span):
        raise ShapeError(f"padding='same' with kernel {kernel[0]}x{kernel[1]} (dilation "
                         f"{dilation}) needs {span[0]} and {span[1]} padding pixels per axis, "
                         f"which do not split evenly between the two sides; pad the input "
                         f"yourself (e.g. numpy.pad) and use padding='valid'")
    return (span[0] // 2, span[1] // 2)


@dataclass(frozen=True)
class ConvGeometry:
    """Everything an algorithm needs to know about one convolution, hashable (cache key)."""

    n: int
    c: int
    h: int
    w: int
    o: int
    kh: int
    kw: int
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1

    @classmethod
    def of(cls, x_shape, w_shape, stride=1, padding=0, dilation=1, groups=1) -> "ConvGeometry":
        """Build and validate the geometry of conv(x, w) from array shapes (``padding``: see
        :func:`resolve_padding`). A batch of 0 images is valid; everything else needs at
        least one element along each axis."""
        if len(x_shape) != 4:
            raise ShapeError(f"conv2d expects input of shape (N, C, H, W), got {tuple(x_shape)}")
        if len(w_shape) != 4:
            raise ShapeError(f"conv2d expects weight of shape (O, C/groups, KH, KW), got {tuple(w_shape)}")
        n, c, h, w = (int(s) for s in x_shape)
        o, cg, kh, kw = (int(s) for s in w_shape)
        if min(c, h, w, o, cg, kh, kw) < 1:
            raise ShapeError(f"conv2d needs at least one channel, output channel, row and "
                             f"column in input and weight, got input {tuple(x_shape)} and "
                             f"weight {tuple(w_shape)}")
        if not _is_int(groups):
            raise ShapeError(f"groups must be an int, got {groups!r}")
        groups = int(groups)
        if groups < 1 or c % groups or o % groups:
            raise ShapeError(
                f"groups={groups} must divide both input channels {c} and output channels {o}"
            )
        if cg * groups != c:
            raise ShapeError(
                f"conv2d expects input with {cg * groups} channels (weight {tuple(w_shape)}, "
                f"groups={groups}), got input {tuple(x_shape)}"
            )
        g = cls(n, c, h, w, o, kh, kw, pair(stride, "stride"),
                resolve_padding(padding, (kh, kw), dilation, stride), pair(dilation, "dilation"),
                groups)
        if min(g.stride) < 1 or min(g.dilation) < 1:
            raise ShapeError(f"stride and dilation must be >= 1, got {stride!r}, {dilation!r}")
        if g.ho < 1 or g.wo < 1:
            raise ShapeError(
                f"conv2d kernel {kh}x{kw} (dilation {g.dilation}) does not fit input {h}x{w} "
                f"with padding {g.padding}; use a smaller kernel or more padding"
            )
        return g

    @property
    def ho(self) -> int:
        return (self.h + 2 * self.padding[0] - self.dilation[0] * (self.kh - 1) - 1) // self.stride[0] + 1

    @property
    def wo(self) -> int:
        return (self.w + 2 * self.padding[1] - self.dilation[1] * (self.kw - 1) - 1) // self.stride[1] + 1

    @property
    def x_shape(self) -> tuple[int, int, int, int]:
        return (self.n, self.c, self.h, self.w)

    @property
    def w_shape(self) -> tuple[int, int, int, int]:
        return (self.o, self.c // self.groups, self.kh, self.kw)

    @property
    def y_shape(self) -> tuple[int, int, int, int]:
        return (self.n, self.o, self.ho, self.wo)

    @property
    def macs(self) -> int:
        """Multiply-adds of the direct convolution (one pass)."""
        return self.n * self.o * self.ho * self.wo * (self.c // self.groups) * self.kh * self.kw

    @property
    def flops(self) -> int:
        """Direct-convolution FLOPs of one pass: 2 * multiply-adds."""
        return 2 * self.macs

    def describe(self) -> str:
        return (f"x={self.x_shape} w={self.w_shape} stride={self.stride} padding={self.padding} "
                f"dilation={self.dilation} groups={self.groups}")
