"""Test-time augmentation and ensembles: cnnlab.train.evaluation and `cnnlab eval --tta`."""
import json

import numpy as np
import pytest

from cnnlab import nn
from cnnlab.data import write_idx
from cnnlab.data.tta import default_scales, pad_batch, ten_crop, ten_crop_batch
from cnnlab.errors import CnnlabError, ShapeError
from cnnlab.train.evaluation import (accuracy, ensemble_proba, nll, predict_proba,
                                     tta_crop_count)
from test_cli import assert_one_line_error, run


class Recorder(nn.Module):
    """Scores (B, 3) from the crops' pixel sums; keeps every batch it was given."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append(x.copy())
        s = x.sum(axis=(1, 2, 3))
        return np.stack([s, -s, 0 * s], axis=1)


def digits(n=4, size=28, seed=0):
    """Random 'digits': uint8 (n, size, size), zero on a 4-pixel border like MNIST."""
    images = np.zeros((n, size, size), np.uint8)
    images[:, 4:-4, 4:-4] = np.random.default_rng(seed).integers(0, 256, (n, size - 8, size - 8))
    return images


# --- crops -----------------------------------------------------------------------------------
def test_ten_crop_pads_then_takes_corners_centre_and_flips():
    image = np.arange(1, 10, dtype=np.uint8).reshape(1, 3, 3)
    model = Recorder()
    predict_proba(model, image, tta="10crop", pad=1)
    (x,) = model.seen
    got = np.rint(x[:, 0] * 255).astype(int)                   # (10, 3, 3), back to 0..255
    expected = [[[0, 0, 0], [0, 1, 2], [0, 4, 5]],              # top-left of the padded 5x5
                [[0, 0, 0], [2, 3, 0], [5, 6, 0]],              # top-right
                [[0, 4, 5], [0, 7, 8], [0, 0, 0]],              # bottom-left
                [[5, 6, 0], [8, 9, 0], [0, 0, 0]],              # bottom-right
                [[1, 2, 3], [4, 5, 6], [7, 8, 9]]]              # centre: the image itself
    expected += [np.fliplr(e).tolist() for e in expected]       # the five, mirrored
    assert got.tolist() == expected


def test_ten_crop_default_pad_is_the_two_pixel_training_shift():
    images = digits(2)
    model = Recorder()
    predict_proba(model, images, tta="10crop")
    crops = np.rint(model.seen[0][:, 0] * 255).astype(np.uint8).reshape(2, 10, 28, 28)
    assert np.array_equal(crops[1, 0, 2:, 2:], images[1, :26, :26])     # shifted down-right
    assert not crops[1, 0, :2].any() and not crops[1, 0, :, :2].any()
    assert np.array_equal(crops[1, 3, :26, :26], images[1, 2:, 2:])     # shifted up-left
    assert np.array_equal(crops[0, 4], images[0])                       # centre
    assert np.array_equal(crops[0, 9], images[0, :, ::-1])              # centre, mirrored


def test_without_flips_only_the_five_windows():
    images = digits(3, seed=8)
    model = Recorder()
    predict_proba(model, images, tta="10crop")
    predict_proba(model, images, tta="10crop", flips=False)
    ten, five = model.seen
    assert five.shape == (15, 1, 28, 28)
    assert np.array_equal(five.reshape(3, 5, 28, 28), ten.reshape(3, 10, 28, 28)[:, :5])
    assert tta_crop_count("multiscale", (28, 32), flips=False) == 10


def test_ten_crop_batch_matches_ten_crop_and_images_larger_than_the_crop_are_not_padded():
    images = np.random.default_rng(1).integers(0, 256, (3, 9, 11, 2), dtype=np.uint8)
    batch = ten_crop_batch(images, 6)
    assert batch.shape == (3, 10, 6, 6, 2)
    for n in range(3):
        assert np.array_equal(batch[n], ten_crop(images[n], 6))
    assert pad_batch(images, 2).shape == (3, 13, 15, 2) and not pad_batch(images, 2)[:, :2].any()
    model = Recorder()
    predict_proba(model, images, tta="10crop", input_size=6, pad=2)
    x = np.rint(model.seen[0] * 255).astype(np.uint8).transpose(0, 2, 3, 1)
    assert np.array_equal(x.reshape(batch.shape), batch)


def test_none_takes_the_centre_crop_of_larger_images():
    images = np.random.default_rng(2).integers(0, 256, (2, 9, 11), dtype=np.uint8)
    model = Recorder()
    predict_proba(model, images, input_size=6)
    x = np.rint(model.seen[0][:, 0] * 255).astype(np.uint8)
    assert np.array_equal(x, images[:, 1:7, 2:8])


def test_multiscale_default_scales():
    assert default_scales(224) == (224, 256, 384, 480, 640)
    assert default_scales(28) == (28, 32, 48, 60, 80)
    assert tta_crop_count("multiscale") == 50 and tta_crop_count("10crop") == 10


def test_multiscale_crops_every_scale_and_one_scale_equals_10crop():
    images = digits(3, seed=3)
    model = Recorder()
    predict_proba(model, images, tta="multiscale", scales=(28, 40))
    assert [x.shape for x in model.seen] == [(60, 1, 28, 28)]
    p_one = predict_proba(model, images, tta="multiscale", scales=(28,))
    assert np.array_equal(p_one, predict_proba(model, images, tta="10crop"))
    with pytest.raises(CnnlabError, match="at least the model's input size 28"):
        predict_proba(model, images, tta="multiscale", scales=(24, 32))


# --- predictions -----------------------------------------------------------------------------
def position_free_model():
    """1x1 convolution, ReLU, global average: the output ignores where the digit is."""
    model = nn.Sequential(nn.Conv2d(1, 6, 1), nn.ReLU(), nn.GlobalAvgPool2d(), nn.Flatten(),
                          nn.Linear(6, 4))
    rng = np.random.default_rng(4)
    for p in model.parameters():
        p.data = rng.standard_normal(p.data.shape).astype(np.float32)
    return model


def test_tta_of_a_position_free_model_equals_no_tta():
    images, kw = digits(6, seed=5), {"mean": 0.13, "std": 0.31}
    model = position_free_model()
    plain = predict_proba(model, images, **kw)
    assert plain.shape == (6, 4) and plain.dtype == np.float64
    assert np.allclose(plain.sum(axis=1), 1)
    assert np.ptp(plain, axis=0).max() > 0.01                   # the images give different rows
    assert np.allclose(predict_proba(model, images, tta="10crop", **kw), plain, atol=1e-6)
    # a model that sees positions does change
    flat = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 4))
    flat.get_submodule("1").weight.data = np.random.default_rng(6).standard_normal(
        (4, 784)).astype(np.float32) * 0.01
    assert not np.allclose(predict_proba(flat, images, tta="10crop", **kw),
                           predict_proba(flat, images, **kw), atol=1e-3)


def test_crops_of_many_images_go_through_one_forward_call():
    images = digits(7, seed=7)
    model = Recorder()
    big = predict_proba(model, images, tta="10crop", batch_size=1000)
    assert [len(x) for x in model.seen] == [70]
    model.seen.clear()
    small = predict_proba(model, images, tta="10crop", batch_size=25)      # 2 images a call
    assert [len(x) for x in model.seen] == [20, 20, 20, 10]
    assert np.allclose(big, small)


def test_bad_inputs_are_clear_errors():
    model = Recorder()
    with pytest.raises(ShapeError, match="smaller than the model's 28x28"):
        predict_proba(model, digits(2, size=20), tta="10crop", input_size=28)
    with pytest.raises(CnnlabError, match="unknown tta 'twelve'"):
        predict_proba(model, digits(2), tta="twelve")
    with pytest.raises(CnnlabError, match="multiscale' only"):
        predict_proba(model, digits(2), tta="10crop", scales=(28,))


# --- ensembles and metrics -------------------------------------------------------------------
def test_ensemble_accuracy_and_nll():
    p = np.array([[0.7, 0.3], [0.2, 0.8], [0.5, 0.5]])
    q = np.array([[0.1, 0.9], [0.6, 0.4], [0.3, 0.7]])
    labels = np.array([0, 0, 1])
    assert np.allclose(ensemble_proba([p, p, p]), p, rtol=0, atol=1e-15)
    assert np.allclose(ensemble_proba([p, q]), [[0.4, 0.6], [0.4, 0.6], [0.4, 0.6]])
    assert accuracy(p, labels) == pytest.approx(1 / 3)               # ties go to class 0
    assert accuracy(ensemble_proba([p, q]), labels) == pytest.approx(1 / 3)
    assert nll(p, labels) == pytest.approx(-(np.log(0.7) + np.log(0.2) + np.log(0.5)) / 3)
    assert nll(np.array([[1.0, 0.0]]), np.array([1])) == pytest.approx(-np.log(1e-12))
    with pytest.raises(ShapeError, match=r"\(3, 2\), \(3, 3\)"):
        ensemble_proba([p, np.full((3, 3), 1 / 3)])
    with pytest.raises(CnnlabError, match="at least one"):
        ensemble_proba([])
    with pytest.raises(ShapeError, match="labels"):
        accuracy(p, labels[:2])


# --- the command -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny LeNet runs: a and b on mnist-5k (seeds 1, 2), c on digits 0-4, d on digits 5-9."""
    root = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CNNLAB_CACHE", str(root / "cache"))
        from cnnlab.cli import main
        for name, data, seed in (("a", "mnist-5k", 1), ("b", "mnist-5k", 2),
                                 ("c", "mnist-5k-digits0-4", 0), ("d", "mnist-5k-digits5-9", 0)):
            assert main(["train", "--epochs", "1", "--limit", "300", "--seed", str(seed),
                         "--data", data, "--quiet", "--out", str(root / name)]) == 0
    return root


@pytest.fixture(autouse=True)
def conv_cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))


def test_eval_tta_ensemble_lines_and_json(capsys, runs, tmp_path):
    from cnnlab.train.commands import evaluate_checkpoint
    out = tmp_path / "out.json"
    code, stdout, err = run(capsys, "eval", str(runs / "a"), str(runs / "b"), "--tta", "10crop",
                            "--limit", "300", "--json", str(out))
    assert code == 0, err
    lines = stdout.strip().splitlines()
    assert len(lines) == 3
    saved = json.loads(out.read_text())
    assert saved["tta"] == "10crop" and len(saved["checkpoints"]) == 2
    singles = []
    for line, r, name in zip(lines, saved["checkpoints"], "ab"):
        mine = evaluate_checkpoint(runs / name, limit=300, tta="10crop", return_proba=True)
        assert r["checkpoint"].startswith(str(runs / name)) and r["pad"] == 2
        assert r["acc"] == pytest.approx(mine["acc"]) and r["loss"] == pytest.approx(mine["loss"])
        assert r["images"] == 300 and "10crop TTA" in line
        assert f"loss {r['loss']:.4f}, accuracy {r['acc']:.2%}" in line
        singles.append(mine)
    proba = (singles[0]["proba"] + singles[1]["proba"]) / 2
    e = saved["ensemble"]
    assert e["models"] == 2 and e["images"] == 300
    assert e["acc"] == pytest.approx(np.mean(proba.argmax(1) == singles[0]["labels"]))
    assert e["best_single_acc"] == max(s["acc"] for s in singles)
    assert lines[2].startswith("ensemble of 2 models:")
    assert (f"accuracy {e['acc']:.2%} (best single {e['best_single_acc']:.2%}, mean single "
            f"{e['mean_single_acc']:.2%})") in lines[2]


def test_eval_ensemble_without_tta_keeps_the_single_results(capsys, runs):
    code, stdout, err = run(capsys, "eval", str(runs / "a"), str(runs / "b"))
    assert code == 0, err
    lines = stdout.strip().splitlines()
    for line, name in zip(lines, "ab"):
        acc = json.loads((runs / name / "metrics.json").read_text())["final"]["test_acc"]
        assert "(1,000 images): loss" in line and f"accuracy {acc:.2%}" in line
    assert len(lines) == 3 and lines[2].startswith("ensemble of 2 models: mnist-5k test")


def test_eval_counts_a_checkpoint_given_twice_once(capsys, runs):
    code, stdout, _ = run(capsys, "eval", str(runs / "a"), str(runs / "a" / "last.npz"))
    assert code == 0 and len(stdout.strip().splitlines()) == 2 and "ensemble" not in stdout
    code, stdout, err = run(capsys, "eval", str(runs / "a"), str(runs / "b"), str(runs / "a"))
    lines = stdout.strip().splitlines()
    assert code == 0 and len(lines) == 4 and lines[3].startswith("ensemble of 2 models")
    assert "more than once" in err


def test_eval_refuses_ensembles_that_do_not_match(capsys, runs):
    code, _, err = run(capsys, "eval", str(runs / "a"), str(runs / "c"))
    assert_one_line_error(code, err, "same number of classes", "10", "5")
    code, _, err = run(capsys, "eval", str(runs / "c"), str(runs / "d"))
    assert_one_line_error(code, err, "mnist-5k-digits0-4", "mnist-5k-digits5-9", "--data")
    code, stdout, err = run(capsys, "eval", str(runs / "c"), str(runs / "d"),
                            "--data", "mnist-5k-digits0-4")
    assert code == 0 and "ensemble of 2 models" in stdout and "other classes" in err


@pytest.mark.parametrize("argv, words", [
    (["--tta-pad", "3"], ["--tta-pad", "10crop"]),
    (["--tta", "10crop", "--scales", "28"], ["--scales", "multiscale"]),
    (["--tta", "10crop", "--tta-pad", "-1"], ["--tta-pad must be >= 0"]),
    (["--tta", "sideways"], ["invalid choice", "sideways"]),
    (["--no-flips"], ["--no-flips", "10crop"]),
    (["--flips"], ["--flips", "10crop"]),
    (["--tta", "10crop", "--flips", "--no-flips"], ["not allowed with"]),
])
def test_eval_bad_tta_options(capsys, runs, argv, words):
    code, _, err = run(capsys, "eval", str(runs / "a"), *argv)
    assert_one_line_error(code, err, *words)


def _idx_folder(folder, size):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 20), ("t10k", 12)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte", digits(n, size, seed=n))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n).astype(np.uint8))
    return folder


def test_eval_tta_takes_larger_images_but_not_smaller_ones(capsys, runs, tmp_path):
    small, large = _idx_folder(tmp_path / "small", 20), _idx_folder(tmp_path / "large", 32)
    code, _, err = run(capsys, "eval", str(runs / "a"), "--data", str(small), "--tta", "10crop")
    assert_one_line_error(code, err, "28x28", "20x20", "cannot enlarge")
    code, _, err = run(capsys, "eval", str(runs / "a"), "--data", str(large))
    assert_one_line_error(code, err, "28x28", "32x32")                # without TTA: same size only
    code, stdout, err = run(capsys, "eval", str(runs / "a"), "--data", str(large), "--tta",
                            "multiscale")
    assert code == 0, err
    # run a trained with --augment affine (no flips): the mirrored crops are left out
    assert "(12 images, multiscale TTA without mirrors at scales 28/32/48/60/80)" in stdout
    code, stdout, err = run(capsys, "eval", str(runs / "a"), "--data", str(large), "--tta",
                            "10crop", "--no-flips", "--tta-pad", "0")
    assert code == 0 and "(12 images, 10crop TTA without mirrors)" in stdout, err


def test_eval_mirrors_follow_the_training_augmentation(capsys, runs, tmp_path):
    """TTA's mirrored crops by default only for a model trained with flips; --flips and
    --no-flips decide otherwise, and each model of an ensemble follows its own training."""
    from cnnlab.cli import main
    from cnnlab.train.commands import evaluate_checkpoint
    flipped = tmp_path / "flipped"
    assert main(["train", "--epochs", "1", "--limit", "300", "--seed", "3", "--augment",
                 "shift+flip", "--quiet", "--out", str(flipped)]) == 0
    capsys.readouterr()
    plain = evaluate_checkpoint(runs / "a", limit=50, tta="10crop", return_proba=True)
    forced = evaluate_checkpoint(runs / "a", limit=50, tta="10crop", flips=True,
                                 return_proba=True)
    without = evaluate_checkpoint(runs / "a", limit=50, tta="10crop", flips=False,
                                  return_proba=True)
    assert plain["flips"] is False and forced["flips"] is True
    assert np.array_equal(plain["proba"], without["proba"])
    assert not np.allclose(plain["proba"], forced["proba"])
    assert evaluate_checkpoint(flipped, limit=50, tta="10crop")["flips"] is True
    code, stdout, err = run(capsys, "eval", str(runs / "a"), "--limit", "50", "--tta", "10crop",
                            "--flips")
    assert code == 0 and "10crop TTA)" in stdout, err
    code, stdout, err = run(capsys, "eval", str(runs / "a"), str(flipped), "--limit", "50",
                            "--tta", "10crop")
    lines = stdout.strip().splitlines()
    assert code == 0 and len(lines) == 3, err
    assert "without mirrors" in lines[0] and "without mirrors" not in lines[1]
    assert "with mirrors as each model was trained" in lines[2]
