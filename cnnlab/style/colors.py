"""Colour-preserving style transfer: keep the content image's chroma, take the result's luminance.

YUV as in Torch7's image.rgb2yuv (BT.601 analogue YUV, what jcjohnson/neural-style's
``-original_colors`` uses), for RGB in [0, 1]:

    Y =  0.299   R + 0.587   G + 0.114   B
    U = -0.14713 R - 0.28886 G + 0.436   B
    V =  0.615   R - 0.51499 G - 0.10001 B

``original_colors(content, generated)`` = yuv_to_rgb(Y of generated, U and V of content).
"""
from __future__ import annotations

import numpy as np

from ..errors import ShapeError

RGB_TO_YUV = np.array([[0.299, 0.587, 0.114],
                       [-0.14713, -0.28886, 0.436],
                       [0.615, -0.51499, -0.10001]])
YUV_TO_RGB = np.linalg.inv(RGB_TO_YUV)


def rgb_to_yuv(img):
    """(H, W, 3) RGB -> (H, W, 3) YUV, float64."""
    return np.asarray(img, dtype=np.float64) @ RGB_TO_YUV.T


def yuv_to_rgb(yuv):
    """(H, W, 3) YUV -> (H, W, 3) RGB, float64 (not clipped)."""
    return np.asarray(yuv, dtype=np.float64) @ YUV_TO_RGB.T


def original_colors(content, generated):
    """Luminance of ``generated`` with the chroma (U, V) of ``content``; both (H, W, 3) RGB
    in [0, 1] of the same size. Returns (H, W, 3) RGB, not clipped."""
    if np.shape(content) != np.shape(generated):
        raise ShapeError(f"original colours need images of one size, got {np.shape(content)} "
                         f"and {np.shape(generated)}")
    yuv = rgb_to_yuv(content)
    yuv[..., 0] = rgb_to_yuv(generated)[..., 0]
    return yuv_to_rgb(yuv)
