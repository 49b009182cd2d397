"""Downloads against a local HTTP server on 127.0.0.1: fetch(), and `cnnlab data fetch` end to end."""
import argparse
import functools
import hashlib
import os
import http.server
import socket
import threading
from pathlib import Path

import numpy as np
import pytest

from cnnlab.data import DownloadableDataset, RemoteFile, load_dataset, write_idx
from cnnlab.data import sources
from cnnlab.data.commands import register
from cnnlab.download import cache_dir, fetch, sha256_file
from cnnlab.errors import ChecksumError, CnnlabError

IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


class Handler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; records request paths; /short/* announces more bytes than it sends."""

    def __init__(self, *args, log, **kwargs):
        self.log = log
        super().__init__(*args, **kwargs)

    def do_GET(self):
        self.log.append(self.path)
        if self.path.startswith("/short/"):
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"x" * 10)
            return
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """(base_url, served_folder, request_log) for a server on 127.0.0.1 serving served_folder."""
    root = tmp_path / "served"
    root.mkdir()
    log = []
    handler = functools.partial(Handler, directory=str(root), log=log)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root, log
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CNNLAB_MIRROR", raising=False)


def make_tiny_mnist(folder: Path) -> dict[str, str]:
    """Write 20 train and 10 test images in the MNIST layout (.gz); return {file: sha256}."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 20), ("t10k", 10)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz",
                  rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", (np.arange(n) % 10).astype(np.uint8))
    return {name: sha256_file(folder / name) for name in IDX_FILES}


def no_leftovers(folder: Path) -> bool:
    return not folder.exists() or not [p for p in folder.iterdir()
                                       if p.name.endswith((".part", ".tmp"))]


# --- fetch() --------------------------------------------------------------------------

def test_fetch_downloads_and_verifies(server, tmp_path):
    url, root, log = server
    (root / "blob.bin").write_bytes(b"cnnlab" * 10_000)
    digest = hashlib.sha256(b"cnnlab" * 10_000).hexdigest()
    dest = tmp_path / "out" / "sub" / "blob.bin"
    assert fetch(f"{url}/blob.bin", dest, digest, progress=True) == dest
    assert dest.read_bytes() == b"cnnlab" * 10_000
    assert no_leftovers(dest.parent) and log == ["/blob.bin"]
    umask = os.umask(0)
    os.umask(umask)
    assert dest.stat().st_mode & 0o777 == 0o666 & ~umask      # as a plain open() would


def test_fetch_skips_a_verified_file_and_replaces_a_wrong_one(server, tmp_path):
    url, root, log = server
    (root / "a.bin").write_bytes(b"right")
    digest = hashlib.sha256(b"right").hexdigest()
    dest = tmp_path / "a.bin"
    dest.write_bytes(b"right")
    fetch(f"{url}/a.bin", dest, digest, progress=False)
    assert log == []
    dest.write_bytes(b"stale")
    fetch(f"{url}/a.bin", dest, digest.upper(), progress=False)
    assert dest.read_bytes() == b"right" and log == ["/a.bin"]


def test_fetch_wrong_hash_raises_and_leaves_nothing(server, tmp_path):
    url, root, _ = server
    (root / "tampered.gz").write_bytes(b"not what was published")
    expected = "0" * 64
    actual = hashlib.sha256(b"not what was published").hexdigest()
    dest = tmp_path / "dl" / "tampered.gz"
    with pytest.raises(ChecksumError) as info:
        fetch(f"{url}/tampered.gz", dest, expected, progress=False)
    message = str(info.value)
    assert "tampered.gz" in message and expected in message and actual in message
    assert not dest.exists() and list(dest.parent.iterdir()) == []


def test_fetch_http_error_names_url_and_manual_path(server, tmp_path):
    url, _, _ = server
    dest = tmp_path / "missing.gz"
    with pytest.raises(CnnlabError, match=rf"{url}/missing.gz: HTTP 404.*place it at {dest}"):
        fetch(f"{url}/missing.gz", dest, "1" * 64, progress=False)
    assert not dest.exists() and no_leftovers(tmp_path)


def test_fetch_unreachable_server(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dest = tmp_path / "x.gz"
    with pytest.raises(CnnlabError, match=rf"could not download http://127.0.0.1:{port}/x.gz: .*{dest}"):
        fetch(f"http://127.0.0.1:{port}/x.gz", dest, "2" * 64, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_fetch_transfer_cut_short(server, tmp_path):
    url, _, _ = server
    with pytest.raises(CnnlabError, match=r"short/f.bin ended after 10 of 1000 bytes"):
        fetch(f"{url}/short/f.bin", tmp_path / "dl" / "f.bin", "3" * 64, progress=False)
    assert list((tmp_path / "dl").iterdir()) == []


def test_fetch_rejects_a_malformed_hash(tmp_path):
    with pytest.raises(CnnlabError, match="sha256 must be 64 hex digits"):
        fetch("http://127.0.0.1:1/x", tmp_path / "x", "abc")


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("CNNLAB_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "cnnlab"


# --- the sources table ----------------------------------------------------------------

@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_sources_table_is_complete(name):
    source = sources.get_source(name)
    assert [f.filename for f in source.files] == list(IDX_FILES)
    for f in source.files:
        assert len(f.sha256) == 64 and int(f.sha256, 16) >= 0 and f.size > 0
    assert source.url(source.files[0]).startswith(("https://", "http://"))


def test_mirror_replaces_the_publisher_url(monkeypatch):
    source = sources.get_source("mnist")
    monkeypatch.setenv("CNNLAB_MIRROR", "http://127.0.0.1:9/mirror/")
    assert source.url(source.files[0]) == "http://127.0.0.1:9/mirror/mnist/train-images-idx3-ubyte.gz"


# --- cnnlab data fetch, end to end ----------------------------------------------------

def run_data_command(*argv):
    parser = argparse.ArgumentParser(prog="cnnlab")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["data", *argv])
    return args.func(args)


def tiny_source(name: str, hashes: dict[str, str], base_url: str) -> DownloadableDataset:
    return DownloadableDataset(name, base_url, tuple(RemoteFile(f, hashes[f], 1) for f in IDX_FILES),
                               "tiny test copy", "test")


def test_data_fetch_into_cache_then_load_by_name(server, monkeypatch, capsys):
    url, root, log = server
    hashes = make_tiny_mnist(root / "mnist")
    # Same name and files as the real entry, with the test files' hashes; the
    # publisher URL is unreachable, so the download must come from the mirror.
    monkeypatch.setitem(sources.SOURCES, "mnist", tiny_source("mnist", hashes, "http://invalid.test/"))
    monkeypatch.setenv("CNNLAB_MIRROR", url)
    assert run_data_command("fetch", "mnist") == 0
    assert sorted(log) == sorted(f"/mnist/{f}" for f in IDX_FILES)
    assert "sha256 verified" in capsys.readouterr().out
    folder = cache_dir() / "datasets" / "mnist"
    assert sorted(p.name for p in folder.iterdir()) == sorted(IDX_FILES)
    train = load_dataset("mnist", "train")
    assert train.images.shape == (20, 28, 28) and train.source == str(folder)
    assert train.classes == [str(d) for d in range(10)]
    assert run_data_command("fetch", "mnist", "--quiet") == 0  # second time: nothing downloaded
    assert len(log) == 4


def test_data_fetch_into_a_chosen_folder(server, monkeypatch, tmp_path, capsys):
    url, root, _ = server
    hashes = make_tiny_mnist(root / "tiny")
    monkeypatch.setitem(sources.SOURCES, "tiny", tiny_source("tiny", hashes, f"{url}/tiny/"))
    target = tmp_path / "elsewhere"
    assert run_data_command("fetch", "tiny", "--dir", str(target), "--quiet") == 0
    assert f"giving {target} as the data set path" in capsys.readouterr().out
    assert len(load_dataset(str(target), "test")) == 10


def test_data_fetch_from_a_mirror_with_other_bytes_fails_cleanly(server, monkeypatch):
    url, root, _ = server
    make_tiny_mnist(root / "mnist")  # not the published MNIST: hashes differ
    monkeypatch.setenv("CNNLAB_MIRROR", url)
    published = sources.get_source("mnist").files[0].sha256
    with pytest.raises(ChecksumError, match=rf"train-images-idx3-ubyte.gz .*expected {published}"):
        run_data_command("fetch", "mnist", "--quiet")
    folder = cache_dir() / "datasets" / "mnist"
    assert not folder.exists() or list(folder.iterdir()) == []


def test_data_fetch_unknown_name_lists_choices():
    with pytest.raises(CnnlabError, match=r"no downloadable data set named 'mnits'; "
                                          r"choose one of: .*fashion-mnist, mnist"):
        run_data_command("fetch", "mnits")
