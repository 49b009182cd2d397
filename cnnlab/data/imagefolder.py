"""Image folders: one sub-folder per class, images decoded with Pillow.

    ROOT/cat/0001.png
    ROOT/cat/0002.jpg
    ROOT/dog/a.png

Classes are the sub-folder names in sorted order (label = index). Hidden files and
folders are skipped. A folder may also hold ``train/`` and ``test/``, each laid out
as above. Decoding every image at every epoch is slow; ``cnnlab data pack`` turns a
folder into one packed file (:mod:`cnnlab.data.packed`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import CnnlabError, FileFormatError
from .dataset import ArrayDataset
from .imageops import size_pair
from .registry import register_path_handler

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".pbm",
                    ".tif", ".tiff", ".webp")
COLORS = {"rgb": "RGB", "gray": "L"}


def _visible(p: Path) -> bool:
    return not p.name.startswith(".")


def class_folders(root: Path) -> list[Path]:
    """The class sub-folders of ``root``, sorted by name."""
    return sorted((p for p in root.iterdir() if p.is_dir() and _visible(p)), key=lambda p: p.name)


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and _visible(p) and p.suffix.lower() in IMAGE_EXTENSIONS)


class ImageFolder:
    """The images under ``root``, decoded on access.

    size: None (keep each image's size) or (h, w) / an int: resize to exactly that
        (bilinear, aspect ratio not kept).
    color: "rgb" -> uint8 (H, W, 3); "gray" -> uint8 (H, W).

    classes: the class names in label order (default: the sub-folders', sorted); a split
        other than the training one gets the training split's, so that labels agree
        (``split_classes``); a sub-folder not among them is an error.

    ``len(folder)``, ``folder[i] -> (image, label)``, ``files``, ``labels`` int64,
    ``classes``, ``name``; ``load()`` decodes everything into an ArrayDataset.
    16-bit grey images are scaled to 8 bits (value / 257); 32-bit ones are refused.
    """

    def __init__(self, root, size=None, color: str = "rgb", name: str | None = None,
                 classes=None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise CnnlabError(f"{self.root}: no such folder; an image folder has one sub-folder "
                              f"of images per class")
        if color not in COLORS:
            raise ValueError(f"color must be one of {', '.join(COLORS)}, got {color!r}")
        self.size = None if size is None else size_pair(size)
        self.color = color
        folders = class_folders(self.root)
        self.classes = [p.name for p in folders] if classes is None else list(classes)
        unknown = [p.name for p in folders if p.name not in self.classes]
        if unknown:
            raise CnnlabError(f"{self.root}: class folder(s) {', '.join(unknown)} are not among "
                              f"the training split's classes ({', '.join(self.classes)})")
        files, labels = [], []
        for folder in folders:
            found = _image_files(folder)
            files += found
            labels += [self.classes.index(folder.name)] * len(found)
        if not files:
            raise CnnlabError(
                f"{self.root}: no images found; expected ROOT/CLASS/IMAGE with extensions "
                f"{', '.join(IMAGE_EXTENSIONS)}")
        self.files = files
        self.labels = np.asarray(labels, dtype=np.int64)
        self.name = name or self.root.name

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        return self.read(self.files[i]), int(self.labels[i])

    def read(self, path: Path) -> np.ndarray:
        """Decode one file, converted to ``color`` and resized to ``size``."""
        try:
            with Image.open(path) as im:
                im = ImageOps.exif_transpose(im)        # as the camera held it
                im = _to_8_bits(im, path)
                im = im.convert(COLORS[self.color])
                if self.size is not None and im.size != (self.size[1], self.size[0]):
                    im = im.resize((self.size[1], self.size[0]), Image.BILINEAR)
                return np.asarray(im)
        except FileFormatError:
            raise
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise FileFormatError(f"{path}: cannot decode this image ({e}); convert or remove "
                                  f"it") from None

    def load(self) -> ArrayDataset:
        """Decode every image -> ArrayDataset (all images must end up the same size)."""
        first = self.read(self.files[0])
        images = np.empty((len(self),) + first.shape, dtype=np.uint8)
        images[0] = first
        for i in range(1, len(self)):
            image = self.read(self.files[i])
            if image.shape != first.shape:
                raise CnnlabError(
                    f"{self.files[i]} is {image.shape[1]}x{image.shape[0]} but "
                    f"{self.files[0]} is {first.shape[1]}x{first.shape[0]} (width x height); "
                    f"resize them to one size: `cnnlab data pack FOLDER --size HxW -o "
                    f"train.cnnpack` (then train on the packed folder), or ImageFolder(size=...) "
                    f"from Python")
            images[i] = image
        return ArrayDataset(images, self.labels, list(self.classes), self.name, str(self.root))


def _to_8_bits(im, path):
    """16-bit grey as 8-bit grey, value / 257 rounded: mode "I;16*", and mode "I" (how Pillow
    opens 16-bit PGM files) whose values lie in 0..65535; other 32-bit values and float
    images are refused (their range is not known); everything else as it is."""
    if im.mode.startswith("I;16") or im.mode == "I":
        a = np.asarray(im, dtype=np.float64)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise FileFormatError(f"{path}: a 32-bit integer image with values "
                                  f"{a.min():.0f}..{a.max():.0f}; convert it to 8 or 16 bits "
                                  f"per channel")
        return Image.fromarray(np.rint(a / 257.0).astype(np.uint8), mode="L")
    if im.mode == "F":
        raise FileFormatError(f"{path}: a floating-point image; convert it to 8 or 16 bits "
                              f"per channel")
    return im


def split_classes(path, split: str):
    """The class list split ``split`` of the image folder ``path`` labels with: the training
    split's sub-folders for any other split of a train/ + test/ folder, else None (its own)."""
    train = Path(path) / "train"
    if split != "train" and train.is_dir() and _has_class_images(train):
        return [p.name for p in class_folders(train)]
    return None


def is_image_folder(path) -> bool:
    """True for a folder whose class sub-folders hold images (or with such train/, test/)."""
    path = Path(path)
    if not path.is_dir():
        return False
    if any((path / s).is_dir() and _has_class_images(path / s) for s in ("train", "test")):
        return True
    return _has_class_images(path)


def _has_class_images(path: Path) -> bool:
    for folder in class_folders(path):
        for p in folder.iterdir():
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
                return True
    return False


def split_folder(path, split: str) -> Path:
    """``path/split`` when the folder has train/ and test/ image folders; else ``path``
    itself for "train" (a single folder is a training set)."""
    path = Path(path)
    if (path / split).is_dir() and _has_class_images(path / split):
        return path / split
    if any((path / s).is_dir() for s in ("train", "test")) and not _has_class_images(path):
        raise CnnlabError(f"{path}: no {split}/ image folder")
    if split == "train":
        return path
    raise CnnlabError(f"{path} is a single image folder (used as the train split); put the "
                      f"test images in {path}/test/CLASS/ and the training ones in "
                      f"{path}/train/CLASS/ to have both")


def load_image_folder(path, split: str = "train", size=None, color: str = "rgb") -> ArrayDataset:
    """Registry handler: decode split ``split`` of an image folder into an ArrayDataset."""
    folder = split_folder(path, split)
    return ImageFolder(folder, size=size, color=color, name=f"{Path(path).name}/{split}",
                       classes=split_classes(path, split)).load()


register_path_handler("image-folder", is_image_folder, load_image_folder,
                      description="an image folder (ROOT/CLASS/IMAGE, or ROOT/train/CLASS/IMAGE "
                                  "and ROOT/test/CLASS/IMAGE)")
