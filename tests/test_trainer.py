"""The trainer: run files, exact resume, the NaN stop, atomic checkpoints, evaluation."""
import json
import os

import numpy as np
import pytest

from cnnlab import nn
from cnnlab.data import load_dataset
from cnnlab.data.transforms import RandomCrop
from cnnlab.errors import FileFormatError
from cnnlab.optim import SGD, Adam, Cosine
from cnnlab.train import (Trainer, TrainingDiverged, build_from_checkpoint, load_checkpoint,
                          save_checkpoint)


@pytest.fixture(scope="module")
def digits():
    """300 training and 100 test digits from the bundled set (fixed random subsets)."""
    train, test = load_dataset("mnist-5k", "train"), load_dataset("mnist-5k", "test")
    rng = np.random.default_rng(0)
    return (train.subset(np.sort(rng.permutation(len(train))[:300])),
            test.subset(np.sort(rng.permutation(len(test))[:100])))


def tiny_net(seed=0):
    """Conv -> batch norm -> ReLU -> pool -> dropout -> linear: buffers and dropout included."""
    rng = np.random.default_rng(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, rng=rng), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.MaxPool2d(4), nn.Flatten(), nn.Dropout(0.3, rng=rng),
                         nn.Linear(4 * 7 * 7, 10, rng=rng))


def make_trainer(out_dir, epochs, seed=0, lr=0.01, **kw):
    model = tiny_net(seed)
    steps = epochs * -(-300 // 32)
    return Trainer(model, optimizer=Adam(model.parameters(), lr), schedule=Cosine(steps),
                   out_dir=out_dir, seed=seed, batch_size=32, epochs=epochs, progress=False,
                   transform=RandomCrop(28, padding=2), log=None, **kw)


def test_fit_writes_metrics_plot_and_checkpoints(tmp_path, digits):
    trainer = make_trainer(tmp_path, epochs=2, config={"model": {"name": "tiny"}})
    metrics = trainer.fit(*digits)

    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics))
    assert [e["epoch"] for e in on_disk["epochs"]] == [1, 2]
    for key in ("train_loss", "train_acc", "test_loss", "test_acc", "seconds", "lr"):
        assert isinstance(on_disk["epochs"][-1][key], float), key
    final = on_disk["final"]
    assert final["test_acc"] == on_disk["epochs"][-1]["test_acc"] and final["seconds"] >= 0
    assert 0 <= final["best_test_acc"] <= 1 and on_disk["stopped"] is None
    assert on_disk["run"]["model"] == {"name": "tiny"}
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    last = load_checkpoint(tmp_path / "last.npz")
    assert last.info["epoch"] == 2 and len(last.info["history"]) == 2
    assert load_checkpoint(tmp_path).path == str(tmp_path / "last.npz")   # a run folder
    assert (tmp_path / "best.npz").is_file()
    for name, value in trainer.model.state_dict().items():
        assert np.array_equal(last.model_state[name], value), name
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, digits):
    straight = make_trainer(tmp_path / "straight", epochs=3)
    straight.fit(*digits)

    first = make_trainer(tmp_path / "split", epochs=3)
    first.epochs = 1                                  # stop after one epoch (same schedule)
    first.fit(*digits)
    resumed = make_trainer(tmp_path / "split", epochs=3, seed=0)
    resumed.restore(tmp_path / "split" / "last.npz")
    assert resumed.epoch == 1
    resumed.fit(*digits)

    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert list(a) == list(b)
    for name in a:
        assert np.array_equal(a[name], b[name]), name
    oa, ob = straight.optimizer.state_dict(), resumed.optimizer.state_dict()
    assert all(np.array_equal(oa[k], ob[k]) for k in oa)
    assert straight.rng.bit_generator.state == resumed.rng.bit_generator.state
    timing = ("seconds", "wait")
    strip = lambda h: [{k: v for k, v in e.items() if not any(t in k for t in timing)}  # noqa: E731
                       for e in h]
    assert strip(straight.history) == strip(resumed.history)


def test_ctrl_c_writes_metrics_and_plot_of_the_epochs_done(tmp_path, digits):
    trainer = make_trainer(tmp_path / "run", epochs=3)
    real_train_epoch = trainer._train_epoch

    def train_epoch(loader, epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        return real_train_epoch(loader, epoch)

    trainer._train_epoch = train_epoch
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(*digits)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["stopped"] == ("interrupted after 1 finished epoch(s); the last checkpoint "
                                  "is from epoch 1")
    assert len(metrics["epochs"]) == 1 and (tmp_path / "run" / "plot.png").is_file()


@pytest.mark.parametrize("workers", [0, 2])
def test_epoch_records_the_time_spent_waiting_for_data(digits, workers, fake_clock,
                                                       monkeypatch):
    """data_wait_seconds sums the loader's waits, data_wait_fraction divides it by the
    epoch's training time (a fake clock: one second per reading, shared by both)."""
    import cnnlab.data.loader as loader_module
    import cnnlab.train.trainer as trainer_module
    monkeypatch.setattr(loader_module, "time", fake_clock)
    monkeypatch.setattr(trainer_module, "time", fake_clock)
    model = tiny_net()
    trainer = Trainer(model, optimizer=Adam(model.parameters(), 0.01), batch_size=32, epochs=1,
                      progress=False, log=None, transform=RandomCrop((28, 28), padding=2),
                      num_workers=workers)
    record = trainer.fit(digits[0])["epochs"][0]
    batches = -(-len(digits[0]) // 32)
    assert record["data_wait_seconds"] == batches          # one reading pair per batch
    assert record["train_seconds"] > record["data_wait_seconds"]
    assert record["data_wait_fraction"] == pytest.approx(
        record["data_wait_seconds"] / record["train_seconds"], abs=1e-4)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, digits):
    from cnnlab.models import build_model
    model = build_model("seed_net")
    steps_per_epoch = -(-300 // 32)
    blow_up = lambda t: 1.0 if t < steps_per_epoch else 1e30      # noqa: E731 - huge lr in epoch 2
    trainer = Trainer(model, optimizer=SGD(model.parameters(), 0.05), schedule=blow_up,
                      out_dir=tmp_path, batch_size=32, epochs=3, progress=False, log=None)
    with pytest.raises(TrainingDiverged) as err:
        trainer.fit(*digits)
    message = str(err.value)
    assert "at epoch 2" in message and str(tmp_path / "last.npz") in message
    assert "lower --lr" in message
    kept = load_checkpoint(tmp_path / "last.npz")
    assert kept.info["epoch"] == 1
    assert all(np.isfinite(v).all() for v in kept.model_state.values())
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["stopped"] == message and len(metrics["epochs"]) == 1


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch, digits):
    trainer = make_trainer(None, epochs=1)
    path = tmp_path / "ckpt.npz"
    trainer.save(path)
    old = path.read_bytes()

    real, calls = np.lib.format.write_array, []

    def failing_write(f, array, **kw):                   # the third array hits a full disk
        calls.append(1)
        if len(calls) == 3:
            f.write(b"half an array")
            raise OSError("disk full")
        return real(f, array, **kw)

    trainer.model.state_dict()["0.weight"][...] += 1      # the new state differs
    monkeypatch.setattr(np.lib.format, "write_array", failing_write)
    with pytest.raises(OSError):
        trainer.save(path)
    assert path.read_bytes() == old
    assert os.listdir(tmp_path) == ["ckpt.npz"]


def test_safetensors_checkpoint_round_trip_and_rebuild(tmp_path, digits):
    from cnnlab.models import build_model
    model = build_model("seed_net", seed=3)
    config = {"model": {"name": "seed_net", "in_channels": 1, "num_classes": 10,
                        "input_size": 28, "seed": 3}}
    trainer = Trainer(model, out_dir=tmp_path, epochs=1, progress=False, log=None,
                      checkpoint_format=".safetensors", config=config)
    trainer.fit(*digits)
    rebuilt, ckpt = build_from_checkpoint(tmp_path / "last.safetensors")
    assert ckpt.info["normalization"]["mean"] == trainer.mean
    x = digits[1].as_float(trainer.mean, trainer.std)
    assert np.array_equal(rebuilt.forward(x), trainer.predict(digits[1]))


def test_evaluate_and_predict_agree(digits):
    trainer = make_trainer(None, epochs=1)
    trainer.fit(digits[0])
    scores = trainer.predict(digits[1], batch_size=7)
    assert scores.shape == (100, 10)
    loss, acc = trainer.evaluate(digits[1])
    assert acc == np.mean(scores.argmax(1) == digits[1].labels)
    assert np.isfinite(loss)


@pytest.mark.parametrize("content", [None, b"not a zip file", b"PK\x03\x04truncated"])
def test_bad_checkpoint_files_raise_file_format_error(tmp_path, content):
    path = tmp_path / "bad.npz"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(FileFormatError, match="bad.npz"):
        load_checkpoint(path)


def test_arrays_file_without_checkpoint_metadata_is_refused(tmp_path):
    path = tmp_path / "weights.npz"
    np.savez(path, w=np.zeros(3))
    with pytest.raises(FileFormatError, match="not a cnnlab checkpoint"):
        load_checkpoint(path)
    model = tiny_net()
    save_checkpoint(tmp_path / "ok.npz", model, info={"epoch": 0})
    assert load_checkpoint(tmp_path / "ok.npz").info["epoch"] == 0


def test_cli_default_is_one_worker_with_augmentation_and_none_without():
    from cnnlab.errors import CnnlabError
    from cnnlab.train.commands import _workers
    assert _workers(None, RandomCrop(28, padding=2)) == 1
    assert _workers(None, None) == 0
    assert _workers(3, None) == 3
    with pytest.raises(CnnlabError, match="--workers must be 0 or more"):
        _workers(-1, None)


def test_epoch_line_reports_the_data_wait(digits):
    lines = []
    model = tiny_net()
    Trainer(model, optimizer=Adam(model.parameters(), 0.01), batch_size=32, epochs=1,
            progress=False, log=lines.append).fit(*digits)
    assert len(lines) == 1 and "data wait " in lines[0] and lines[0].endswith("%")
