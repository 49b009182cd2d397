import os
import sys

sys.path.insert(0, os.path.dirname(__file__))


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def conv_chooser_state_in_tmp(tmp_path, monkeypatch):
    """Every test starts and ends with the conv chooser's disk cache off and its reports
    silent, and anything that turns the cache on writes under the test's own folder (never
    the developer's ~/.cache)."""
    from cnnlab.conv import CHOOSER, disable_disk_cache
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    disable_disk_cache()
    notify = CHOOSER.notify = None
    yield
    disable_disk_cache()
    CHOOSER.notify = notify


class FakeClock:
    """A stand-in for the ``time`` module whose perf_counter advances by exactly 1 s per call:
    timing code is tested without depending on wall-clock time."""

    def __init__(self):
        import time
        self.now, self.monotonic, self.sleep = 0.0, time.monotonic, time.sleep

    def perf_counter(self):
        self.now += 1.0
        return self.now


@pytest.fixture
def fake_clock():
    return FakeClock()
