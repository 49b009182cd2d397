"""The model zoo: torchvision state_dicts in and out, model files with metadata, shipped entries."""
import os

import numpy as np
import pytest
import torch

from cnnlab import nn
from cnnlab.errors import CnnlabError, FileFormatError
from cnnlab.models import get_model
from cnnlab.zoo import (ModelInfo, detect_architecture, entry_names, entry_path, export_state_dict,
                        from_torchvision, import_state_dict, list_entries, load, load_model,
                        load_torchvision, load_weights, read_info, save_model)
from harness import rel_error
from torch_models import TorchVisionResNet, TorchVisionVGG, randomize_bn_stats


def _numpy_state(t):
    return {k: v.detach().numpy().copy() for k, v in t.state_dict().items()}


def _assert_identical(a: dict, b: dict):
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert np.array_equal(a[k], b[k]), k


def _outputs_match(model, tmodel, x):
    model.eval()
    tmodel.eval()
    with torch.no_grad():
        ref = tmodel(torch.from_numpy(x)).numpy()
    out = model.forward(x)
    err = rel_error(out, ref)
    assert err <= 1e-5, f"cnnlab vs torch output rel. error {err:.2e}"
    return err


def test_resnet18_pth_round_trip_and_parity(tmp_path):
    torch.manual_seed(0)
    tmodel = randomize_bn_stats(TorchVisionResNet("resnet18"), seed=1).eval()
    path = tmp_path / "resnet18.pth"
    torch.save(tmodel.state_dict(), path)
    model = load_torchvision(path)                       # no torch involved on this side
    assert model.arch == "resnet18"
    _assert_identical(_numpy_state(tmodel), dict(export_state_dict(model)))
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    _outputs_match(model, tmodel, x)


def test_vgg16_state_dict_round_trip_and_parity():
    # all 138M weights of torchvision's VGG-16, full 224x224 input, batch 1 (~6 s on 2 cores)
    torch.manual_seed(0)
    tmodel = TorchVisionVGG("vgg16").eval()
    state = tmodel.state_dict()
    model = from_torchvision(state)
    assert model.arch == "vgg16"
    exported = export_state_dict(model)
    assert list(exported) == list(state)
    for k, v in state.items():
        assert np.array_equal(exported[k], v.numpy()), k
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    _outputs_match(model, tmodel, x)


def test_vgg_bn_round_trip_and_parity_at_an_odd_size():
    torch.manual_seed(0)
    tmodel = randomize_bn_stats(TorchVisionVGG("vgg11", batch_norm=True, num_classes=7)).eval()
    model = from_torchvision(tmodel.state_dict())
    assert model.arch == "vgg11_bn"
    _assert_identical(_numpy_state(tmodel), dict(export_state_dict(model)))
    # 64x48 -> pool5 2x1 -> torchvision's uneven adaptive windows up to 7x7
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 48)).astype(np.float32)
    _outputs_match(model, tmodel, x)


def test_cnnlab_weights_load_into_torchvision_layout():
    model = get_model("resnet18", num_classes=5, seed=3)
    for m in model.modules():          # non-trivial statistics, as after training
        if isinstance(m, nn.BatchNorm2d):
            rng = np.random.default_rng(m.num_features)
            m.register_buffer("running_mean", rng.normal(0, 0.1, m.num_features).astype(np.float32))
            m.register_buffer("running_var", rng.uniform(0.5, 1.5, m.num_features).astype(np.float32))
    tmodel = TorchVisionResNet("resnet18", num_classes=5)
    tmodel.load_state_dict({k: torch.from_numpy(v) for k, v in export_state_dict(model).items()},
                           strict=True)
    x = np.random.default_rng(1).standard_normal((2, 3, 64, 64)).astype(np.float32)
    _outputs_match(model, tmodel, x)


def test_detect_architecture_from_keys_and_shapes():
    for name, bn in [("vgg11", False), ("vgg13", True), ("vgg19", False), ("vgg16", True)]:
        with torch.device("meta"):
            sd = TorchVisionVGG(name, bn, num_classes=17).state_dict()
        assert detect_architecture(sd) == (name + ("_bn" if bn else ""), 17)
    for name in ("resnet18", "resnet34", "resnet50"):
        with torch.device("meta"):
            sd = TorchVisionResNet(name, num_classes=3).state_dict()
        assert detect_architecture(sd) == (name, 3)
    with pytest.raises(CnnlabError, match="cannot tell the architecture"):
        detect_architecture({"weight": np.zeros(3)})


def test_import_with_a_named_architecture_reads_the_class_count():
    """--arch lenet on a 7-class LeNet state_dict: 7 classes from its last Linear (it was
    1000, ImageNet's, whatever the file held)."""
    from cnnlab.models.registry import get_model
    from cnnlab.zoo import export_state_dict
    from cnnlab.zoo.torchvision import from_torchvision
    sd = dict(export_state_dict(get_model("lenet", num_classes=7)))
    model = from_torchvision(sd, arch="lenet")
    assert list(model)[-1].out_features == 7
    with pytest.raises(CnnlabError):
        from_torchvision(sd, arch="lenet", num_classes=5)          # the file holds 7


def test_mismatches_are_listed_in_one_error():
    model = get_model("resnet18_small", num_classes=10)
    sd = dict(export_state_dict(model))
    del sd["layer1.0.conv1.weight"], sd["fc.bias"]
    sd["layer9.weight"] = np.zeros(3, np.float32)
    sd["fc.weight"] = np.zeros((4, 512), np.float32)
    with pytest.raises(CnnlabError) as e:
        import_state_dict(model, sd)
    msg = str(e.value)
    for part in ("missing keys: layer1.0.conv1.weight, fc.bias", "unexpected keys: layer9.weight",
                 "fc.weight: expected (10, 512), got (4, 512)", "strict=False"):
        assert part in msg
    before = model.get_submodule("conv1").weight.data.copy()
    sd["conv1.weight"] = before + 1
    report = import_state_dict(model, sd, strict=False)
    assert report["missing"] == ["layer1.0.conv1.weight", "fc.bias"]
    assert report["unexpected"] == ["layer9.weight"]
    assert len(report["mismatched"]) == 1
    np.testing.assert_array_equal(model.get_submodule("conv1").weight.data, before + 1)


def test_model_file_keeps_metadata_and_weights(tmp_path):
    model = get_model("lenet", seed=4)
    info = ModelInfo(arch="lenet", num_classes=10, in_channels=1, input_shape=(1, 28, 28),
                     preprocessing={"scale": 1 / 255, "mean": [0.13], "std": [0.31]},
                     classes=[str(i) for i in range(10)], dataset="mnist-5k/train",
                     command="cnnlab train --model lenet", accuracy={"test": 0.97, "split": "x"})
    for suffix in (".safetensors", ".npz"):
        path = tmp_path / f"m{suffix}"
        save_model(path, model, info)
        loaded, got = load_model(path)
        assert got == info
        _assert_identical(dict(model.state_dict()), dict(loaded.state_dict()))
        assert not loaded.training
        assert read_info(path).command == "cnnlab train --model lenet"
    x = np.full((2, 28, 28), 255, np.uint8)
    np.testing.assert_allclose(info.normalize(x), (1 - 0.13) / 0.31, rtol=1e-6)


def test_model_file_errors(tmp_path):
    from cnnlab.io import save_arrays

    plain = tmp_path / "plain.npz"
    save_arrays(plain, {"w": np.zeros(2)})
    with pytest.raises(FileFormatError, match="not a cnnlab model file"):
        load_model(plain)
    wrong = tmp_path / "wrong.safetensors"
    info = ModelInfo(arch="lenet", num_classes=5)
    save_model(wrong, get_model("lenet", num_classes=10), info)
    with pytest.raises(CnnlabError, match=r"wrong.safetensors: .*expected \(5, 84\), got \(10, 84\)"):
        load_model(wrong)
    model = get_model("lenet", num_classes=10)
    assert load_weights(model, wrong)["missing"] == []


def test_shipped_entries_are_small_documented_and_loadable():
    names = entry_names()
    assert names, "no zoo entries shipped"
    for info in list_entries():
        path = entry_path(info.name)
        assert os.path.getsize(path) < 5 * 2 ** 20
        assert info.command.startswith("cnnlab ") and info.accuracy["test"] > 0.5
        assert info.classes and len(info.classes) == info.num_classes
        model, _ = load(info.name)
        out = model.forward(np.zeros((1, *info.input_shape), np.float32))
        assert out.shape == (1, info.num_classes)


def test_mnist5k_entry_reproduces_its_recorded_accuracy():
    from cnnlab.data import load_dataset

    test = load_dataset("mnist-5k", "test")
    for info in list_entries():
        if info.accuracy.get("split") != "mnist-5k/test":
            continue
        model, _ = load(info.name)
        keep = np.isin(test.labels, [int(c) for c in info.classes]) if info.num_classes < 10 else \
            np.ones(len(test), bool)
        x = info.normalize(test.images[keep])
        y = np.searchsorted([int(c) for c in info.classes], test.labels[keep])
        acc = float((model.forward(x).argmax(1) == y).mean())
        assert acc == pytest.approx(info.accuracy["test"], abs=1e-9), info.name
