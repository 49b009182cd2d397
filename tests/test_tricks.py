"""``cnnlab experiment augmentation`` and the LeNet regularizer variants it compares."""
import json

import numpy as np
import pytest

from cnnlab import nn
from cnnlab.data.dataset import sample_per_class
from cnnlab.errors import CnnlabError
from cnnlab.models import build_model
from test_cli import run          # (exit code, stdout, stderr) of `cnnlab ARGS`


def test_sample_per_class_draws_n_of_each_class_without_repeats():
    labels = np.repeat(np.arange(4), [5, 7, 6, 9])
    rows = sample_per_class(labels, 3, seed=1)
    assert np.array_equal(np.bincount(labels[rows]), [3, 3, 3, 3])
    assert len(set(rows.tolist())) == 12 and np.all(np.diff(rows) > 0)
    assert np.array_equal(rows, sample_per_class(labels, 3, seed=1))
    assert not np.array_equal(rows, sample_per_class(labels, 3, seed=2))
    with pytest.raises(CnnlabError, match="class 0 has 5 samples"):
        sample_per_class(labels, 6, seed=0)


def test_lenet_variants_share_parameter_names_and_differ_only_in_regularizer():
    names = {n: list(build_model(n).state_dict()) for n in
             ("lenet", "lenet_plain", "lenet_dropout", "lenet_dropconnect")}
    assert all(v == names["lenet"] for v in names.values())
    types = {n: [type(m).__name__ for m in build_model(n).children()] for n in names}
    assert types["lenet"][9] == "Dropout" and types["lenet_plain"][9] == "Identity"
    assert types["lenet_dropconnect"][10] == "DropConnectLinear"
    assert build_model("lenet_dropout")[9].p == 0.5

    x = np.random.default_rng(0).standard_normal((4, 1, 28, 28)).astype(np.float32)
    plain = build_model("lenet_plain")
    assert np.array_equal(plain.train().forward(x), plain.eval().forward(x))   # nothing random
    dc = build_model("lenet_dropconnect")
    assert not np.allclose(dc.train().forward(x), dc.eval().forward(x))


def test_quick_experiment_runs_every_part_and_writes_json(capsys, tmp_path):
    path = tmp_path / "tricks.json"
    code, out, err = run(capsys, "experiment", "augmentation", "--quick", "--json", str(path))
    assert code == 0, err
    results = json.loads(path.read_text())
    assert set(results) == {"digits", "fashion", "dropout"}
    assert list(results["digits"]["arms"]) == ["none", "shift", "affine"]
    assert list(results["dropout"]["arms"]) == ["no dropout", "dropout 0.5", "DropConnect 0.5"]
    for part in results.values():
        assert part["train_images"] == 10 * 5 and part["test_images"] == 100
        for arm in part["arms"].values():
            assert len(arm["acc"]) == len(arm["acc_tta"]) == 2
            assert all(0 <= a <= 1 for a in arm["acc"] + arm["acc_tta"])
            assert 0 <= arm["ensemble"] <= 1
    assert "| arm | test accuracy |" in out and "| DropConnect 0.5 |" in out


def test_unknown_part_is_a_one_line_error(capsys):
    code, _, err = run(capsys, "experiment", "augmentation", "--part", "digits,colour")
    assert code == 2 and "unknown --part colour" in err and "Traceback" not in err


def test_dropconnect_layer_is_in_the_model_registry():
    from cnnlab.models.registry import model_names
    assert {"lenet_plain", "lenet_dropout", "lenet_dropconnect"} <= set(model_names())
    assert isinstance(build_model("lenet_dropconnect")[10], nn.DropConnectLinear)


def test_bad_epochs_are_a_one_line_error(capsys):
    code, _, err = run(capsys, "experiment", "augmentation", "--fashion-epochs", "0")
    assert code == 2 and "--fashion-epochs must be at least 1" in err
