"""Data sets: IDX and Kaggle CSV readers, ArrayDataset, the registry, mnist-5k, `cnnlab data info`."""
import argparse
import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest

from cnnlab.data import (
    FASHION_CLASSES,
    ArrayDataset,
    find_idx_split,
    load_dataset,
    read_idx,
    read_kaggle_csv,
    register_dataset,
    register_path_handler,
    stratified_split,
    write_idx,
)
from cnnlab.data import registry
from cnnlab.data.commands import register
from cnnlab.errors import CnnlabError, FileFormatError

FASHION_SYSTEM = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def empty_cache(tmp_path, monkeypatch):
    """Every test sees an empty download cache, whatever the developer has fetched."""
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))


def write_mnist_folder(folder: Path, n_train=20, n_test=10, gz=True, seed=0):
    """A small folder in the MNIST layout: uint8 images (N, 28, 28), labels cycling 0..9."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", labels)
        arrays[prefix] = (images, labels)
    return arrays


# --- IDX ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["x-idx3-ubyte", "x-idx3-ubyte.gz"])
@pytest.mark.parametrize("dtype,shape", [(np.uint8, (5, 28, 28)), (np.int8, (7,)),
                                         (np.int16, (2, 3)), (np.int32, (3, 2, 2)),
                                         (np.float32, (4, 3)), (np.float64, (2, 2, 2, 2))])
def test_idx_round_trip(tmp_path, name, dtype, shape):
    rng = np.random.default_rng(1)
    array = (rng.standard_normal(shape) * 100).astype(dtype)
    path = write_idx(tmp_path / name, array)
    assert path.read_bytes()[:2] == (b"\x1f\x8b" if name.endswith(".gz") else b"\x00\x00")
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.dtype.isnative
    np.testing.assert_array_equal(back, array)
    assert back.flags.writeable


def test_idx_header_is_the_published_layout(tmp_path):
    path = write_idx(tmp_path / "l-idx1-ubyte", np.array([3, 1, 4], np.uint8))
    assert path.read_bytes() == bytes([0, 0, 0x08, 1, 0, 0, 0, 3, 3, 1, 4])


def test_idx_gzip_is_recognised_by_content_not_name(tmp_path):
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    raw = write_idx(tmp_path / "a-idx2-ubyte", array).read_bytes()
    odd = tmp_path / "compressed-without-suffix"
    odd.write_bytes(gzip.compress(raw))
    np.testing.assert_array_equal(read_idx(odd), array)


def test_idx_truncated_raw_names_file_and_offset(tmp_path):
    path = write_idx(tmp_path / "t-idx3-ubyte", np.zeros((3, 4, 4), np.uint8))
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(FileFormatError, match=r"t-idx3-ubyte.*byte 40.*needs 64 bytes.*truncated"):
        read_idx(path)


def test_idx_truncated_header(tmp_path):
    path = tmp_path / "h-idx3-ubyte"
    path.write_bytes(bytes([0, 0, 8, 3, 0, 0, 0, 1]))
    with pytest.raises(FileFormatError, match=r"h-idx3-ubyte: file ends at byte 8.*16 bytes"):
        read_idx(path)


def test_idx_truncated_gzip_names_file_and_offset(tmp_path):
    array = np.random.default_rng(0).integers(0, 256, (50, 28, 28), dtype=np.uint8)
    path = write_idx(tmp_path / "big-idx3-ubyte.gz", array)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(FileFormatError, match=rf"big-idx3-ubyte.gz.*byte {len(data) // 2}.*truncated"):
        read_idx(path)


def test_idx_corrupt_gzip_names_file_and_offset(tmp_path):
    array = np.random.default_rng(0).integers(0, 256, (50, 28, 28), dtype=np.uint8)
    path = write_idx(tmp_path / "bad-idx3-ubyte.gz", array)
    data = bytearray(path.read_bytes())
    data[100:200] = bytes(100)
    path.write_bytes(bytes(data))
    with pytest.raises(FileFormatError, match=r"bad-idx3-ubyte.gz.*(corrupt|truncated).*byte"):
        read_idx(path)


def test_idx_wrong_magic_and_dtype_code(tmp_path):
    path = tmp_path / "notidx"
    path.write_bytes(b"PK\x03\x04" + bytes(20))
    with pytest.raises(FileFormatError, match=r"notidx: bytes 0-1 are 504b.*not an IDX file"):
        read_idx(path)
    path.write_bytes(bytes([0, 0, 0x07, 1, 0, 0, 0, 1, 5]))
    with pytest.raises(FileFormatError, match=r"byte 2 holds element type 0x07"):
        read_idx(path)


def test_idx_trailing_bytes_are_an_error(tmp_path):
    path = write_idx(tmp_path / "x-idx1-ubyte", np.arange(4, dtype=np.uint8))
    path.write_bytes(path.read_bytes() + b"\x00\x00")
    with pytest.raises(FileFormatError, match=r"2 unexpected bytes from byte 12"):
        read_idx(path)


def test_idx_missing_file_and_unsupported_dtype(tmp_path):
    with pytest.raises(FileFormatError, match="no such file"):
        read_idx(tmp_path / "absent-idx1-ubyte")
    with pytest.raises(FileFormatError, match="cannot store int64"):
        write_idx(tmp_path / "x-idx1-ubyte", np.arange(3, dtype=np.int64))
    assert not list(tmp_path.iterdir())


def test_find_idx_split_accepts_common_names(tmp_path):
    write_idx(tmp_path / "train-images.idx3-ubyte", np.zeros((1, 2, 2), np.uint8))
    write_idx(tmp_path / "train-labels.idx1-ubyte", np.zeros(1, np.uint8))
    images, labels = find_idx_split(tmp_path, "train")
    assert images.name == "train-images.idx3-ubyte" and labels.name == "train-labels.idx1-ubyte"
    assert find_idx_split(tmp_path, "test") is None


# --- Kaggle CSV -----------------------------------------------------------------------

def write_kaggle(path: Path, n=30, labelled=True, seed=0):
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (n, 784))
    labels = np.arange(n) % 10
    header = ",".join(f"pixel{i}" for i in range(784))
    rows = [",".join(map(str, p)) for p in pixels]
    if labelled:
        header = "label," + header
        rows = [f"{y}," + r for y, r in zip(labels, rows)]
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return pixels.reshape(n, 28, 28).astype(np.uint8), labels


def test_kaggle_train_and_test_csv(tmp_path):
    images, labels = write_kaggle(tmp_path / "train.csv")
    got_images, got_labels = read_kaggle_csv(tmp_path / "train.csv")
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)
    assert got_images.dtype == np.uint8 and got_labels.dtype == np.int64
    images, _ = write_kaggle(tmp_path / "test.csv", n=5, labelled=False)
    got_images, got_labels = read_kaggle_csv(tmp_path / "test.csv")
    assert got_labels is None
    np.testing.assert_array_equal(got_images, images)
    bom = tmp_path / "excel.csv"                    # Excel's "CSV UTF-8" starts with a BOM
    bom.write_bytes(b"\xef\xbb\xbf" + (tmp_path / "train.csv").read_bytes())
    np.testing.assert_array_equal(read_kaggle_csv(bom)[1], labels)


def test_kaggle_errors(tmp_path):
    path = tmp_path / "other.csv"
    path.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(FileFormatError, match=r"other.csv: header must be 'label,pixel0"):
        read_kaggle_csv(path)
    write_kaggle(path, n=3)
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], lines[1], lines[2] + ",7", lines[3]]) + "\n")
    with pytest.raises(FileFormatError, match=r"other.csv: line 3 has 786 values, the header names 785"):
        read_kaggle_csv(path)
    lines[2] = lines[2].replace(",", ",x", 1)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(FileFormatError, match=r"other.csv: line 3, column 2 holds 'x\d+', expected an integer"):
        read_kaggle_csv(path)
    write_kaggle(path, n=3)
    lines = path.read_text().splitlines()
    lines[2] = lines[2].rsplit(",", 1)[0] + ",256"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(FileFormatError, match=r"line 3, column 785 holds pixel 256, outside 0..255"):
        read_kaggle_csv(path)


def test_kaggle_csv_as_dataset_is_a_fixed_stratified_holdout(tmp_path):
    write_kaggle(tmp_path / "train.csv", n=100)
    train = load_dataset(str(tmp_path / "train.csv"), "train")
    test = load_dataset(str(tmp_path), "test")  # the folder holding train.csv works too
    assert (len(train), len(test)) == (80, 20)
    assert list(test.class_counts()) == [2] * 10 and train.classes == [str(d) for d in range(10)]
    again = load_dataset(str(tmp_path / "train.csv"), "test")
    np.testing.assert_array_equal(again.images, test.images)
    write_kaggle(tmp_path / "unlabelled.csv", n=4, labelled=False)
    with pytest.raises(FileFormatError, match="has no label column"):
        load_dataset(str(tmp_path / "unlabelled.csv"), "train")


# --- ArrayDataset and the split -------------------------------------------------------

def test_array_dataset_as_float_and_channel_stats_gray():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 5, 4), dtype=np.uint8)
    ds = ArrayDataset(images, np.arange(6) % 3, ["a", "b", "c"], "toy")
    assert len(ds) == 6 and ds.labels.dtype == np.int64 and ds.channels == 1
    x = ds.as_float()
    assert x.shape == (6, 1, 5, 4) and x.dtype == np.float32
    np.testing.assert_allclose(x[:, 0], images / 255, rtol=1e-6)
    mean, std = ds.channel_stats()
    np.testing.assert_allclose(mean, [(images / 255).mean()], rtol=1e-12)
    np.testing.assert_allclose(std, [(images / 255).std()], rtol=1e-10)
    z = ds.as_float(mean, std)
    assert abs(z.mean()) < 1e-5 and abs(z.std() - 1) < 1e-5


def test_array_dataset_color_channels_and_subset():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (8, 3, 2, 3), dtype=np.uint8)
    ds = ArrayDataset(images, np.arange(8) % 2, ["x", "y"], "rgb")
    x = ds.as_float(mean=[0.5, 0.4, 0.3], std=[0.2, 0.2, 0.5])
    assert x.shape == (8, 3, 3, 2)
    np.testing.assert_allclose(x[:, 2], (images[..., 2] / 255 - 0.3) / 0.5, rtol=1e-5, atol=1e-6)
    mean, std = ds.channel_stats()
    np.testing.assert_allclose(mean, (images / 255).mean(axis=(0, 1, 2)))
    np.testing.assert_allclose(std, (images / 255).std(axis=(0, 1, 2)))
    sub = ds.subset([1, 3])
    assert len(sub) == 2 and sub.classes == ["x", "y"]
    np.testing.assert_array_equal(sub.images, images[[1, 3]])
    with pytest.raises(CnnlabError, match="mean has 2 values but the images have 3 channels"):
        ds.as_float(mean=[0.1, 0.2])


def test_array_dataset_rejects_bad_arrays():
    with pytest.raises(CnnlabError, match="images must be uint8"):
        ArrayDataset(np.zeros((2, 3, 3), np.float32), [0, 1], ["a", "b"], "bad")
    with pytest.raises(CnnlabError, match=r"labels must have shape \(2,\)"):
        ArrayDataset(np.zeros((2, 3, 3), np.uint8), [0], ["a", "b"], "bad")
    with pytest.raises(CnnlabError, match="labels span 0..2 but there are 2 classes"):
        ArrayDataset(np.zeros((2, 3, 3), np.uint8), [0, 2], ["a", "b"], "bad")


def test_stratified_split_is_disjoint_complete_and_stable():
    labels = np.repeat(np.arange(4), [10, 20, 30, 40])
    train, test = stratified_split(labels, 0.2, seed=7)
    assert len(np.intersect1d(train, test)) == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(100))
    assert list(np.bincount(labels[test])) == [2, 4, 6, 8]
    again = stratified_split(labels, 0.2, seed=7)
    np.testing.assert_array_equal(again[1], test)
    assert not np.array_equal(stratified_split(labels, 0.2, seed=8)[1], test)


# --- the registry ---------------------------------------------------------------------

def test_mnist_5k_split_sizes_stratified_and_fixed():
    train, test = load_dataset("mnist-5k", "train"), load_dataset("mnist-5k", "test")
    assert (len(train), len(test)) == (4000, 1000)
    assert train.images.shape == (4000, 28, 28) and train.images.dtype == np.uint8
    assert list(train.class_counts()) == [400] * 10 and list(test.class_counts()) == [100] * 10
    assert train.classes == [str(d) for d in range(10)] and train.name == "mnist-5k/train"
    # disjoint: no test image appears in train
    train_rows = {row.tobytes() for row in train.images}
    assert sum(row.tobytes() in train_rows for row in test.images) == 0
    # fixed on every machine: fingerprints of the exact split
    fingerprint = lambda d: hashlib.sha256(d.images.tobytes() + d.labels.tobytes()).hexdigest()  # noqa: E731
    assert fingerprint(train) == "ee129be465b29b6727a45086768f321a5aaea85a0f215803f4069e539d66a847"
    assert fingerprint(test) == "14d8a4395155b726c93d6e13fb09bde9b52511588f9f043ec45e3f3790028cb7"


def test_bundled_file_matches_its_provenance():
    assert hashlib.sha256(registry.MNIST_5K_FILE.read_bytes()).hexdigest() == registry.MNIST_5K_SHA256
    assert registry.MNIST_5K_SHA256 in (registry.MNIST_5K_FILE.parent / "PROVENANCE.md").read_text()


def test_idx_folder_as_path_spec(tmp_path):
    arrays = write_mnist_folder(tmp_path / "digits", gz=False)
    test = load_dataset(str(tmp_path / "digits"), "test")
    np.testing.assert_array_equal(test.images, arrays["t10k"][0])
    assert test.name == "digits/test" and test.classes == [str(d) for d in range(10)]
    (tmp_path / "digits" / "classes.txt").write_text("\n".join(FASHION_CLASSES) + "\n")
    assert load_dataset(str(tmp_path / "digits"), "train").classes == FASHION_CLASSES


def test_idx_folder_with_mismatched_counts(tmp_path):
    write_mnist_folder(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(3, np.uint8))
    with pytest.raises(FileFormatError, match="holds 20 images but .* holds 3 labels"):
        load_dataset(str(tmp_path), "train")


def test_unknown_name_lists_choices():
    with pytest.raises(CnnlabError, match=r"unknown data set 'mnits'.*mnist-5k, mnist, fashion-mnist"):
        load_dataset("mnits")
    with pytest.raises(CnnlabError, match="split must be one of train, test"):
        load_dataset("mnist-5k", "valid")


def test_unreadable_path_says_what_is_expected(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CnnlabError, match="not a data set cnnlab can read; expected a folder of IDX"):
        load_dataset(str(tmp_path / "notes.txt"))


def test_mnist_not_fetched_says_how_to_get_it():
    with pytest.raises(CnnlabError, match=r"mnist is not on this machine.*cnnlab data fetch mnist"):
        load_dataset("mnist", "train")


@pytest.mark.skipif(not FASHION_SYSTEM.is_dir(), reason="Debian's dataset-fashion-mnist not installed")
def test_fashion_mnist_found_in_usr_share_datasets():
    test = load_dataset("fashion-mnist", "test")
    assert test.images.shape == (10000, 28, 28) and test.source == str(FASHION_SYSTEM)
    assert test.classes == FASHION_CLASSES and test.classes[9] == "Ankle boot"
    assert list(test.class_counts()) == [1000] * 10


def test_registering_a_named_data_set_and_a_path_format(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "NAMED", dict(registry.NAMED))
    monkeypatch.setattr(registry, "PATH_HANDLERS", list(registry.PATH_HANDLERS))
    toy = ArrayDataset(np.zeros((2, 4, 4), np.uint8), [0, 1], ["a", "b"], "toy")
    register_dataset("toy", lambda split: toy.subset([0 if split == "train" else 1]))
    assert len(load_dataset("toy", "test")) == 1
    (tmp_path / "x.toy").write_text("")
    register_path_handler("toy-file", lambda p: p.suffix == ".toy", lambda p, split: toy,
                          description="a .toy file")
    assert load_dataset(str(tmp_path / "x.toy")) is toy
    with pytest.raises(CnnlabError, match="or a .toy file"):
        load_dataset(str(tmp_path / "nope.bin"))


# --- cnnlab data info -----------------------------------------------------------------

def run_data_command(*argv):
    parser = argparse.ArgumentParser(prog="cnnlab")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["data", *argv])
    return args.func(args)


def test_data_info_describes_mnist_5k(capsys):
    assert run_data_command("info", "mnist-5k") == 0
    out = capsys.readouterr().out
    assert "train 4,000, test 1,000" in out and "28x28, 1 channel, uint8" in out
    assert "mnist_5k.npz" in out and "mean:     0.13" in out and "std:      0.30" in out
    assert out.count("  400      100") == 10


def test_data_info_lists_known_data_sets(capsys):
    assert run_data_command("info") == 0
    out = capsys.readouterr().out
    for name in ("mnist-5k", "mnist", "fashion-mnist"):
        assert f"  {name}" in out
    assert "not on this machine: cnnlab data fetch mnist" in out


def test_data_info_on_an_idx_folder(tmp_path, capsys):
    write_mnist_folder(tmp_path / "small")
    assert run_data_command("info", str(tmp_path / "small")) == 0
    out = capsys.readouterr().out
    assert "train 20, test 10" in out and str(tmp_path / "small") in out
