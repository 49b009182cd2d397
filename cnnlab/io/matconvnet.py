"""MatConvNet VGG networks (``imagenet-vgg-verydeep-16.mat`` / ``-19.mat``) read into numpy.

These are MATLAB v5 .mat files holding a MatConvNet "SimpleNN" network::

    layers          1 x L cell array of structs: name, type ('conv', 'relu', 'pool',
                    'softmax', ...) and per type
                      conv: weights = {filters (KH x KW x C x O), biases (O)},
                            stride [sy sx] or s, pad [top bottom left right] or p
                            (the oldest files have fields filters / biases instead)
                      pool: method 'max' | 'avg', pool [ph pw], stride, pad
    normalization   older files: struct with averageImage (224 x 224 x 3 or 1 x 1 x 3),
                    imageSize, ...; classes at top level too
    meta            newer files (beta-20 on): struct with normalization.averageImage
                    (the mean pixel), classes.name / classes.description, inputs

The fully connected layers are stored as 'conv' layers whose filters cover the whole
input (7 x 7 x 512 x 4096, then 1 x 1 x 4096 x 4096, 1 x 1 x 4096 x 1000).

Filter layout, determined from how the files were made and how MatConvNet computes:
MatConvNet's ``vl_nnconv`` is a cross-correlation (no kernel flip),
y(i, j, o) = b(o) + sum_{i', j', c} F(i', j', c, o) x(i + i' - 1, j + j' - 1, c), where
the first index of both the image and the filter is the row (height): images are
H x W x C MATLAB arrays (``imread``), and the MatConvNet manual writes the filter bank
as H' x W' x D x D''. The VGG files were converted from Caffe by MatConvNet's
``import-caffe.py``: the Caffe blob (O, C, KH, KW) is fully transposed to
(KW, KH, C, O) and then, with its default ``--transpose``, permuted by [1 0 2 3] to
(KH, KW, C, O) -- so F[ky, kx, c, o] = W_caffe[o, c, ky, kx]; the same script flips
the first layer's channels BGR -> RGB and the average image to RGB. ``scipy.io.loadmat``
keeps MATLAB's indices (F[i, j, c, o] is F(i+1, j+1, c+1, o+1)). Caffe and PyTorch
both compute the same cross-correlation with weights (O, C, KH, KW), so the PyTorch
weight is ``F.transpose(3, 2, 0, 1)``: no H/W swap and no flip. (The ``vl_nnconv``
help text calls the dimensions "FW x FH", which is why some TensorFlow ports swap
H and W; a user of such a port reported better ImageNet accuracy without the swap:
anishathalye/neural-style#180.) The networks therefore take RGB images in 0-255 with
``mean_pixel`` subtracted, like the original VGG/Caffe models but in RGB order.
"""
import os

import numpy as np

from cnnlab.errors import FileFormatError


def _one(value):
    """Unwrap MATLAB's 1 x 1 wrappers (object arrays, 1 x 1 structs) to the element."""
    while isinstance(value, np.ndarray) and value.dtype == object and value.size == 1:
        value = value.reshape(-1)[0]
    return value


def _names(value):
    """Field names of a MATLAB struct as loaded by loadmat (a record array); () otherwise."""
    return getattr(getattr(value, "dtype", None), "names", None) or ()


def _field(struct, name, where, required=True):
    """Field ``name`` of a 1 x 1 MATLAB struct as loaded by loadmat (a record array)."""
    struct = _one(struct)
    if name not in _names(struct):
        if required:
            raise FileFormatError(f"{where}: missing field '{name}'")
        return None
    return _one(struct[name].reshape(-1)[0] if struct.ndim else struct[name])


def _text(value, where):
    value = _one(value)
    if isinstance(value, np.ndarray) and value.dtype.kind == "U":
        value = "".join(value.reshape(-1).tolist())
    if not isinstance(value, str):
        raise FileFormatError(f"{where}: expected text, got {type(value).__name__}")
    return value


def _numbers(value, where, counts):
    """A numeric field as a tuple of ints with one of the allowed lengths (scalar expands)."""
    array = np.asarray(_one(value), dtype=np.float64).reshape(-1)
    if array.size == 1 and 1 not in counts:
        array = np.repeat(array, max(counts))
    if array.size not in counts or not np.all(array == np.round(array)) or np.any(array < 0):
        raise FileFormatError(f"{where}: expected {' or '.join(map(str, counts))} "
                              f"non-negative integers, got {array.tolist()}")
    return tuple(int(v) for v in array)


def _optional(struct, name, where, counts, default):
    """Numeric field with MatConvNet's default (stride 1, pad 0) when absent."""
    value = _field(struct, name, where, required=False)
    if value is None:
        return (default,) * max(counts)
    return _numbers(value, f"{where} {name}", counts)


def _cells(value):
    """Elements of a MATLAB cell array, in MATLAB (column-major) order."""
    if isinstance(value, np.ndarray) and value.dtype == object:
        return list(value.reshape(-1, order="F"))
    return [value]


def _conv(struct, name, where):
    weights = _field(struct, "weights", where, required=False)
    if weights is not None:
        parts = _cells(weights)
        if len(parts) != 2:
            raise FileFormatError(f"{where}: conv layer weights must be {{filters, biases}}, "
                                  f"got {len(parts)} arrays")
        filters, biases = parts
    else:
        filters = _field(struct, "filters", where)
        biases = _field(struct, "biases", where)
    filters = np.asarray(filters)
    biases = np.asarray(biases)
    if filters.dtype.kind != "f" or not 2 <= filters.ndim <= 4:
        raise FileFormatError(f"{where}: filters must be a KH x KW x C x O float array, got "
                              f"{filters.dtype} {filters.shape}")
    filters = filters.reshape(filters.shape + (1,) * (4 - filters.ndim))  # MATLAB drops 1s
    out_channels = filters.shape[3]
    if biases.dtype.kind != "f" or biases.size != out_channels:
        raise FileFormatError(f"{where}: {out_channels} filters but biases of shape "
                              f"{biases.shape}")
    layer = {
        "name": name,
        "type": "conv",
        "weight": np.ascontiguousarray(filters.transpose(3, 2, 0, 1), dtype=np.float32),
        "bias": np.ascontiguousarray(biases.reshape(-1), dtype=np.float32),
        "stride": _optional(struct, "stride", where, (2,), 1),
        "pad": _optional(struct, "pad", where, (4,), 0),
    }
    dilate = _field(struct, "dilate", where, required=False)
    if dilate is not None:
        layer["dilate"] = _numbers(dilate, f"{where} dilate", (2,))
    return layer


def _pool(struct, name, where):
    method = _text(_field(struct, "method", where), f"{where} method")
    if method not in ("max", "avg"):
        raise FileFormatError(f"{where}: pool method {method!r}, expected 'max' or 'avg'")
    return {
        "name": name,
        "type": "pool",
        "method": method,
        "size": _numbers(_field(struct, "pool", where), f"{where} pool", (2,)),
        "stride": _optional(struct, "stride", where, (2,), 1),
        "pad": _optional(struct, "pad", where, (4,), 0),
    }


def _layer(struct, index, where):
    struct = _one(struct)
    if not _names(struct):
        raise FileFormatError(f"{where}: layer {index + 1} is not a struct")
    if "block" in struct.dtype.names:
        raise FileFormatError(f"{where} is a MatConvNet DagNN network; only SimpleNN networks "
                              f"(the VGG-16/19 files) are supported")
    name = _text(_field(struct, "name", f"{where} layer {index + 1}"), where)
    kind = _text(_field(struct, "type", f"{where} layer {name}"), where)
    here = f"{where} layer {name}"
    if kind == "conv":
        return _conv(struct, name, here)
    if kind == "pool":
        return _pool(struct, name, here)
    layer = {"name": name, "type": kind}
    if kind == "dropout":
        rate = _field(struct, "rate", here, required=False)
        if rate is not None:
            layer["rate"] = float(np.asarray(rate).reshape(-1)[0])
    return layer


def _mean_pixel(average_image, where):
    image = np.asarray(_one(average_image), dtype=np.float64)
    if image.size == 3:
        return image.reshape(3).astype(np.float32)
    if image.ndim == 3 and image.shape[2] == 3:
        return image.mean(axis=(0, 1)).astype(np.float32)
    raise FileFormatError(f"{where}: averageImage has shape {image.shape}, expected 3 values "
                          f"or an H x W x 3 image")


def _class_names(classes, where):
    if classes is None:
        return None, None
    result = []
    for field in ("name", "description"):
        value = _field(classes, field, where, required=False)
        result.append(None if value is None else [_text(v, where) for v in _cells(value)])
    return tuple(result)


def load_matconvnet_vgg(path):
    """Read a MatConvNet SimpleNN .mat (VGG-16/19) -> (layers, meta).

    layers: list of dicts in network order:
      conv: {"name", "type": "conv", "weight": (O, C, KH, KW) float32, "bias": (O,)
             float32, "stride": (sy, sx), "pad": (top, bottom, left, right)[, "dilate"]}
      pool: {"name", "type": "pool", "method": "max"|"avg", "size": (ph, pw),
             "stride": (sy, sx), "pad": (top, bottom, left, right)}
      other types ('relu', 'softmax', 'dropout', ...): {"name", "type"[, "rate"]}
    meta: {"mean_pixel": (3,) float32 RGB in 0-255, "image_size": tuple or None,
           "classes": list of str or None, "descriptions": list of str or None,
           "layout": "meta" (newer files) or "normalization" (older files)}

    Weights are in PyTorch's layout and convention (see the module docstring: no H/W
    swap, no flip); inputs are RGB 0-255 minus mean_pixel. Raises FileFormatError for
    anything that is not such a file (other .mat files, DagNN networks, v7.3/HDF5).
    """
    import scipy.io        # imported here: only this loader needs it

    where = os.fspath(path)
    if not os.path.isfile(where):
        raise FileFormatError(f"cannot read {where}: no such file")
    try:
        contents = scipy.io.loadmat(where, squeeze_me=False, struct_as_record=True,
                                    chars_as_strings=True)
    except NotImplementedError as err:      # scipy's answer to MATLAB v7.3 (HDF5) files
        raise FileFormatError(f"{where} is a MATLAB v7.3 (HDF5) file; re-save it with "
                              f"save(..., '-v7') or use the original MatConvNet download") from err
    except Exception as err:                # scipy raises ValueError/TypeError/... for non-.mat
        raise FileFormatError(f"{where} is not a readable MATLAB .mat file ({err})") from err

    if "layers" not in contents and "net" in contents:   # saved as a variable named 'net'
        net = _one(contents["net"])
        if _names(net):
            contents = {name: net[name].reshape(-1)[0] for name in net.dtype.names}
    if "layers" not in contents:
        raise FileFormatError(f"{where} is not a MatConvNet network: no 'layers' variable "
                              f"(has {sorted(k for k in contents if not k.startswith('__'))})")
    layers_cell = contents["layers"]
    if not isinstance(layers_cell, np.ndarray) or layers_cell.dtype != object:
        if "block" in _names(layers_cell):
            raise FileFormatError(f"{where} is a MatConvNet DagNN network; only SimpleNN "
                                  f"networks (the VGG-16/19 files) are supported")
        raise FileFormatError(f"{where}: 'layers' is not a cell array of layer structs")
    layers = [_layer(struct, i, where) for i, struct in enumerate(_cells(layers_cell))]
    if not any(layer["type"] == "conv" for layer in layers):
        raise FileFormatError(f"{where}: network has no conv layers")

    if "meta" in contents:
        meta_struct, layout = contents["meta"], "meta"
        normalization = _field(meta_struct, "normalization", f"{where} meta")
        classes = _field(meta_struct, "classes", f"{where} meta", required=False)
    elif "normalization" in contents:
        normalization, layout = contents["normalization"], "normalization"
        classes = contents.get("classes")
    else:
        raise FileFormatError(f"{where}: no 'meta' or 'normalization' variable, so no mean "
                              f"pixel; not a MatConvNet ImageNet network")
    mean_pixel = _mean_pixel(_field(normalization, "averageImage", f"{where} normalization"),
                             where)
    image_size = _field(normalization, "imageSize", f"{where} normalization", required=False)
    if image_size is not None:
        image_size = tuple(int(v) for v in np.asarray(image_size, dtype=np.float64).reshape(-1))
    names, descriptions = _class_names(classes, f"{where} classes")
    meta = {"mean_pixel": mean_pixel, "image_size": image_size, "classes": names,
            "descriptions": descriptions, "layout": layout}
    return layers, meta
