"""Images in and out of neural style: load, resize, save, contact sheet, loss plot.

Images inside cnnlab.style are float64 (H, W, 3) RGB arrays in [0, 1].
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from ..errors import CnnlabError, FileFormatError


def load_image(source) -> np.ndarray:
    """A path, or an (H, W, 3) / (H, W) uint8 or float array in [0, 1] -> (H, W, 3) float64."""
    if isinstance(source, (str, os.PathLike)):
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(source) as im:
                img = np.asarray(im.convert("RGB"), dtype=np.float64) / 255.0
        except FileNotFoundError as err:
            raise FileFormatError(f"cannot read image {os.fspath(source)}: no such file") from err
        except (UnidentifiedImageError, OSError) as err:
            raise FileFormatError(f"cannot read image {os.fspath(source)}: {err}") from err
        return img
    img = np.asarray(source)
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise CnnlabError(f"expected an image (H, W, 3), got an array of shape {img.shape}")
    img = img[..., :3]
    if img.dtype == np.uint8:
        return img.astype(np.float64) / 255.0
    return np.asarray(img, dtype=np.float64)


def fit_size(h: int, w: int, longest: int) -> tuple[int, int]:
    """(h', w') with max(h', w') = longest and the aspect ratio kept."""
    if longest < 8:
        raise CnnlabError(f"image size must be at least 8 pixels, got {longest}")
    s = longest / max(h, w)
    return max(1, round(h * s)), max(1, round(w * s))


def resize(img, h: int, w: int) -> np.ndarray:
    """Bicubic resize of a float (H, W, 3) image, channel by channel in float precision."""
    from PIL import Image

    if img.shape[:2] == (h, w):
        return np.array(img, dtype=np.float64)
    planes = [np.asarray(Image.fromarray(np.ascontiguousarray(img[..., c], dtype=np.float32), mode="F")
                         .resize((w, h), Image.BICUBIC)) for c in range(img.shape[2])]
    return np.stack(planes, axis=-1).astype(np.float64)


def resize_longest(img, longest: int) -> np.ndarray:
    return resize(img, *fit_size(img.shape[0], img.shape[1], longest))


def to_uint8(img) -> np.ndarray:
    return (np.clip(np.asarray(img, dtype=np.float64), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def save_image(path, img) -> Path:
    """Write (H, W, 3) [0, 1] as an image file (format from the suffix), atomically."""
    from PIL import Image

    from ..io import atomic_write

    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise CnnlabError(f"cannot tell the image format of {path}; use .png or .jpg")
    if not path.parent.is_dir():
        raise CnnlabError(f"cannot write {path}: folder {path.parent} does not exist")
    with atomic_write(path) as f:
        Image.fromarray(to_uint8(img)).save(f, format=fmt)
    return path


def contact_sheet(items, path, thumb=192, columns=None) -> Path:
    """A grid of labelled thumbnails: ``items`` = [(label, image), ...] -> an image file."""
    from PIL import Image, ImageDraw

    if not items:
        raise CnnlabError("contact sheet needs at least one image")
    columns = columns or min(len(items), 5)
    rows = math.ceil(len(items) / columns)
    label_h = 16
    sheet = Image.new("RGB", (columns * (thumb + 4) + 4, rows * (thumb + label_h + 4) + 4), "white")
    draw = ImageDraw.Draw(sheet)
    for k, (label, img) in enumerate(items):
        im = Image.fromarray(to_uint8(img))
        im.thumbnail((thumb, thumb), Image.BICUBIC)
        x = 4 + (k % columns) * (thumb + 4)
        y = 4 + (k // columns) * (thumb + label_h + 4)
        sheet.paste(im, (x + (thumb - im.width) // 2, y + (thumb - im.height) // 2))
        draw.text((x + 2, y + thumb + 2), str(label), fill="black")
    return save_image(path, np.asarray(sheet) / 255.0)


def plot_losses(history, path, title="neural style") -> Path:
    """Log-scale plot of each loss term against the iteration; ``history`` maps a name to a list
    of (iteration, value) pairs."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from ..io import atomic_write

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for name, points in history.items():
        if points and any(v > 0 for _, v in points):
            its, vals = zip(*points)
            ax.plot(its, vals, label=name)
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    with atomic_write(path) as f:
        fig.savefig(f, format="png")
    plt.close(fig)
    return path
