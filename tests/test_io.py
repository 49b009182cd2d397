"""cnnlab.io: atomic writes, safetensors, the restricted unpickler, .pth, .mat, npz.

torch and the safetensors package appear here only, as references: files written by
them must read back identically, and files written by cnnlab must read in them.
"""
import collections
import io
import json
import os
import pickle
import struct
import sys
import types
import zipfile

import numpy as np
import pytest

from cnnlab.errors import FileFormatError
from cnnlab.io import (NUMPY_GLOBALS, atomic_write, load_arrays, load_matconvnet_vgg,
                       load_safetensors, load_torch_state_dict, restricted_load, save_arrays,
                       save_safetensors)

torch = pytest.importorskip("torch")


def _leftovers(directory):
    return [n for n in os.listdir(directory) if n.endswith(".tmp")]


# ----------------------------------------------------------------------------- atomic


def test_atomic_write_replaces_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    with atomic_write(path) as f:
        f.write(b"new contents")
    assert path.read_bytes() == b"new contents"
    assert _leftovers(tmp_path) == []


def test_atomic_write_keeps_old_file_on_error(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_write(path) as f:
            f.write(b"half")
            raise RuntimeError("disk on fire")
    assert path.read_bytes() == b"old"
    assert _leftovers(tmp_path) == []


def test_atomic_write_error_creates_nothing(tmp_path):
    with pytest.raises(KeyError):
        with atomic_write(tmp_path / "never.bin") as f:
            f.write(b"x")
            raise KeyError("stop")
    assert os.listdir(tmp_path) == []


def test_atomic_write_text_mode_and_bad_mode(tmp_path):
    with atomic_write(tmp_path / "a.txt", "w") as f:
        f.write("héllo\n")
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "héllo\n"
    with pytest.raises(ValueError):
        with atomic_write(tmp_path / "b.txt", "a"):
            pass


# ------------------------------------------------------------------------ safetensors

ALL_DTYPES = [np.float16, np.float32, np.float64, np.int8, np.int16, np.int32, np.int64,
              np.uint8, np.bool_]


def _sample_tensors():
    rng = np.random.default_rng(0)
    tensors = {}
    for dtype in ALL_DTYPES:
        name = np.dtype(dtype).name
        tensors[name] = (rng.standard_normal((2, 3)) * 50).astype(dtype)
    tensors["scalar"] = np.array(2.5, dtype=np.float32)
    tensors["empty"] = np.zeros((0, 4), dtype=np.float32)
    tensors["transposed"] = np.arange(12, dtype=np.float32).reshape(3, 4).T
    return tensors


def test_safetensors_roundtrip_all_dtypes(tmp_path):
    tensors = _sample_tensors()
    path = tmp_path / "t.safetensors"
    save_safetensors(path, tensors, {"epoch": "3", "note": "ünïcode"})
    loaded, metadata = load_safetensors(path)
    assert list(loaded) == list(tensors)
    for name, value in tensors.items():
        assert loaded[name].dtype == value.dtype and loaded[name].shape == value.shape
        np.testing.assert_array_equal(loaded[name], value)
        assert loaded[name].flags["C_CONTIGUOUS"] and loaded[name].flags["WRITEABLE"]
    assert metadata == {"epoch": "3", "note": "ünïcode"}
    (header_len,) = struct.unpack("<Q", path.read_bytes()[:8])
    assert header_len % 8 == 0
    assert _leftovers(tmp_path) == []


def test_safetensors_written_by_cnnlab_reads_in_reference_package(tmp_path):
    pytest.importorskip("safetensors")
    from safetensors import safe_open
    from safetensors.numpy import load_file
    tensors = _sample_tensors()
    path = tmp_path / "t.safetensors"
    save_safetensors(path, tensors, {"k": "v"})
    reference = load_file(str(path))
    assert set(reference) == set(tensors)
    for name, value in tensors.items():
        np.testing.assert_array_equal(reference[name], value)
        assert reference[name].dtype == value.dtype
    with safe_open(str(path), framework="np") as f:
        assert f.metadata() == {"k": "v"}


def test_safetensors_written_by_reference_package_reads_in_cnnlab(tmp_path):
    pytest.importorskip("safetensors")
    from safetensors.numpy import save_file
    tensors = {k: v for k, v in _sample_tensors().items() if k != "transposed"}
    path = tmp_path / "ref.safetensors"
    save_file(tensors, str(path), metadata={"format": "np"})
    loaded, metadata = load_safetensors(path)
    assert metadata == {"format": "np"}
    for name, value in tensors.items():
        np.testing.assert_array_equal(loaded[name], value)
        assert loaded[name].dtype == value.dtype


def test_safetensors_bf16_loads_as_float32(tmp_path):
    pytest.importorskip("safetensors")
    from safetensors.torch import save_file
    t = torch.randn(5, 3).to(torch.bfloat16)
    path = tmp_path / "bf16.safetensors"
    save_file({"w": t}, str(path))
    loaded, metadata = load_safetensors(path)
    assert metadata is None
    assert loaded["w"].dtype == np.float32
    np.testing.assert_array_equal(loaded["w"], t.float().numpy())


def test_safetensors_bf16_hand_written(tmp_path):
    t = torch.tensor([1.0, -2.5, 3.140625, 1e30]).to(torch.bfloat16)
    bits = t.view(torch.int16).numpy().astype("<i2").tobytes()
    header = {"b": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, 8]}}
    path = _raw_safetensors(tmp_path / "bf.safetensors", header, bits)
    loaded, _ = load_safetensors(path)
    np.testing.assert_array_equal(loaded["b"], t.float().numpy().reshape(2, 2))


def test_safetensors_save_rejects_unsupported(tmp_path):
    with pytest.raises(TypeError, match="complex"):
        save_safetensors(tmp_path / "x.safetensors", {"c": np.zeros(2, np.complex64)})
    with pytest.raises(ValueError, match="str -> str"):
        save_safetensors(tmp_path / "x.safetensors", {"a": np.zeros(2)}, {"epoch": 3})
    assert os.listdir(tmp_path) == []


def _raw_safetensors(path, header, data=b"", header_len=None):
    text = json.dumps(header).encode() if isinstance(header, dict) else header
    size = len(text) if header_len is None else header_len
    path.write_bytes(struct.pack("<Q", size) + text + data)
    return path


def _f32(shape, begin):
    n = int(np.prod(shape)) * 4
    return {"dtype": "F32", "shape": list(shape), "data_offsets": [begin, begin + n]}


@pytest.mark.parametrize("header, data, message", [
    ({"a": _f32((2,), 0)}, b"\0" * 4, "truncated"),
    ({"a": _f32((2,), 0)}, b"\0" * 12, "unexpected bytes"),
    ({"a": _f32((2,), 0), "b": _f32((2,), 4)}, b"\0" * 12, "overlaps"),
    ({"a": _f32((2,), 0), "b": _f32((2,), 12)}, b"\0" * 20, "gap"),
    ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, "needs 12 bytes"),
    ({"a": {"dtype": "Q7", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, "dtype"),
    ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8, "shape"),
    ({"a": _f32((2,), 0), "__metadata__": {"x": 1}}, b"\0" * 8, "strings"),
    (b'{"a": 1, "a": 2}', b"", "duplicate"),
    (b"not json", b"", "not valid"),
    (b"[1, 2]", b"", "JSON object"),
])
def test_safetensors_rejects_malformed_headers(tmp_path, header, data, message):
    path = _raw_safetensors(tmp_path / "bad.safetensors", header, data)
    with pytest.raises(FileFormatError, match=message) as info:
        load_safetensors(path)
    assert "bad.safetensors" in str(info.value)


def test_safetensors_truncation_reports_file_and_offset(tmp_path):
    path = tmp_path / "t.safetensors"
    save_safetensors(path, {"w": np.ones((64, 64), np.float32)})
    blob = path.read_bytes()
    path.write_bytes(blob[:-100])
    with pytest.raises(FileFormatError, match=r"t\.safetensors: truncated .*byte \d+"):
        load_safetensors(path)
    path.write_bytes(blob[:5])
    with pytest.raises(FileFormatError, match="truncated"):
        load_safetensors(path)
    _raw_safetensors(path, b"{}", header_len=10**6)
    with pytest.raises(FileFormatError, match="truncated"):
        load_safetensors(path)


# ------------------------------------------------------------------------ safe_pickle


def _numpy_payload():
    return {"data": np.arange(12, dtype=np.uint8).reshape(3, 4),
            "labels": [1, 2, 3],
            "mean": np.float64(0.5),
            "fortran": np.asfortranarray(np.ones((2, 3), np.float32)),
            "names": np.array(["cat", "dog"]),
            "raw": b"\x00\xff",
            "ordered": collections.OrderedDict(a=np.zeros(2))}


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_restricted_load_numpy_pickles(protocol):
    payload = _numpy_payload()
    result = restricted_load(io.BytesIO(pickle.dumps(payload, protocol=protocol)), NUMPY_GLOBALS)
    assert set(result) == set(payload)
    for key in ("data", "fortran", "names"):
        np.testing.assert_array_equal(result[key], payload[key])
        assert result[key].dtype == payload[key].dtype
    assert result["labels"] == [1, 2, 3] and result["mean"] == 0.5 and result["raw"] == b"\x00\xff"
    assert isinstance(result["ordered"], collections.OrderedDict)


@pytest.mark.parametrize("encoding", ["latin1", "bytes"])
def test_restricted_load_python2_numpy_pickle(encoding):
    # What a Python 2 numpy pickle (e.g. a CIFAR-10 "python version" batch) looks like:
    # protocol 2, byte strings as SHORT_BINSTRING, numpy.core.multiarray._reconstruct.
    blob = (b"\x80\x02}q\x00(U\x04dataq\x01cnumpy.core.multiarray\n_reconstruct\nq\x02"
            b"cnumpy\nndarray\nq\x03K\x00\x85U\x01b\x87Rq\x04(K\x01K\x03\x85cnumpy\ndtype\n"
            b"U\x02u1K\x00K\x01\x87R(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
            b"\x89U\x03\x01\x02\xfftbU\x06labelsq\x05]q\x06(K\x07K\x08eu.")
    result = restricted_load(io.BytesIO(blob), NUMPY_GLOBALS, encoding=encoding)
    key = (lambda k: k.encode()) if encoding == "bytes" else (lambda k: k)
    assert result[key("labels")] == [7, 8]
    np.testing.assert_array_equal(result[key("data")], np.array([1, 2, 255], np.uint8))


class _RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_restricted_load_refuses_code(tmp_path):
    marker = tmp_path / "pwned"
    blob = pickle.dumps({"x": _RunsShell(marker)})
    with pytest.raises(FileFormatError, match=r"refuses to load global \w+\.system.*"
                                              r"files are data, not code"):
        restricted_load(io.BytesIO(blob), NUMPY_GLOBALS)
    assert not marker.exists()
    for name in (b"builtins\neval", b"__builtin__\ngetattr", b"subprocess\nPopen"):
        with pytest.raises(FileFormatError, match="files are data, not code"):
            restricted_load(io.BytesIO(b"c" + name + b"\n(S'1'\ntR."), NUMPY_GLOBALS)


def _stand_in():
    return _stand_in


def test_restricted_load_limits_calls_state_and_containers():
    allowed = {("m", "f"): _stand_in}
    # BUILD on an allowed function would set attributes on it
    with pytest.raises(FileFormatError, match="sets the state"):
        restricted_load(io.BytesIO(b"cm\nf\n(dS'evil'\nI1\nsb."), allowed)
    assert not hasattr(_stand_in, "evil")
    # REDUCE on something an allowed call returned (not itself allow-listed)
    with pytest.raises(FileFormatError, match="REDUCE"):
        restricted_load(io.BytesIO(b"cm\nf\n)R)R)R."), {("m", "f"): lambda: print})
    # SETITEM on a non-dict
    with pytest.raises(FileFormatError, match="SETITEM"):
        restricted_load(io.BytesIO(b"cm\nf\nS'a'\nI1\ns."), allowed)
    # persistent ids need a callback
    with pytest.raises(FileFormatError, match="persistent id"):
        restricted_load(io.BytesIO(b"\x80\x02X\x01\x00\x00\x00aQ."), allowed)


def test_restricted_load_reads_one_pickle_at_a_time_and_rejects_truncation():
    stream = io.BytesIO(pickle.dumps(1, protocol=2) + pickle.dumps([2, 3], protocol=2))
    assert restricted_load(stream, {}) == 1
    assert restricted_load(stream, {}) == [2, 3]
    with pytest.raises(FileFormatError, match="truncated|not a valid"):
        restricted_load(io.BytesIO(pickle.dumps(_numpy_payload())[:40]), NUMPY_GLOBALS)


# -------------------------------------------------------------------------- torch .pth


def _tensor_zoo():
    base = torch.randn(4, 6)
    return collections.OrderedDict([
        ("features.0.weight", torch.randn(8, 3, 3, 3)),
        ("features.0.bias", torch.randn(8)),
        ("half", torch.randn(2, 5).half()),
        ("double", torch.randn(3, dtype=torch.float64)),
        ("long", torch.arange(-3, 7)),
        ("int8", torch.tensor([-128, 0, 127], dtype=torch.int8)),
        ("bool", torch.tensor([True, False, True])),
        ("bf16", torch.randn(4).bfloat16()),
        ("uint16", torch.full((3,), 7, dtype=torch.uint16)),
        ("transposed", base.t()),
        ("slice", base[1:3, 2:5]),             # shares base's storage, offset and strides
        ("base", base),
        ("expanded", torch.randn(3, 1).expand(3, 4)),
        ("scalar", torch.tensor(1.5)),
        ("empty", torch.zeros(0, 3)),
    ])


def _expected(tensor):
    return tensor.float().numpy() if tensor.dtype == torch.bfloat16 else tensor.numpy()


def _assert_matches(loaded, state_dict):
    assert isinstance(loaded, collections.OrderedDict)
    assert list(loaded) == list(state_dict)
    for name, tensor in state_dict.items():
        expected = _expected(tensor)
        assert loaded[name].dtype == expected.dtype, name
        assert loaded[name].shape == expected.shape, name
        np.testing.assert_array_equal(loaded[name], expected, err_msg=name)
        assert loaded[name].flags["C_CONTIGUOUS"] and loaded[name].flags["WRITEABLE"]


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_torch_state_dict_matches_torch(tmp_path, legacy):
    state_dict = _tensor_zoo()
    path = tmp_path / "zoo.pth"
    torch.save(state_dict, path, _use_new_zipfile_serialization=not legacy)
    loaded = load_torch_state_dict(path)
    _assert_matches(loaded, state_dict)
    loaded["slice"][0, 0] = 1e6                  # views come back as independent arrays
    assert loaded["base"][1, 2] != 1e6


def _vgg_like():
    nn = torch.nn
    torch.manual_seed(0)
    return nn.ModuleDict({
        "features": nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
                                  nn.MaxPool2d(2), nn.Conv2d(4, 8, 3, padding=1), nn.ReLU()),
        "classifier": nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Dropout(), nn.Linear(6, 2)),
    })


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_torch_vgg_like_state_dict_and_checkpoints(tmp_path, legacy):
    state_dict = _vgg_like().state_dict()
    assert list(state_dict)[:2] == ["features.0.weight", "features.0.bias"]
    path = tmp_path / "vgg.pth"
    torch.save(state_dict, path, _use_new_zipfile_serialization=not legacy)
    _assert_matches(load_torch_state_dict(path), state_dict)
    for wrapper in ("state_dict", "model"):
        torch.save({"epoch": 7, wrapper: state_dict, "optimizer": {"lr": 0.1}}, path,
                   _use_new_zipfile_serialization=not legacy)
        _assert_matches(load_torch_state_dict(path), state_dict)
    params = collections.OrderedDict(_vgg_like().named_parameters())   # nn.Parameter values
    torch.save(params, path, _use_new_zipfile_serialization=not legacy)
    _assert_matches(load_torch_state_dict(path), {k: v.detach() for k, v in params.items()})


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_torch_malicious_pickle_is_refused_and_not_run(tmp_path, legacy):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"w": torch.ones(2), "x": _RunsShell(marker)}, path,
               _use_new_zipfile_serialization=not legacy)
    with pytest.raises(FileFormatError, match=r"refuses to load global \w+\.system from "
                                              r".*evil\.pth: files are data, not code"):
        load_torch_state_dict(path)
    assert not marker.exists()


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_torch_whole_model_and_non_state_dicts_are_refused(tmp_path, legacy):
    path = tmp_path / "m.pth"
    torch.save(_vgg_like(), path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(FileFormatError, match="state_dict"):
        load_torch_state_dict(path)
    torch.save([torch.ones(2)], path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(FileFormatError, match="not a state dict"):
        load_torch_state_dict(path)
    torch.save({"w": torch.ones(2), "step": 3}, path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(FileFormatError, match="'step' is a int"):
        load_torch_state_dict(path)


def test_torch_zip_truncated_or_missing_storage(tmp_path):
    path = tmp_path / "w.pth"
    torch.save({"a": torch.randn(100), "b": torch.randn(50)}, path)
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(FileFormatError, match="truncated or corrupt zip"):
        load_torch_state_dict(path)
    path.write_bytes(blob)
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(tmp_path / "m.pth", "w") as target:
        for item in source.infolist():
            if not item.filename.endswith("data/1"):
                target.writestr(item, source.read(item))
    with pytest.raises(FileFormatError, match=r"m\.pth: archive entry '.*data/1' is missing"):
        load_torch_state_dict(tmp_path / "m.pth")
    torch.save({"a": torch.full((100,), 1234.5)}, path)     # corrupt one byte of the data
    blob = bytearray(path.read_bytes())
    blob[blob.index(np.float32(1234.5).tobytes()) + 1] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(FileFormatError, match="corrupt"):
        load_torch_state_dict(path)


def test_torch_zip_big_endian(tmp_path):
    # torch writes byteorder "big" on big-endian machines; make such a file by hand
    state_dict = collections.OrderedDict(a=torch.randn(2, 3), b=torch.arange(4),
                                         c=torch.randn(3).half())
    path = tmp_path / "le.pth"
    torch.save(state_dict, path)
    itemsizes = {"0": 4, "1": 8, "2": 2}           # storage keys in order of appearance
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(tmp_path / "be.pth", "w") as target:
        for item in source.infolist():
            data = source.read(item)
            folder, _, leaf = item.filename.rpartition("/")
            if item.filename.endswith("/byteorder"):
                data = b"big"
            elif folder.endswith("/data") and leaf in itemsizes:
                data = np.frombuffer(data, f"<u{itemsizes[leaf]}").byteswap().tobytes()
            target.writestr(item, data)
    _assert_matches(load_torch_state_dict(tmp_path / "be.pth"), state_dict)


def test_torch_refuses_huge_expanded_view(tmp_path):
    path = tmp_path / "big.pth"
    torch.save({"w": torch.ones(1).expand(2 ** 25)}, path)     # 128 MiB from 4 bytes
    with pytest.raises(FileFormatError, match=r"big\.pth: .*expanded view"):
        load_torch_state_dict(path)


def test_torch_legacy_truncated(tmp_path):
    path = tmp_path / "w.pth"
    torch.save({"a": torch.randn(100)}, path, _use_new_zipfile_serialization=False)
    blob = path.read_bytes()
    path.write_bytes(blob[:-40])
    with pytest.raises(FileFormatError, match=r"w\.pth: truncated: .*byte \d+"):
        load_torch_state_dict(path)
    path.write_bytes(blob[:30])
    with pytest.raises(FileFormatError, match="w.pth"):
        load_torch_state_dict(path)


def test_torch_rejects_other_files(tmp_path):
    path = tmp_path / "x.pth"
    path.write_bytes(b"hello world, not a checkpoint")
    with pytest.raises(FileFormatError, match="not a PyTorch"):
        load_torch_state_dict(path)
    path.write_bytes(pickle.dumps({"a": 1}, protocol=2))
    with pytest.raises(FileFormatError, match="magic"):
        load_torch_state_dict(path)
    with pytest.raises(FileFormatError, match="cannot read"):
        load_torch_state_dict(tmp_path / "missing.pth")


# The oldest published files (PyTorch 0.1-0.3) pickle tensors as torch.FloatTensor()
# + BUILD((storage, offset, size, stride)) or torch._utils._rebuild_tensor, and storages
# may be views of other storages. Torch no longer writes those, so build one by hand:
# stand-in classes in fake modules, pickled, then renamed to the torch names.

_fake_torch = types.ModuleType("fake_legacy_torch")
_fake_utils = types.ModuleType("fake_legacy_utils")


class FloatStorage:
    pass


class FloatTensor:
    def __init__(self, storage, offset, size, stride):
        self.state = (storage, offset, size, stride)

    def __reduce__(self):
        return (FloatTensor._new, (), self.state)

    @staticmethod
    def _new():
        pass


def _rebuild_tensor(storage, offset, size, stride):
    pass


class _OldTensorV1(FloatTensor):
    def __reduce__(self):
        return (_rebuild_tensor, self.state)


class _StorageRef:
    def __init__(self, key, numel, view=None):
        self.key, self.numel, self.view = key, numel, view


for _obj, _module in ((FloatStorage, _fake_torch), (_rebuild_tensor, _fake_utils)):
    _obj.__module__ = _module.__name__
    setattr(_module, _obj.__name__, _obj)
FloatTensor._new.__module__, FloatTensor._new.__qualname__ = _fake_torch.__name__, "FloatTensor"
_fake_torch.FloatTensor = FloatTensor._new
sys.modules[_fake_torch.__name__] = _fake_torch
sys.modules[_fake_utils.__name__] = _fake_utils


def _write_oldest_legacy_file(path, entries, storages):
    """entries: name -> tensor stand-in; storages: key -> float32 data, in file order."""
    class OldPickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, _StorageRef):
                return ("storage", FloatStorage, obj.key, "cpu", obj.numel, obj.view)
            return None

    body = io.BytesIO()
    OldPickler(body, protocol=2).dump(collections.OrderedDict(entries))
    body = body.getvalue().replace(b"fake_legacy_torch\n", b"torch\n")
    body = body.replace(b"fake_legacy_utils\n", b"torch._utils\n")
    with open(path, "wb") as f:
        for header in (0x1950A86A20F9469CFC6C, 1001,
                       {"protocol_version": 1001, "little_endian": True,
                        "type_sizes": {"short": 2, "int": 4, "long": 4}}):
            pickle.dump(header, f, protocol=2)
        f.write(body)
        pickle.dump(list(storages), f, protocol=2)
        for data in storages.values():
            f.write(struct.pack("<q", data.size))
            f.write(data.astype("<f4").tobytes())


def test_torch_oldest_legacy_layout_with_storage_views(tmp_path):
    root = np.arange(20, dtype=np.float32)
    other = -np.arange(6, dtype=np.float32)
    whole = _StorageRef("100", 20)
    view = _StorageRef("100", 20, view=("101", 4, 12))      # elements 4..15 of storage 100
    entries = {
        "conv.weight": FloatTensor(whole, 2, (2, 3), (3, 1)),
        "conv.bias": FloatTensor(view, 1, (3, 2), (1, 3)),   # transposed layout in the view
        "fc.weight": _OldTensorV1(_StorageRef("200", 6), 0, (2, 3), (3, 1)),
    }
    path = tmp_path / "old.pth"
    _write_oldest_legacy_file(path, entries, {"100": root, "200": other})
    loaded = load_torch_state_dict(path)
    assert list(loaded) == ["conv.weight", "conv.bias", "fc.weight"]
    np.testing.assert_array_equal(loaded["conv.weight"], root[2:8].reshape(2, 3))
    np.testing.assert_array_equal(loaded["conv.bias"], root[4:][1:7].reshape(2, 3).T)
    np.testing.assert_array_equal(loaded["fc.weight"], other.reshape(2, 3))
    # a tensor reaching past its storage is refused, not read out of bounds
    entries["conv.weight"] = FloatTensor(whole, 15, (2, 3), (3, 1))
    _write_oldest_legacy_file(path, entries, {"100": root, "200": other})
    with pytest.raises(FileFormatError, match="reads element 20"):
        load_torch_state_dict(path)


# ------------------------------------------------------------------------- MatConvNet


def _cell(*items):
    cell = np.empty((1, len(items)), dtype=object)
    for i, item in enumerate(items):
        cell[0, i] = item
    return cell


def _conv_layer(name, filters, biases, pad, old_fields=False):
    layer = {"name": name, "type": "conv", "stride": np.array([1.0, 1.0]),
             "pad": np.array(pad, dtype=float), "precious": np.uint8(0),
             "size": np.array(filters.shape, dtype=float)}
    if old_fields:
        layer.update(filters=filters, biases=biases)
    else:
        layer.update(weights=_cell(filters, biases), dilate=np.array([1.0, 1.0]))
    return layer


def _toy_vgg_mat(path, old_layout=False):
    """A 2-conv network in the layout of imagenet-vgg-verydeep-19.mat."""
    rng = np.random.default_rng(1)
    f1 = rng.standard_normal((3, 2, 3, 4)).astype(np.float32)    # KH=3, KW=2: catches H/W swaps
    b1 = rng.standard_normal((1, 4)).astype(np.float32)
    f2 = rng.standard_normal((1, 1, 4, 5)).astype(np.float32)
    b2 = rng.standard_normal((5, 1)).astype(np.float32)
    layers = _cell(
        _conv_layer("conv1_1", f1, b1, [1, 1, 0, 1], old_layout),
        {"name": "relu1_1", "type": "relu"},
        {"name": "pool1", "type": "pool", "method": "max", "pool": np.array([2.0, 2.0]),
         "stride": np.array([2.0, 2.0]), "pad": np.array([0.0, 1.0, 0.0, 1.0])},
        _conv_layer("fc8", f2, b2, 0, old_layout),
        {"name": "prob", "type": "softmax"})
    classes = {"name": _cell("n01440764", "n01443537"), "description": _cell("tench", "goldfish")}
    mean = np.array([123.68, 116.779, 103.939])
    if old_layout:
        average_image = np.ones((4, 4, 3)) * mean            # older files: a whole mean image
        contents = {"layers": layers, "classes": classes,
                    "normalization": {"averageImage": average_image,
                                      "imageSize": np.array([224.0, 224.0, 3.0])}}
    else:
        contents = {"layers": layers,
                    "meta": {"normalization": {"averageImage": mean.reshape(3, 1),
                                               "imageSize": np.array([224.0, 224.0, 3.0])},
                             "classes": classes}}
    import scipy.io
    scipy.io.savemat(path, contents)
    return f1, b1, f2, b2


def _matconvnet_conv(image, filters, biases, pad):
    """vl_nnconv as the MatConvNet manual writes it, on an H x W x C image:
    y(i, j, o) = b(o) + sum_{i', j', c} F(i', j', c, o) x(i + i', j + j', c)."""
    top, bottom, left, right = pad
    x = np.pad(image, ((top, bottom), (left, right), (0, 0)))
    kh, kw, _, out = filters.shape
    height, width = x.shape[0] - kh + 1, x.shape[1] - kw + 1
    y = np.zeros((height, width, out))
    for i in range(height):
        for j in range(width):
            y[i, j] = np.einsum("abc,abco->o", x[i:i + kh, j:j + kw], filters)
    return y + biases.reshape(-1)


@pytest.mark.parametrize("old_layout", [False, True], ids=["meta", "normalization"])
def test_matconvnet_toy_vgg(tmp_path, old_layout):
    path = tmp_path / "toy.mat"
    f1, b1, f2, b2 = _toy_vgg_mat(path, old_layout)
    layers, meta = load_matconvnet_vgg(path)
    assert [(l["name"], l["type"]) for l in layers] == [
        ("conv1_1", "conv"), ("relu1_1", "relu"), ("pool1", "pool"), ("fc8", "conv"),
        ("prob", "softmax")]
    conv1, pool1, fc8 = layers[0], layers[2], layers[3]
    assert conv1["weight"].shape == (4, 3, 3, 2) and conv1["weight"].dtype == np.float32
    assert conv1["bias"].shape == (4,) and fc8["weight"].shape == (5, 4, 1, 1)
    np.testing.assert_array_equal(conv1["weight"], f1.transpose(3, 2, 0, 1))
    np.testing.assert_array_equal(fc8["bias"], b2.reshape(-1))
    assert conv1["stride"] == (1, 1) and conv1["pad"] == (1, 1, 0, 1)
    assert fc8["pad"] == (0, 0, 0, 0)
    assert pool1 == {"name": "pool1", "type": "pool", "method": "max", "size": (2, 2),
                     "stride": (2, 2), "pad": (0, 1, 0, 1)}
    np.testing.assert_allclose(meta["mean_pixel"], [123.68, 116.779, 103.939], rtol=1e-6)
    assert meta["mean_pixel"].dtype == np.float32
    assert meta["classes"] == ["n01440764", "n01443537"]
    assert meta["descriptions"] == ["tench", "goldfish"]
    assert meta["image_size"] == (224, 224, 3)
    assert meta["layout"] == ("normalization" if old_layout else "meta")

    # The converted weight under PyTorch's conv2d computes what MatConvNet computes.
    image = np.random.default_rng(2).standard_normal((6, 5, 3))
    expected = _matconvnet_conv(image, f1.astype(np.float64), b1, conv1["pad"])
    top, bottom, left, right = conv1["pad"]
    x = torch.nn.functional.pad(torch.from_numpy(image.transpose(2, 0, 1))[None],
                                (left, right, top, bottom))
    got = torch.nn.functional.conv2d(x, torch.from_numpy(conv1["weight"]).double(),
                                     torch.from_numpy(conv1["bias"]).double())
    np.testing.assert_allclose(got[0].numpy().transpose(1, 2, 0), expected, rtol=1e-6, atol=1e-6)


def test_matconvnet_rejects_other_files(tmp_path):
    import scipy.io
    path = tmp_path / "other.mat"
    scipy.io.savemat(path, {"x": np.ones(3)})
    with pytest.raises(FileFormatError, match=r"other\.mat is not a MatConvNet network"):
        load_matconvnet_vgg(path)
    scipy.io.savemat(path, {"layers": _cell({"name": "a", "type": "conv", "block": 1.0}),
                            "params": np.ones(2)})
    with pytest.raises(FileFormatError, match="DagNN"):
        load_matconvnet_vgg(path)
    scipy.io.savemat(path, {"layers": _cell({"name": "c", "type": "conv"}),
                            "meta": {"normalization": {"averageImage": np.ones(3)}}})
    with pytest.raises(FileFormatError, match="missing field 'filters'"):
        load_matconvnet_vgg(path)
    (tmp_path / "junk.mat").write_bytes(b"\x00" * 300)
    with pytest.raises(FileFormatError, match=r"junk\.mat"):
        load_matconvnet_vgg(tmp_path / "junk.mat")
    with pytest.raises(FileFormatError, match="no such file"):
        load_matconvnet_vgg(tmp_path / "missing.mat")


# ----------------------------------------------------------------------------- arrays


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_arrays_roundtrip(tmp_path, suffix):
    arrays = {"layer2.weight": np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32),
              "layer1.bias": np.arange(3, dtype=np.int64), "step": np.array(5)}
    path = tmp_path / f"ckpt{suffix}"
    save_arrays(path, arrays, {"epoch": "2", "config": json.dumps({"lr": 0.1})})
    loaded, metadata = load_arrays(path)
    assert list(loaded) == list(arrays)
    for name in arrays:
        np.testing.assert_array_equal(loaded[name], arrays[name])
        assert loaded[name].dtype == arrays[name].dtype
    assert metadata == {"epoch": "2", "config": '{"lr": 0.1}'}
    save_arrays(path, {"w": np.zeros(2)})
    assert load_arrays(path)[1] == {}
    assert _leftovers(tmp_path) == []


def test_arrays_reject_bad_input(tmp_path):
    with pytest.raises(ValueError, match="suffix"):
        save_arrays(tmp_path / "x.pkl", {"a": np.zeros(1)})
    with pytest.raises(ValueError, match="str -> str"):
        save_arrays(tmp_path / "x.npz", {"a": np.zeros(1)}, {"epoch": 3})
    with pytest.raises(ValueError, match="not allowed"):
        save_arrays(tmp_path / "x.npz", {"__metadata__": np.zeros(1)})
    with pytest.raises(TypeError, match="object"):
        save_arrays(tmp_path / "x.npz", {"a": np.array([None])})
    assert os.listdir(tmp_path) == []


def test_arrays_npz_refuses_pickles_and_truncation(tmp_path):
    path = tmp_path / "x.npz"
    np.savez(path, a=np.array([{"evil": 1}], dtype=object))
    with pytest.raises(FileFormatError, match="pickled objects"):
        load_arrays(path)
    np.savez(path, a=np.ones(1000))
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(FileFormatError, match=r"x\.npz is truncated"):
        load_arrays(path)
    np.savez(path, a=np.ones(2))                  # plain npz without metadata
    arrays, metadata = load_arrays(path)
    assert metadata == {} and list(arrays) == ["a"]


def test_torch_zip_storage_larger_than_declared_is_refused(tmp_path):
    """A storage record bigger than its tensor's storage (a decompression bomb: a few KB of
    zeros that inflate to hundreds of MB) is refused before anything is allocated."""
    path, bomb = tmp_path / "ok.pth", tmp_path / "bomb.pth"
    torch.save({"w": torch.arange(4.0)}, path)
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(bomb, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            if item.filename.endswith("/data/0"):
                target.writestr(item.filename, data + bytes(1 << 20),
                                compress_type=zipfile.ZIP_DEFLATED)
            else:
                target.writestr(item, data)
    with pytest.raises(FileFormatError, match="has 1048592 bytes, expected 16"):
        load_torch_state_dict(bomb)


def test_impossible_shapes_are_file_format_errors(tmp_path):
    torch.save({"w": torch.empty(0, 2 ** 62)}, tmp_path / "huge.pth")
    with pytest.raises(FileFormatError, match="cannot be built"):
        load_torch_state_dict(tmp_path / "huge.pth")
    header = json.dumps({"x": {"dtype": "F32", "shape": [0, 2 ** 62], "data_offsets": [0, 0]}})
    raw = header.encode() + b" " * (-len(header) % 8)
    (tmp_path / "s.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw)
    with pytest.raises(FileFormatError):
        load_safetensors(tmp_path / "s.safetensors")


def test_npz_any_array_name_round_trips_and_odd_members_are_refused(tmp_path):
    arrays = {"allow_pickle": np.ones(3), "file": np.arange(2), "w": np.ones((2, 2), np.float16)}
    save_arrays(tmp_path / "a.npz", arrays, {"k": "v"})
    back, meta = load_arrays(tmp_path / "a.npz")
    assert list(back) == list(arrays) and meta == {"k": "v"}
    assert all(np.array_equal(back[k], v) and back[k].dtype == v.dtype for k, v in arrays.items())
    assert list(np.load(tmp_path / "a.npz").files)[:3] == list(arrays)       # plain numpy reads it
    with zipfile.ZipFile(tmp_path / "b.npz", "w") as z:
        z.writestr("w", b"not an array")
    with pytest.raises(FileFormatError, match="not .npy arrays"):
        load_arrays(tmp_path / "b.npz")


def test_atomic_write_keeps_permissions_and_symlinks(tmp_path):
    target = tmp_path / "ckpt.bin"
    target.write_bytes(b"old")
    os.chmod(target, 0o600)
    link = tmp_path / "latest"
    link.symlink_to(target)
    with atomic_write(link) as f:
        f.write(b"new")
    assert link.is_symlink() and target.read_bytes() == b"new"
    assert target.stat().st_mode & 0o777 == 0o600 and not _leftovers(tmp_path)
    loop = tmp_path / "loop"
    loop.symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(loop)
    with atomic_write(loop) as f:            # a symlink loop: replaced, as a plain open would
        f.write(b"x")                        # fail to; no temporary file left either way
    assert not _leftovers(tmp_path)
