"""Packed files, image folders, the CIFAR readers and the pack / augment commands."""
import argparse
import io
import os
import pickle
import struct
import tarfile

import numpy as np
import pytest
from PIL import Image

from cnnlab.data.cifar import SOURCES, load_cifar10, load_cifar100
from cnnlab.data.dataset import ArrayDataset
from cnnlab.data.imagefolder import ImageFolder, load_image_folder
from cnnlab.data.loader import DataLoader
from cnnlab.data.pack_commands import register, register_data_subcommands
from cnnlab.data.packed import PREAMBLE, PackedDataset, pack_dataset, read_header
from cnnlab.data.registry import load_dataset
from cnnlab.errors import CnnlabError, FileFormatError


def toy(n=9, shape=(5, 6, 3), seed=0):
    rng = np.random.default_rng(seed)
    return ArrayDataset(rng.integers(0, 256, (n,) + shape, dtype=np.uint8),
                        rng.integers(0, 4, n), ["a", "b", "c", "d"], "toy/train")


# --- packed format ---------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(5, 6, 3), (7, 4)])
def test_round_trip(tmp_path, shape):
    data = toy(shape=shape)
    path = pack_dataset(data, tmp_path / "toy.cnnpack")
    packed = PackedDataset(path, verify=True)
    assert packed.images.shape == data.images.shape and packed.images.dtype == np.uint8
    assert np.array_equal(packed.images, data.images)
    assert np.array_equal(packed.labels, data.labels) and packed.labels.dtype == np.int64
    assert packed.classes == data.classes and packed.name == "toy/train" and len(packed) == 9
    assert isinstance(packed.images.base, np.memmap) and not packed.images.flags.writeable
    assert np.allclose(packed.as_float(), data.as_float())
    h = read_header(path)
    assert h["images_offset"] % 64 == 0 and h["labels_offset"] % 64 == 0


def test_pickles_as_its_path_and_feeds_process_workers(tmp_path):
    data = toy(n=40, shape=(8, 8))
    packed = PackedDataset(pack_dataset(data, tmp_path / "p.cnnpack"))
    blob = pickle.dumps(packed)
    assert len(blob) < 500
    assert np.array_equal(pickle.loads(blob).images, data.images)
    assert len(pickle.dumps(DataLoader(packed)._maker)) < 1000      # workers re-open the file
    for ctx in ("fork", "spawn"):
        loader = DataLoader(packed, batch_size=16, num_workers=2, mode="process", mp_context=ctx)
        ys = np.concatenate([y for _, y in loader])
        assert np.array_equal(ys, data.labels)


def test_registry_reads_packed_files_and_folders(tmp_path):
    data = toy()
    pack_dataset(data, tmp_path / "train.cnnpack")
    assert np.array_equal(load_dataset(str(tmp_path / "train.cnnpack")).images, data.images)
    assert np.array_equal(load_dataset(str(tmp_path), "train").labels, data.labels)
    with pytest.raises(CnnlabError, match="test.cnnpack"):
        load_dataset(str(tmp_path), "test")
    with pytest.raises(CnnlabError, match="single packed file"):
        load_dataset(str(tmp_path / "train.cnnpack"), "test")


def test_truncated_files_name_the_file_and_offset(tmp_path):
    path = pack_dataset(toy(), tmp_path / "t.cnnpack")
    whole = path.read_bytes()
    h = read_header(path)
    for cut, where in [(20, "offset 20"), (PREAMBLE.size + 5, f"offset {PREAMBLE.size + 5}"),
                       (h["images_offset"] + 30, "image data is missing"),
                       (len(whole) - 1, "label data is missing")]:
        path.write_bytes(whole[:cut])
        with pytest.raises(FileFormatError) as info:
            PackedDataset(path)
        assert str(path) in str(info.value) and where in str(info.value)
        assert "offset" in str(info.value)


def test_corrupt_files_are_refused(tmp_path):
    path = pack_dataset(toy(), tmp_path / "c.cnnpack")
    whole = bytearray(path.read_bytes())
    h = read_header(path)
    bad = bytearray(whole)
    bad[h["images_offset"] + 3] ^= 0xFF                      # flip one pixel
    path.write_bytes(bytes(bad))
    PackedDataset(path)                                      # opens: no hashing by default
    with pytest.raises(FileFormatError, match="sha256"):
        PackedDataset(path, verify=True)
    bad = bytearray(whole)
    bad[h["labels_offset"] + 8:h["labels_offset"] + 16] = struct.pack("<q", 99)
    path.write_bytes(bytes(bad))
    with pytest.raises(FileFormatError, match=f"offset {h['labels_offset'] + 8}"):
        PackedDataset(path)
    path.write_bytes(b"NOTAPACK" + bytes(whole[8:]))
    with pytest.raises(FileFormatError, match="not a cnnlab packed file"):
        PackedDataset(path)
    path.write_bytes(bytes(whole[:8]) + struct.pack("<I", 9) + bytes(whole[12:]))
    with pytest.raises(FileFormatError, match="version 9"):
        PackedDataset(path)
    path.write_bytes(bytes(whole[:PREAMBLE.size]) + b"x" + bytes(whole[PREAMBLE.size + 1:]))
    with pytest.raises(FileFormatError, match="JSON"):
        PackedDataset(path)


def test_failed_pack_leaves_no_file(tmp_path):
    class Broken:
        labels = np.zeros(3, np.int64)
        classes = ["x"]
        name = "broken"

        def __len__(self):
            return 3

        def __getitem__(self, i):
            return np.zeros((4, 4) if i < 2 else (5, 4), np.uint8), 0

    with pytest.raises(CnnlabError, match="item 2"):
        pack_dataset(Broken(), tmp_path / "b.cnnpack")
    assert list(tmp_path.iterdir()) == []


# --- image folders ---------------------------------------------------------------------

def write_folder(root, sizes=((6, 8),) * 3, classes=("cat", "dog")):
    rng = np.random.default_rng(3)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i, (h, w) in enumerate(sizes):
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()


def test_image_folder_loads_and_packs(tmp_path):
    write_folder(tmp_path / "imgs")
    folder = ImageFolder(tmp_path / "imgs")
    assert folder.classes == ["cat", "dog"] and len(folder) == 6
    data = folder.load()
    assert data.images.shape == (6, 6, 8, 3) and list(data.labels) == [0, 0, 0, 1, 1, 1]
    first = np.asarray(Image.open(tmp_path / "imgs" / "cat" / "0.png"))
    assert np.array_equal(data.images[0], first)
    packed = PackedDataset(pack_dataset(folder, tmp_path / "f.cnnpack"), verify=True)
    assert np.array_equal(packed.images, data.images) and packed.classes == ["cat", "dog"]
    gray = ImageFolder(tmp_path / "imgs", size=(3, 4), color="gray").load()
    assert gray.images.shape == (6, 3, 4)
    assert load_dataset(str(tmp_path / "imgs")).images.shape == (6, 6, 8, 3)


def test_test_split_labels_with_the_training_classes(tmp_path):
    """A test/ folder lacking one of train/'s classes keeps train's labels (they used to be
    numbered from its own sub-folders); a class train/ lacks is an error."""
    colours = {"cat": (255, 0, 0), "dog": (0, 255, 0), "zebra": (0, 0, 255)}
    for split, names in (("train", ("cat", "dog", "zebra")), ("test", ("cat", "zebra"))):
        for name in names:
            (tmp_path / "r" / split / name).mkdir(parents=True)
            Image.new("RGB", (4, 4), colours[name]).save(tmp_path / "r" / split / name / "0.png")
    train, test = (load_image_folder(tmp_path / "r", s) for s in ("train", "test"))
    assert train.classes == test.classes == ["cat", "dog", "zebra"]
    assert list(test.labels) == [0, 2] and tuple(test.images[1, 0, 0]) == (0, 0, 255)
    (tmp_path / "r" / "test" / "emu").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "r" / "test" / "emu" / "0.png")
    with pytest.raises(CnnlabError, match="emu"):
        load_image_folder(tmp_path / "r", "test")


def test_exif_orientation_is_applied(tmp_path):
    """A photo saved sideways with an Orientation tag loads the way the camera held it."""
    (tmp_path / "a" / "x").mkdir(parents=True)
    im = Image.fromarray(np.zeros((20, 40, 3), np.uint8))
    exif = im.getexif()
    exif[0x0112] = 6                                # rotate 90 degrees to display
    im.save(tmp_path / "a" / "x" / "0.jpg", exif=exif)
    assert ImageFolder(tmp_path / "a").load().images.shape == (1, 40, 20, 3)


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    (tmp_path / "a" / "x").mkdir(parents=True)
    ramp = np.linspace(0, 65535, 64).reshape(8, 8).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "a" / "x" / "0.png")
    images = ImageFolder(tmp_path / "a", color="gray").load().images
    assert np.array_equal(images[0], np.rint(ramp / 257).astype(np.uint8))
    (tmp_path / "a" / "x" / "0.png").unlink()
    # a 16-bit PGM, which Pillow opens in mode "I"
    (tmp_path / "a" / "x" / "0.pgm").write_bytes(b"P5 8 8 65535\n" + ramp.astype(">u2").tobytes())
    images = ImageFolder(tmp_path / "a", color="gray").load().images
    assert np.array_equal(images[0], np.rint(ramp / 257).astype(np.uint8))
    (tmp_path / "a" / "x" / "0.pgm").unlink()
    Image.fromarray(ramp.astype(np.int32) * 1000).save(tmp_path / "a" / "x" / "0.tif")
    with pytest.raises(FileFormatError, match="32-bit integer image with values 0..65535000"):
        ImageFolder(tmp_path / "a").load()


def test_image_folder_errors(tmp_path):
    write_folder(tmp_path / "mixed", sizes=((6, 8), (7, 8)))
    with pytest.raises(CnnlabError, match="--size"):
        ImageFolder(tmp_path / "mixed").load()
    assert ImageFolder(tmp_path / "mixed", size=5).load().images.shape == (4, 5, 5, 3)
    with pytest.raises(CnnlabError, match="test"):
        load_image_folder(tmp_path / "mixed", "test")
    (tmp_path / "mixed" / "dog" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(FileFormatError, match="bad.png"):
        ImageFolder(tmp_path / "mixed", size=5).load()
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(CnnlabError, match="no images"):
        ImageFolder(tmp_path / "empty")


# --- CIFAR -----------------------------------------------------------------------------

def cifar_batch(n, seed, label_keys):
    rng = np.random.default_rng(seed)
    batch = {b"batch_label": b"synthetic", b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)}
    for key, k in label_keys.items():
        batch[key] = [int(v) for v in rng.integers(0, k, n)]
    return batch


def write_tar(path, folder, members):
    with tarfile.open(path, "w:gz") as tar:
        for name, obj in members.items():
            data = obj if isinstance(obj, bytes) else pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def py2_batch_pickle(data: np.ndarray, labels) -> bytes:
    """A protocol-2 pickle laid out as Python 2's cPickle writes CIFAR batches: str keys and
    the array's raw bytes as (SHORT_)BINSTRING, numpy.core.multiarray._reconstruct."""
    def s(b):
        return (b"U" + bytes([len(b)]) + b) if len(b) < 256 else (b"T" + struct.pack("<I", len(b)) + b)
    raw = data.tobytes()
    out = b"\x80\x02}q\x00(" + s(b"data")
    out += b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + s(b"b") + b"\x87R"
    out += b"(K\x01K" + bytes([data.shape[0]]) + b"M\x00\x0c\x86cnumpy\ndtype\n" + s(b"u1") + b"K\x00K\x01\x87R"
    out += b"(K\x03" + s(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89" + s(raw) + b"tb"
    out += s(b"labels") + b"](" + b"".join(b"K" + bytes([v]) for v in labels) + b"eu."
    return out


def test_cifar10_from_archive_and_folder(tmp_path):
    names = [f"class{i}".encode() for i in range(10)]
    members = {f"data_batch_{i}": cifar_batch(2, i, {b"labels": 10}) for i in range(1, 6)}
    members["test_batch"] = cifar_batch(3, 9, {b"labels": 10})
    members["batches.meta"] = {b"label_names": names, b"num_vis": 3072}
    archive = tmp_path / SOURCES["cifar10"]["filename"]
    write_tar(archive, "cifar-10-batches-py", members)
    train = load_cifar10(archive, "train")
    assert train.images.shape == (10, 32, 32, 3) and train.classes[3] == "class3"
    first = members["data_batch_1"][b"data"][0]
    assert np.array_equal(train.images[0, :, :, 0].ravel(), first[:1024])        # red plane first
    assert np.array_equal(train.images[0, 0, 1], first[[1, 1025, 2049]])
    assert np.array_equal(train.labels[2:4], members["data_batch_2"][b"labels"])
    test = load_cifar10(archive, "test")
    assert len(test) == 3 and test.name == "cifar10/test"
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "x", filter="data")
    for where in (tmp_path / "x", tmp_path / "x" / "cifar-10-batches-py"):
        assert np.array_equal(load_cifar10(where, "train").images, train.images)
    assert np.array_equal(load_dataset(str(archive), "test").labels, test.labels)
    # the folder `cnnlab data fetch cifar10 --dir D` leaves: D holding the archive
    assert np.array_equal(load_dataset(str(tmp_path), "test").labels, test.labels)


def test_cifar_reads_python2_pickles(tmp_path):
    data = np.random.default_rng(5).integers(0, 256, (2, 3072), dtype=np.uint8)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(py2_batch_pickle(data, [7, 200 % 10]))
    meta = b"\x80\x02}q\x00U\x0blabel_names](" + b"".join(b"U\x01" + bytes([48 + i]) for i in range(10)) + b"es."
    (folder / "batches.meta").write_bytes(meta)
    test = load_cifar10(tmp_path, "test")
    assert np.array_equal(test.images.transpose(0, 3, 1, 2).reshape(2, -1), data)
    assert list(test.labels) == [7, 0] and test.classes[:3] == ["0", "1", "2"]


def test_cifar100_fine_and_coarse(tmp_path):
    members = {"train": cifar_batch(4, 1, {b"fine_labels": 100, b"coarse_labels": 20}),
               "test": cifar_batch(2, 2, {b"fine_labels": 100, b"coarse_labels": 20}),
               "meta": {b"fine_label_names": [b"f%d" % i for i in range(100)],
                        b"coarse_label_names": [b"c%d" % i for i in range(20)]}}
    archive = tmp_path / SOURCES["cifar100"]["filename"]
    write_tar(archive, "cifar-100-python", members)
    fine = load_cifar100(archive, "train")
    coarse = load_cifar100(archive, "train", label="coarse")
    assert len(fine.classes) == 100 and len(coarse.classes) == 20
    assert np.array_equal(fine.labels, members["train"][b"fine_labels"])
    assert np.array_equal(coarse.labels, members["train"][b"coarse_labels"])
    assert load_cifar100(archive, "test").images.shape == (2, 32, 32, 3)


class Exploit:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_malicious_pickle_is_refused_and_not_run(tmp_path):
    target = tmp_path / "pwned"
    members = {f"data_batch_{i}": cifar_batch(1, i, {b"labels": 10}) for i in range(1, 6)}
    members["data_batch_1"] = {b"data": Exploit(target), b"labels": [0]}
    members["test_batch"] = cifar_batch(1, 0, {b"labels": 10})
    members["batches.meta"] = {b"label_names": [b"x"] * 10}
    archive = tmp_path / SOURCES["cifar10"]["filename"]
    write_tar(archive, "cifar-10-batches-py", members)
    with pytest.raises(FileFormatError, match="refuses to load global"):
        load_cifar10(archive, "train")
    assert not target.exists()


def test_cifar_damaged_inputs(tmp_path):
    archive = tmp_path / SOURCES["cifar10"]["filename"]
    write_tar(archive, "cifar-10-batches-py", {"test_batch": cifar_batch(1, 0, {b"labels": 10})})
    with pytest.raises(FileFormatError, match="batches.meta"):
        load_cifar10(archive, "test")
    archive.write_bytes(archive.read_bytes()[:40])
    with pytest.raises(FileFormatError, match="damaged|incomplete"):
        load_cifar10(archive, "test")


def test_cifar_download_entries():
    from cnnlab.data.sources import get_source
    for name in ("cifar10", "cifar100"):
        src = get_source(name)
        assert src.url(src.files[0]) == SOURCES[name]["url"]
        assert len(src.files[0].sha256) == 64 and len(SOURCES[name]["md5"]) == 32


# --- commands ----------------------------------------------------------------------------

def parser():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="command")
    data = sub.add_parser("data").add_subparsers(dest="data_command")
    register_data_subcommands(data)
    register(sub)
    return ap


def test_pack_command(tmp_path, capsys):
    write_folder(tmp_path / "imgs", sizes=((6, 8), (9, 9)))
    args = parser().parse_args(["data", "pack", str(tmp_path / "imgs"), "-o",
                                str(tmp_path / "p.cnnpack"), "--size", "4x5", "--color", "gray"])
    assert args.func(args) == 0
    assert PackedDataset(tmp_path / "p.cnnpack", verify=True).images.shape == (4, 4, 5)
    assert "packed 4 images 4x5" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        parser().parse_args(["data", "pack", "x", "-o", "y", "--size", "4y5"])
    for argv, words in ((["-o", str(tmp_path / "p.npz")], r"named \*\.cnnpack"),
                        (["-o", str(tmp_path / "q.cnnpack"), "--color", "gray"], "image folders")):
        source = str(tmp_path / "imgs") if "--color" not in argv else "mnist-5k"
        args = parser().parse_args(["data", "pack", source, *argv])
        with pytest.raises(CnnlabError, match=words):
            args.func(args)


def test_augment_preview(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 20, 3), dtype=np.uint8)).save(tmp_path / "in.png")
    args = parser().parse_args(["augment", str(tmp_path / "in.png"), "--preview",
                                str(tmp_path / "out.png"), "--samples", "2", "--seed", "3"])
    assert args.func(args) == 0
    with Image.open(tmp_path / "out.png") as im:
        assert im.format == "PNG" and im.size[1] > im.size[0]
    for bad, words in ((tmp_path / "out.txt", "*.png"), (tmp_path / "no" / "o.png", "does not exist")):
        args = parser().parse_args(["augment", str(tmp_path / "in.png"), "--preview", str(bad)])
        with pytest.raises(CnnlabError, match=words.replace("*", r"\*")):
            args.func(args)
