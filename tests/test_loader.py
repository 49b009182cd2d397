"""DataLoader: reproducible batches for any worker count, ordered, and clean shutdown."""
import _thread
import multiprocessing as mp
import threading
import time

import numpy as np
import pytest

import cnnlab.data.loader as loader_module
from cnnlab.data.dataset import ArrayDataset
from cnnlab.data.geometric import RandomRotation
from cnnlab.data.loader import DataLoader, WorkerError, batch_rng, shuffle_order
from cnnlab.data.transforms import ColorJitter, Compose, HorizontalFlip, RandomCrop


def make_data(n=37, shape=(10, 10, 3)):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n,) + shape, dtype=np.uint8)
    return ArrayDataset(images, np.arange(n) % 5, [str(c) for c in range(5)], "toy")


AUGMENT = Compose([HorizontalFlip(), RandomCrop(8, padding=2), RandomRotation(15), ColorJitter(0.3, 0.3)])


def loader_threads():
    return [t for t in threading.enumerate() if t.name.startswith("cnnlab-loader")]


def collect(loader):
    return [(x.copy(), y.copy()) for x, y in loader]


@pytest.mark.parametrize("kw", [dict(num_workers=1), dict(num_workers=3, prefetch=1),
                                dict(num_workers=2, mode="process")])
def test_same_batches_for_any_worker_count(kw):
    data = make_data()
    ref = DataLoader(data, batch_size=8, shuffle=True, transform=AUGMENT, seed=5)
    ref.set_epoch(3)
    other = DataLoader(data, batch_size=8, shuffle=True, transform=AUGMENT, seed=5, **kw)
    other.set_epoch(3)
    a, b = collect(ref), collect(other)
    assert len(a) == len(b) == 5
    for (xa, ya), (xb, yb) in zip(a, b):
        assert np.array_equal(xa, xb) and np.array_equal(ya, yb)


def test_batches_shapes_dtypes_and_coverage():
    data = make_data(n=23, shape=(6, 7))
    loader = DataLoader(data, batch_size=5, shuffle=True, seed=1, num_workers=2)
    batches = collect(loader)
    assert [len(y) for _, y in batches] == [5, 5, 5, 5, 3] and len(loader) == 5
    x, y = batches[0]
    assert x.dtype == np.float32 and x.shape == (5, 1, 6, 7) and y.dtype == np.int64
    order = shuffle_order(1, 0, 23)
    assert np.array_equal(np.concatenate([b[1] for b in batches]), data.labels[order])
    assert np.allclose(np.concatenate([b[0] for b in batches]), data.as_float()[order])
    assert len(collect(DataLoader(data, batch_size=5, drop_last=True))) == 4


def test_normalisation_matches_dataset_as_float():
    data = make_data(n=6)
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    x, _ = next(iter(DataLoader(data, batch_size=6, mean=mean, std=std)))
    assert np.allclose(x, data.as_float(mean, std), atol=1e-6)


def test_float_nchw_arrays_and_epochs():
    x = np.random.default_rng(1).standard_normal((12, 2, 9, 9)).astype(np.float32)
    y = np.arange(12)
    loader = DataLoader((x, y), batch_size=4, shuffle=True, transform=RandomCrop(7), seed=2)
    e0 = collect(loader)
    assert e0[0][0].shape == (4, 2, 7, 7) and loader.epoch == 1      # a full pass advances
    e1 = collect(loader)
    assert not np.array_equal(e0[0][1], e1[0][1])
    loader.set_epoch(0)
    again = collect(loader)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(e0, again))
    rows = shuffle_order(2, 0, 12)[:4]
    r = batch_rng(2, 0, 0)
    crops = [RandomCrop(7)(x[i].transpose(1, 2, 0), r).transpose(2, 0, 1) for i in rows]
    assert np.array_equal(e0[0][0], np.stack(crops))


def failing(image, rng):
    if rng.random() < 0.2:
        raise ValueError("augmentation exploded on purpose")
    return image


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_worker_error_is_reraised_with_its_traceback(mode):
    loader = DataLoader(make_data(n=40), batch_size=2, transform=failing, num_workers=2, mode=mode)
    with pytest.raises(WorkerError) as info:
        collect(loader)
    msg = str(info.value)
    assert "Traceback" in msg and "augmentation exploded on purpose" in msg and "in failing" in msg
    assert not loader_threads() and not mp.active_children()


def test_process_workers_exit_on_their_stop_mark(monkeypatch):
    exitcodes = []
    close = loader_module._ProcessPool.close

    def recording_close(pool):
        close(pool)
        exitcodes.extend(p.exitcode for p in pool.procs)

    monkeypatch.setattr(loader_module._ProcessPool, "close", recording_close)
    loader = DataLoader(make_data(n=24), batch_size=3, transform=AUGMENT, num_workers=2, mode="process")
    for _ in range(8):
        collect(loader)
    assert exitcodes == [0] * 16                  # none had to be terminated


def test_inline_errors_propagate_unchanged():
    with pytest.raises(ValueError, match="on purpose"):
        collect(DataLoader(make_data(n=40), batch_size=2, transform=failing))


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_break_stops_the_workers(mode):
    loader = DataLoader(make_data(n=64), batch_size=2, transform=AUGMENT, num_workers=2, mode=mode)
    for i, _ in enumerate(loader):
        if i == 2:
            break
    assert not loader_threads() and not mp.active_children()
    assert loader.epoch == 0                                          # unfinished pass


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_keyboard_interrupt_in_the_consumer_stops_the_workers(mode):
    loader = DataLoader(make_data(n=64), batch_size=2, transform=AUGMENT, num_workers=2, mode=mode)
    with pytest.raises(KeyboardInterrupt):
        for _ in loader:
            raise KeyboardInterrupt
    assert not loader_threads() and not mp.active_children()


def slow(image, rng):
    time.sleep(0.05)
    return image


def test_ctrl_c_while_waiting_for_a_batch_stops_the_workers():
    loader = DataLoader(make_data(n=40), batch_size=4, transform=slow, num_workers=1)
    timer = threading.Timer(0.1, _thread.interrupt_main)
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            collect(loader)
    finally:
        timer.cancel()
    assert not loader_threads()


@pytest.mark.parametrize("workers", [0, 1])
def test_wait_seconds_accumulates(workers, fake_clock, monkeypatch):
    """Each batch adds the time between asking for it and getting it (a fake clock: one
    second per reading), epoch after epoch."""
    import cnnlab.data.loader as loader_module
    monkeypatch.setattr(loader_module, "time", fake_clock)
    loader = DataLoader(make_data(n=8), batch_size=4, num_workers=workers)
    collect(loader)
    assert loader.wait_seconds == 2.0
    collect(loader)
    assert loader.wait_seconds == 4.0


@pytest.mark.parametrize("kw", [dict(batch_size=0), dict(num_workers=-1), dict(prefetch=0),
                                dict(mode="fiber"), dict(seed=-3), dict(transform=5),
                                dict(mean=[0.1, 0.2]), dict(std=0.0)])   # checked when built
def test_parameter_validation(kw):
    with pytest.raises((ValueError, TypeError)):
        DataLoader(make_data(), **kw)


def test_bad_data_is_reported():
    with pytest.raises(TypeError):
        DataLoader(42)
    with pytest.raises(ValueError, match="labels"):
        DataLoader((np.zeros((4, 3, 3), np.uint8), np.zeros(3)))
