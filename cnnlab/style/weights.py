"""VGG weights for neural style: where the published files come from, how each one wants its
input preprocessed, and how they load into :class:`~cnnlab.style.vgg_features.VGGFeatures`.

Sources (``cnnlab weights fetch NAME`` downloads into ``cache_dir()/weights``):

======================  ==============================================================  =============
name                    file                                                            preprocessing
======================  ==============================================================  =============
vgg19                   torchvision ``vgg19-dcbb9e9d.pth``                              torchvision
vgg16                   torchvision ``vgg16-397923af.pth``                              torchvision
vgg19-caffe             jcjohnson/pytorch-vgg ``vgg19-d01eb7cb.pth`` (Caffe, converted)  caffe
vgg16-caffe             jcjohnson/pytorch-vgg ``vgg16-00b39a1b.pth`` (Caffe, converted)  caffe
======================  ==============================================================  =============

Preprocessing, from an RGB image in [0, 1]:
    torchvision   RGB in [0, 1], minus mean (0.485, 0.456, 0.406), divided by std (0.229, 0.224, 0.225)
    caffe         BGR in [0, 255], minus the mean pixel (103.939, 116.779, 123.68) (B, G, R)
    matconvnet    RGB in [0, 255], minus the file's average image (its mean pixel)
    random        RGB in [0, 255], minus the Caffe mean pixel (in RGB order); for untrained weights

Files load from .pth (the restricted unpickler of :mod:`cnnlab.io`, no torch, nothing
executed), MatConvNet .mat (``imagenet-vgg-verydeep-16/19.mat``), and .npz/.safetensors
(keys ``features.N.weight``/``bias``; metadata ``preprocessing`` names one of the above).
"""
from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ChecksumError, CnnlabError, FileFormatError
from ..io.atomic import open_temporary
from ..models.vgg import CONFIGS

# ------------------------------------------------------------------------------ preprocessing


@dataclass(frozen=True)
class Preprocessing:
    """How an RGB [0, 1] image becomes network input: x = (img[..., order] * scale - mean) / std.

    ``mean`` and ``std`` are in the network's channel order (BGR when ``bgr``).
    """

    name: str
    bgr: bool
    scale: float
    mean: tuple
    std: tuple = (1.0, 1.0, 1.0)

    def to_net(self, img, dtype=np.float32):
        """img (H, W, 3) RGB in [0, 1] -> x (1, 3, H, W) network input."""
        x = np.asarray(img, dtype=np.float64)
        if x.ndim != 3 or x.shape[2] != 3:
            raise CnnlabError(f"expected an RGB image (H, W, 3), got shape {x.shape}")
        if self.bgr:
            x = x[..., ::-1]
        x = (x * self.scale - np.asarray(self.mean)) / np.asarray(self.std)
        return np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=dtype)

    def from_net(self, x):
        """x (1, 3, H, W) network input -> (H, W, 3) RGB, [0, 1] scale, not clipped."""
        img = np.asarray(x[0], dtype=np.float64).transpose(1, 2, 0)
        img = (img * np.asarray(self.std) + np.asarray(self.mean)) / self.scale
        return img[..., ::-1] if self.bgr else img

    def grey_level(self) -> float:
        """The size of one 0-255 grey level in network units (for step sizes)."""
        return self.scale / 255.0 / float(np.mean(self.std))


CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
TORCHVISION = Preprocessing("torchvision", False, 1.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CAFFE = Preprocessing("caffe", True, 255.0, CAFFE_MEAN_BGR)
RANDOM = Preprocessing("random", False, 255.0, CAFFE_MEAN_BGR[::-1])


def matconvnet_preprocessing(mean_pixel) -> Preprocessing:
    return Preprocessing("matconvnet", False, 255.0, tuple(float(v) for v in mean_pixel))


PREPROCESSINGS = {"torchvision": TORCHVISION, "caffe": CAFFE, "random": RANDOM}

# ------------------------------------------------------------------------------ sources


@dataclass(frozen=True)
class WeightSource:
    """A published weights file. ``sha256`` is the full published digest when one could be
    established; otherwise only ``sha256_prefix`` (the 8 hex digits in the file name, which
    these converters set to the first 8 digits of the file's sha256) is checked."""

    name: str
    model: str
    filename: str
    urls: tuple
    preprocessing: Preprocessing
    sha256: str | None = None
    sha256_prefix: str = ""
    size: int | None = None
    note: str = field(default="", compare=False)


SOURCES = {
    "vgg19": WeightSource(
        "vgg19", "vgg19", "vgg19-dcbb9e9d.pth",
        ("https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",), TORCHVISION,
        sha256="dcbb9e9dad569fff7a846263a77324fc34978fea2bfb039c012d710e1776ae44",
        sha256_prefix="dcbb9e9d", size=574_673_361,
        note="torchvision VGG19_Weights.IMAGENET1K_V1"),
    "vgg16": WeightSource(
        "vgg16", "vgg16", "vgg16-397923af.pth",
        ("https://download.pytorch.org/models/vgg16-397923af.pth",), TORCHVISION,
        sha256="397923af8e79cdbb6a7127f12361acd7a2f83e06b05044ddf496e83de57a5bf0",
        sha256_prefix="397923af", size=553_433_881,
        note="torchvision VGG16_Weights.IMAGENET1K_V1"),
    "vgg19-caffe": WeightSource(
        "vgg19-caffe", "vgg19", "vgg19-d01eb7cb.pth",
        ("https://web.eecs.umich.edu/~justincj/models/vgg19-d01eb7cb.pth",
         "https://s3-us-west-2.amazonaws.com/jcjohns-models/vgg19-d01eb7cb.pth"), CAFFE,
        sha256_prefix="d01eb7cb",
        note="the original Caffe VGG-19 (Simonyan & Zisserman), converted by jcjohnson/pytorch-vgg"),
    "vgg16-caffe": WeightSource(
        "vgg16-caffe", "vgg16", "vgg16-00b39a1b.pth",
        ("https://web.eecs.umich.edu/~justincj/models/vgg16-00b39a1b.pth",
         "https://s3-us-west-2.amazonaws.com/jcjohns-models/vgg16-00b39a1b.pth"), CAFFE,
        sha256_prefix="00b39a1b",
        note="the original Caffe VGG-16, converted by jcjohnson/pytorch-vgg"),
}


def weights_dir() -> Path:
    """Where fetched weights live: ``cache_dir()/weights`` ($CNNLAB_CACHE, else ~/.cache/cnnlab)."""
    from ..download import cache_dir
    return cache_dir() / "weights"


def get_source(name: str) -> WeightSource:
    if name not in SOURCES:
        raise CnnlabError(f"unknown weights {name!r}; choose one of {', '.join(SOURCES)}")
    return SOURCES[name]


def _urls(source: WeightSource):
    mirror = os.environ.get("CNNLAB_MIRROR", "").strip()
    if mirror:
        return (f"{mirror.rstrip('/')}/weights/{source.filename}",)
    return source.urls


def fetch_weights(name: str, dest_dir=None, progress: bool = True) -> Path:
    """Download weights ``name`` into ``dest_dir`` (default :func:`weights_dir`) with a
    progress bar, verify them and return the path. ``$CNNLAB_MIRROR`` replaces the
    publisher's address by ``$CNNLAB_MIRROR/weights/FILENAME``."""
    from .. import download

    source = get_source(name)
    dest = Path(dest_dir) if dest_dir is not None else weights_dir()
    dest = dest / source.filename
    new_folders = [p for p in (dest.parent, *dest.parent.parents) if not p.exists()]
    errors = []
    try:
        for url in _urls(source):
            try:
                if source.sha256:
                    return download.fetch(url, dest, source.sha256, progress=progress,
                                          desc=source.filename)
                return _fetch_prefix_checked(url, dest, source.sha256_prefix, progress)
            except ChecksumError:
                raise
            except CnnlabError as err:
                errors.append(str(err))
        raise CnnlabError("; ".join(errors))
    except BaseException:
        for folder in new_folders:      # deepest first: leave no empty folders behind
            try:
                folder.rmdir()
            except OSError:
                break
        raise


def _fetch_prefix_checked(url, dest: Path, prefix: str, progress: bool) -> Path:
    """Like :func:`cnnlab.download.fetch` for a file whose full sha256 is not published: the
    digest must start with ``prefix``. The full digest is printed so it can be recorded."""
    from .. import download

    if dest.is_file() and download.sha256_file(dest).startswith(prefix):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = open_temporary(dest.parent, dest.name)     # mode 0666 less the umask
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            digest = download._stream(url, out, dest, progress=progress, desc=dest.name)
        if not digest.startswith(prefix):
            raise ChecksumError(f"downloaded {dest.name} from {url} has sha256 {digest}, which does "
                                f"not start with {prefix} as its name says; the file was deleted")
        os.replace(tmp, dest)
        print(f"{dest.name}: sha256 {digest} (only its first {len(prefix)} digits are published)",
              file=sys.stderr)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def find_weights(model: str) -> Path | None:
    """A fetched weights file for ``model`` in :func:`weights_dir`, or None (torchvision first).
    A file whose size is not the published one (a copy cut short, or another file under
    that name) is an error rather than silently used; hashing 0.5 GB on every run would
    cost seconds, so the sha256 is checked when fetching only."""
    for name, source in SOURCES.items():
        if source.model == model:
            path = weights_dir() / source.filename
            if path.is_file():
                size = path.stat().st_size
                if source.size is not None and size != source.size:
                    raise FileFormatError(
                        f"{path} is {size:,} bytes, but {source.filename} is {source.size:,}: "
                        f"a partial or different file; delete it and run `cnnlab weights "
                        f"fetch {name}`")
                return path
    return None


# ------------------------------------------------------------------------------ loading


def conv_indices(model: str) -> list[tuple[int, int, int]]:
    """(features index, in channels, out channels) of each conv of ``model`` (torchvision layout)."""
    out, idx, c = [], 0, 3
    for v in CONFIGS[model]:
        if v == "M":
            idx += 1
        else:
            out.append((idx, c, v))
            idx, c = idx + 2, v
    return out


def _infer_model(sd, where) -> str:
    vgg_like = any(re.fullmatch(r"features\.\d+\.weight", k) for k in sd)
    if vgg_like and any(".running_mean" in k for k in sd):
        raise FileFormatError(f"{where} is a batch-norm VGG; neural style uses plain VGG-16/19 "
                              f"(vgg16-397923af.pth, vgg19-dcbb9e9d.pth)")
    convs = sorted(int(m.group(1)) for k in sd if (m := re.fullmatch(r"features\.(\d+)\.weight", k)))
    if not convs:
        shown = ", ".join(list(sd)[:5]) + (", ..." if len(sd) > 5 else "")
        raise FileFormatError(f"{where} is not a VGG state dict: no 'features.N.weight' keys "
                              f"(keys: {shown or 'none'})")
    for model in MODEL_ORDER:
        if [i for i, _, _ in conv_indices(model)] == convs:
            return model
    raise FileFormatError(f"{where} does not match VGG-16 or VGG-19: its conv layers are "
                          f"features.{', features.'.join(map(str, convs))}")


MODEL_ORDER = ("vgg19", "vgg16")
NAMES = {"vgg16": "VGG-16", "vgg19": "VGG-19"}


def check_vgg_state(sd, model: str, where: str) -> dict:
    """The conv weights and biases of ``model`` from state dict ``sd`` as float32, checked."""
    out = {}
    for idx, c, o in conv_indices(model):
        for kind, shape in (("weight", (o, c, 3, 3)), ("bias", (o,))):
            key = f"features.{idx}.{kind}"
            if key not in sd:
                raise FileFormatError(f"weights file {where} does not match {NAMES[model]} "
                                      f"(missing key {key!r})")
            arr = np.asarray(sd[key])
            if arr.shape != shape:
                raise FileFormatError(f"weights file {where} does not match {NAMES[model]} "
                                      f"({key} has shape {arr.shape}, expected {shape})")
            if arr.dtype.kind != "f":
                raise FileFormatError(f"weights file {where}: {key} is {arr.dtype}, not floating point")
            if not np.all(np.isfinite(arr)):
                raise FileFormatError(f"weights file {where}: {key} holds NaN or infinity")
            out[key] = arr.astype(np.float32, copy=False)
    return out


def _from_matconvnet(path, where):
    from ..io import load_matconvnet_vgg

    layers, meta = load_matconvnet_vgg(path)
    convs = [layer for layer in layers if layer["type"] == "conv" and layer["weight"].shape[2:] == (3, 3)]
    model = {13: "vgg16", 16: "vgg19"}.get(len(convs))
    if model is None:
        raise FileFormatError(f"{where} has {len(convs)} 3x3 conv layers; VGG-16 has 13, VGG-19 16")
    sd = {}
    for (idx, _, _), layer in zip(conv_indices(model), convs):
        sd[f"features.{idx}.weight"] = layer["weight"]
        sd[f"features.{idx}.bias"] = layer["bias"]
    return sd, model, matconvnet_preprocessing(meta["mean_pixel"])


def load_vgg_weights(path, model=None, preprocessing=None):
    """Read a VGG weights file -> (conv state dict, model name, Preprocessing).

    ``model`` ("vgg16"/"vgg19") is checked against the file, or inferred from it when None.
    ``preprocessing`` (a name or Preprocessing) overrides what the file implies: .mat ->
    matconvnet; .pth with jcjohnson's key layout (classifier.1/.4/.6) or file name ->
    caffe; other .pth -> torchvision; .npz/.safetensors -> their ``preprocessing``
    metadata (torchvision when absent). Raises FileFormatError for a file that is not a
    VGG of that kind, is truncated or is corrupt.
    """
    where = os.fspath(path)
    if not os.path.isfile(where):
        raise FileFormatError(f"weights file {where} does not exist; `cnnlab weights fetch vgg19` "
                              f"downloads one")
    suffix = Path(where).suffix.lower()
    implied = None
    try:
        if suffix == ".mat":
            sd, file_model, implied = _from_matconvnet(path, where)
        elif suffix in (".npz", ".safetensors"):
            from ..io import load_arrays
            sd, metadata = load_arrays(path)
            if "mean" in metadata:
                implied = _preprocessing_from_metadata(metadata, where)
            else:
                kind = metadata.get("preprocessing", "torchvision")
                if kind not in PREPROCESSINGS:
                    raise FileFormatError(f"{where}: unknown preprocessing {kind!r} in its metadata")
                implied = PREPROCESSINGS[kind]
            file_model = _infer_model(sd, where)
        else:
            from ..io import load_torch_state_dict
            sd = load_torch_state_dict(path)
            caffe_named = any(s.filename == Path(where).name and s.preprocessing is CAFFE
                              for s in SOURCES.values())
            implied = CAFFE if ("classifier.1.weight" in sd or caffe_named) else TORCHVISION
            file_model = _infer_model(sd, where)
    except FileFormatError:
        raise
    except (OSError, ValueError, EOFError, KeyError) as err:
        raise FileFormatError(f"cannot read weights file {where}: {err}") from err
    if model is not None and model != file_model:
        raise FileFormatError(f"weights file {where} is {NAMES[file_model]}, not {NAMES.get(model, model)}; "
                              f"use --model {file_model}")
    if isinstance(preprocessing, str):
        if preprocessing not in PREPROCESSINGS:
            raise CnnlabError(f"unknown preprocessing {preprocessing!r}; choose one of "
                              f"{', '.join(PREPROCESSINGS)}")
        preprocessing = PREPROCESSINGS[preprocessing]
    return check_vgg_state(sd, file_model, where), file_model, preprocessing or implied


def _preprocessing_from_metadata(metadata, where) -> Preprocessing:
    try:
        mean = tuple(float(v) for v in metadata["mean"].split(","))
        std = tuple(float(v) for v in metadata.get("std", "1,1,1").split(","))
        return Preprocessing(metadata.get("preprocessing", "custom"), metadata.get("bgr") == "1",
                             float(metadata.get("scale", "255")), mean, std)
    except (ValueError, KeyError) as err:
        raise FileFormatError(f"{where}: bad preprocessing metadata ({err})") from err


def save_vgg_weights(path, state, preprocessing: Preprocessing) -> None:
    """Write conv weights (``features.N.weight``/``bias``) as .npz/.safetensors with their
    preprocessing in the metadata, so :func:`load_vgg_weights` reads them back as they were."""
    from ..io import save_arrays

    metadata = {"preprocessing": preprocessing.name, "bgr": "1" if preprocessing.bgr else "0",
                "scale": repr(preprocessing.scale), "mean": ",".join(map(repr, preprocessing.mean)),
                "std": ",".join(map(repr, preprocessing.std))}
    save_arrays(path, {k: np.asarray(v, dtype=np.float32) for k, v in state.items()}, metadata)
