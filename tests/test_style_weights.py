"""VGG weights for neural style: every file format, the preprocessing each implies, clear errors
for files that are not VGGs, and `cnnlab weights fetch` against a local HTTP server."""
import argparse
import dataclasses
import functools
import hashlib
import http.server
import threading
from collections import OrderedDict

import numpy as np
import pytest
import torch

from cnnlab.errors import ChecksumError, FileFormatError
from cnnlab.style import weights as W
from cnnlab.style.stylize import build_network


def vgg_state(model="vgg16", dtype=torch.float16, seed=0, layout="torchvision"):
    """A state dict with the keys and shapes of a torchvision (or jcjohnson Caffe) VGG."""
    g = torch.Generator().manual_seed(seed)
    sd = OrderedDict()
    for idx, c, o in W.conv_indices(model):
        sd[f"features.{idx}.weight"] = (torch.randn(o, c, 3, 3, generator=g) * 0.05).to(dtype)
        sd[f"features.{idx}.bias"] = (torch.randn(o, generator=g) * 0.1).to(dtype)
    fcs = (0, 3, 6) if layout == "torchvision" else (1, 4, 6)
    for i in fcs:                       # the classifier is not used; small stand-ins
        sd[f"classifier.{i}.weight"] = torch.zeros(2, 2, dtype=dtype)
        sd[f"classifier.{i}.bias"] = torch.zeros(2, dtype=dtype)
    return sd


@pytest.fixture(scope="module")
def vgg16_pth(tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "vgg16-test.pth"
    sd = vgg_state()
    torch.save(sd, path)
    return path, sd


def test_torchvision_pth_loads_with_torchvision_preprocessing(vgg16_pth):
    path, sd = vgg16_pth
    state, model, prep = W.load_vgg_weights(path)
    assert model == "vgg16" and prep is W.TORCHVISION
    assert set(state) == {k for k in sd if k.startswith("features.")}
    np.testing.assert_array_equal(state["features.28.weight"], sd["features.28.weight"].float().numpy())
    assert state["features.0.weight"].dtype == np.float32
    net, prep2, description = build_network(None, path, last="relu3_1")
    assert prep2 is W.TORCHVISION and "VGG-16" in description
    np.testing.assert_array_equal(net.features[10].weight.data, state["features.10.weight"])
    assert len(net.features) == 12                          # truncated at relu3_1


def test_wrong_model_truncated_and_foreign_files(vgg16_pth, tmp_path):
    path, sd = vgg16_pth
    with pytest.raises(FileFormatError, match="is VGG-16, not VGG-19; use --model vgg16"):
        W.load_vgg_weights(path, "vgg19")
    cut = tmp_path / "cut.pth"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(FileFormatError):
        W.load_vgg_weights(cut)
    other = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(2, 3, 3, 3), "bn1.running_mean": torch.zeros(2),
                "fc.bias": torch.zeros(2)}, other)                 # a ResNet: not "batch-norm VGG"
    with pytest.raises(FileFormatError, match="not a VGG state dict.*conv1.weight"):
        W.load_vgg_weights(other)
    bad = dict(sd)
    bad["features.0.weight"] = torch.zeros(64, 3, 5, 5)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(FileFormatError, match=r"features.0.weight has shape \(64, 3, 5, 5\)"):
        W.load_vgg_weights(tmp_path / "bad.pth")
    bn = {"features.0.weight": torch.zeros(64, 3, 3, 3), "features.1.running_mean": torch.zeros(64)}
    torch.save(bn, tmp_path / "bn.pth")
    with pytest.raises(FileFormatError, match="batch-norm"):
        W.load_vgg_weights(tmp_path / "bn.pth")
    with pytest.raises(FileFormatError, match="does not exist.*weights fetch"):
        W.load_vgg_weights(tmp_path / "missing.pth")
    (tmp_path / "text.pth").write_text("hello")
    with pytest.raises(FileFormatError):
        W.load_vgg_weights(tmp_path / "text.pth")


def test_caffe_conversion_layout_means_caffe_preprocessing(tmp_path):
    sd = vgg_state("vgg19", layout="caffe")
    path = tmp_path / "converted.pth"
    torch.save(sd, path)
    state, model, prep = W.load_vgg_weights(path)
    assert model == "vgg19" and prep is W.CAFFE
    assert W.load_vgg_weights(path, preprocessing="torchvision")[2] is W.TORCHVISION


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_arrays_round_trip_keeps_preprocessing(vgg16_pth, tmp_path, suffix):
    state, _, _ = W.load_vgg_weights(vgg16_pth[0])
    path = tmp_path / f"vgg16{suffix}"
    W.save_vgg_weights(path, state, W.CAFFE)
    state2, model, prep = W.load_vgg_weights(path)
    assert model == "vgg16" and prep == W.CAFFE
    for k in state:
        np.testing.assert_array_equal(state[k], state2[k])


def test_matconvnet_mat(tmp_path):
    import scipy.io

    rng = np.random.default_rng(0)
    layers, torch_layout = [], {}
    names = iter(["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
                  "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3"])
    for idx, c, o in W.conv_indices("vgg16"):
        filters = rng.standard_normal((3, 3, c, o), dtype=np.float32)
        biases = rng.standard_normal((1, o), dtype=np.float32)
        weights = np.empty((1, 2), dtype=object)
        weights[0, 0], weights[0, 1] = filters, biases
        layers.append({"name": next(names), "type": "conv", "weights": weights,
                       "stride": np.array([1.0, 1.0]), "pad": np.array([1.0, 1.0, 1.0, 1.0])})
        layers.append({"name": "relu", "type": "relu"})
        torch_layout[idx] = filters.transpose(3, 2, 0, 1)
    cell = np.empty((1, len(layers)), dtype=object)
    for i, layer in enumerate(layers):
        cell[0, i] = layer
    mean = np.array([123.68, 116.779, 103.939])
    path = tmp_path / "imagenet-vgg-verydeep-16.mat"
    scipy.io.savemat(path, {"layers": cell, "meta": {"normalization": {"averageImage": mean.reshape(3, 1)}}})
    state, model, prep = W.load_vgg_weights(path)
    assert model == "vgg16" and prep.name == "matconvnet" and not prep.bgr and prep.scale == 255
    np.testing.assert_allclose(prep.mean, mean)
    np.testing.assert_array_equal(state["features.10.weight"], torch_layout[10])


def test_no_weights_means_random_with_a_notice(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path))
    net, prep, description = build_network("vgg16", None, last="relu1_2", seed=3)
    assert prep is W.RANDOM and description.startswith("random VGG-16")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "`cnnlab weights fetch vgg16`" in err
    again, _, _ = build_network("vgg16", "random", last="relu1_2", seed=3, quiet=True)
    np.testing.assert_array_equal(net.features[2].weight.data, again.features[2].weight.data)


def test_a_cached_default_file_of_the_wrong_size_is_an_error(tmp_path, monkeypatch):
    """A cut-short or foreign file under the published name is refused, not used."""
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path))
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "vgg19-dcbb9e9d.pth").write_bytes(b"too short")
    with pytest.raises(FileFormatError, match="9 bytes, but vgg19-dcbb9e9d.pth is 574,673,361"):
        W.find_weights("vgg19")


# ----------------------------------------------------------------------------- fetch
@pytest.fixture
def server(tmp_path):
    root = tmp_path / "served"
    (root / "weights").mkdir(parents=True)
    handler = functools.partial(_QuietHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root / "weights", f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_fetch_checks_full_sha256_and_prefix(server, tmp_path, monkeypatch, capsys):
    folder, url = server
    data = b"not really a VGG" * 1000
    digest = hashlib.sha256(data).hexdigest()
    monkeypatch.setenv("CNNLAB_MIRROR", url)
    full = dataclasses.replace(W.SOURCES["vgg19"], filename="full.pth", sha256=digest)
    prefixed = dataclasses.replace(W.SOURCES["vgg19-caffe"], filename="pre.pth", sha256_prefix=digest[:8])
    wrong = dataclasses.replace(full, filename="wrong.pth", sha256="0" * 64)
    monkeypatch.setitem(W.SOURCES, "full", full)
    monkeypatch.setitem(W.SOURCES, "pre", prefixed)
    monkeypatch.setitem(W.SOURCES, "wrong", wrong)
    for name in ("full.pth", "pre.pth", "wrong.pth"):
        (folder / name).write_bytes(data)
    dest = tmp_path / "cache"
    assert W.fetch_weights("full", dest, progress=False).read_bytes() == data
    assert W.fetch_weights("pre", dest, progress=False).read_bytes() == data
    assert digest in capsys.readouterr().err              # the full digest is shown for the record
    with pytest.raises(ChecksumError):
        W.fetch_weights("wrong", dest, progress=False)
    assert not (dest / "wrong.pth").exists() and not list(dest.glob(".*part"))
    bad_prefix = dataclasses.replace(prefixed, filename="full.pth", sha256_prefix="ffffffff")
    monkeypatch.setitem(W.SOURCES, "pre", bad_prefix)
    (dest / "full.pth").unlink()
    with pytest.raises(ChecksumError, match="does not start with ffffffff"):
        W.fetch_weights("pre", dest, progress=False)
    assert not (dest / "full.pth").exists() and not list(dest.glob(".*tmp"))
    with pytest.raises(ChecksumError):               # folders made for a failed fetch go again
        W.fetch_weights("wrong", tmp_path / "new" / "deeper", progress=False)
    assert not (tmp_path / "new").exists()


def test_cli_weights_fetch(server, tmp_path, monkeypatch, capsys):
    from cnnlab.style.commands import register

    folder, url = server
    data = b"\x00" * 5000
    monkeypatch.setenv("CNNLAB_MIRROR", url)
    monkeypatch.setitem(W.SOURCES, "vgg16", dataclasses.replace(
        W.SOURCES["vgg16"], sha256=hashlib.sha256(data).hexdigest()))
    (folder / W.SOURCES["vgg16"].filename).write_bytes(data)
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["weights", "fetch", "vgg16", "--dir", str(tmp_path), "--quiet"])
    assert args.func(args) == 0
    assert (tmp_path / "vgg16-397923af.pth").read_bytes() == data
    assert "sha256 verified" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        parser.parse_args(["weights", "fetch", "alexnet"])


def test_published_checksums_match_file_names():
    for source in W.SOURCES.values():
        assert source.filename.split("-")[-1].split(".")[0] == source.sha256_prefix
        if source.sha256:
            assert len(source.sha256) == 64 and source.sha256.startswith(source.sha256_prefix)
