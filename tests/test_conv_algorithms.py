"""Every convolution algorithm against ``direct``, and the chooser that picks between them.

Numerics: relative error = max |algo - direct| / max |direct|, on unit-variance
inputs and weights, with ``direct`` computed in float64. Bounds:
float64 <= 1e-10 for every algorithm; float32 per algorithm in FLOAT32_BOUND
(the measured worst cases are in docs/convolution.md, a few times below these).
"""
from __future__ import annotations

import json

import numpy as np
import pytest

import cnnlab.conv as conv
from cnnlab.conv import ALGORITHMS, PASSES, ConvGeometry, chooser, threads
from cnnlab.conv.winograd import cook_toom
from cnnlab.errors import UnsupportedConfigError

FLOAT32_BOUND = {"im2col": 2e-6, "fft": 5e-6, "winograd2": 5e-6, "winograd4": 3e-5}
ALGOS = [a for a in ALGORITHMS if a != "direct"]

# (n, c, h, w, o, kh, kw, stride, padding, groups): odd sizes, batch 1, padding 0/1/2,
# non-square images and kernels, groups, tiny images, padding wider than the kernel
SHAPES = [
    (1, 3, 7, 5, 4, 3, 3, 1, 1, 1),
    (2, 5, 9, 11, 3, 3, 3, 1, 0, 1),
    (1, 4, 6, 6, 8, 3, 3, 1, 2, 1),
    (3, 6, 13, 10, 4, 3, 3, 1, 1, 2),
    (1, 8, 17, 19, 6, 3, 3, 1, (2, 1), 1),
    (2, 3, 3, 3, 2, 3, 3, 1, 0, 1),
    (1, 2, 1, 1, 3, 3, 3, 1, 1, 1),
    (1, 5, 5, 7, 3, 3, 3, 1, 3, 1),
    (2, 4, 11, 9, 5, 5, 3, 1, 2, 1),
    (1, 3, 12, 12, 4, 7, 7, 1, 3, 1),
    (2, 4, 9, 8, 6, 1, 1, 1, 0, 2),
    (2, 3, 10, 9, 4, 3, 3, 2, 1, 1),
]


def _case(shape, seed):
    n, c, h, w, o, kh, kw, stride, padding, groups = shape
    rng = np.random.default_rng(seed)
    g = ConvGeometry.of((n, c, h, w), (o, c // groups, kh, kw), stride, padding, 1, groups)
    x = rng.standard_normal(g.x_shape)
    wt = rng.standard_normal(g.w_shape)
    dy = rng.standard_normal(g.y_shape)
    return g, {"forward": (x, wt), "backward_data": (dy, wt), "backward_weight": (dy, x)}


def _rel(a, ref):
    return float(np.abs(a - ref).max() / np.abs(ref).max())


def _random_shapes(count=6, seed=1234):
    """More 3x3 stride-1 shapes drawn with a fixed seed (batch 1-3, sizes 1-15, padding 0-2)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        out.append((int(rng.integers(1, 4)), int(rng.integers(1, 7)), int(rng.integers(1, 16)),
                    int(rng.integers(1, 16)), int(rng.integers(1, 7)), 3, 3, 1,
                    int(rng.integers(0, 3)), 1))
    return [s for s in out if s[2] + 2 * s[8] >= 3 and s[3] + 2 * s[8] >= 3]


@pytest.mark.parametrize("shape", SHAPES + _random_shapes(), ids=str)
def test_algorithms_match_direct(shape):
    g, args = _case(shape, seed=hash(shape) % 1000)
    ref = {p: ALGORITHMS["direct"].run(p, *args[p], g) for p in PASSES}
    checked = 0
    for name in ALGOS:
        a = ALGORITHMS[name]
        for p in PASSES:
            if a.supports(g, p) is not None:
                continue
            out64 = a.run(p, *args[p], g)
            assert out64.shape == ref[p].shape and out64.dtype == np.float64
            assert _rel(out64, ref[p]) <= 1e-10, (name, p)
            out32 = a.run(p, *(v.astype(np.float32) for v in args[p]), g)
            assert out32.dtype == np.float32
            assert _rel(out32, ref[p]) <= FLOAT32_BOUND[name], (name, p, _rel(out32, ref[p]))
            checked += 1
    assert checked >= 3  # im2col at least


def test_vgg_scale_layer_float32():
    """One VGG-16 layer (64->64, 56x56, batch 1) in float32 against float64 direct."""
    g, args = _case((1, 64, 56, 56, 64, 3, 3, 1, 1, 1), seed=7)
    for p in PASSES:
        ref = ALGORITHMS["direct"].run(p, *args[p], g)
        a32 = [v.astype(np.float32) for v in args[p]]
        for name in ("im2col", "winograd2", "winograd4", "fft"):
            err = _rel(ALGORITHMS[name].run(p, *a32, g), ref)
            assert err <= FLOAT32_BOUND[name], (name, p, err)


def test_unsupported_configurations_are_refused_with_alternatives():
    g = ConvGeometry.of((1, 3, 8, 8), (4, 3, 3, 3), stride=2, padding=1)
    for name in ("winograd2", "winograd4", "fft"):
        assert ALGORITHMS[name].supports(g, "forward") is not None
        with pytest.raises(UnsupportedConfigError, match="algorithms that can: direct, im2col"):
            conv.select(g, "forward", name)
    g5 = ConvGeometry.of((1, 3, 8, 8), (4, 3, 5, 5), padding=2)
    with pytest.raises(UnsupportedConfigError, match=r"winograd4.*kernel 5x5"):
        conv.select(g5, "backward_data", "winograd4")
    assert conv.select(g5, "backward_data", "fft") is ALGORITHMS["fft"]
    with pytest.raises(UnsupportedConfigError, match="unknown convolution algorithm"):
        conv.select(g5, "forward", "nope")


def test_cook_toom_matches_lavin_gray_and_is_exact():
    at, gm, bt = cook_toom(4, 3, (0, 1, -1, 2, -2))      # Lavin & Gray's points
    assert np.array_equal(np.abs(bt[0]), [4, 0, 5, 0, 1, 0])
    assert np.array_equal(at[3], [0, 1, -1, 8, -8, 1])
    rng = np.random.default_rng(0)
    for pts in [(0, 1, -1, 0.5, -2), (0, 1, -1)]:
        m = len(pts) - 1
        at, gm, bt = cook_toom(m, 3, pts)
        d, k = rng.standard_normal(m + 2), rng.standard_normal(3)
        want = np.array([d[i:i + 3] @ k for i in range(m)])
        assert np.allclose(at @ ((gm @ k) * (bt @ d)), want, rtol=0, atol=1e-13)


def test_workspace_is_reported():
    g = ConvGeometry.of((1, 64, 56, 56), (64, 64, 3, 3), padding=1)
    for name in ALGOS:
        for p in PASSES:
            assert ALGORITHMS[name].workspace_bytes(g, p, 4) > 0, (name, p)
    assert ALGORITHMS["winograd4"].workspace_bytes(g, "forward", 8) > \
        ALGORITHMS["winograd4"].workspace_bytes(g, "forward", 4)


# ----------------------------------------------------------------------------- chooser

@pytest.fixture
def fresh_chooser(monkeypatch):
    """A clean CHOOSER for one test (the module functions act on it)."""
    c = chooser.Chooser()
    monkeypatch.setattr(chooser, "CHOOSER", c)
    return c


def test_auto_measures_once_and_caches_in_memory(fresh_chooser, monkeypatch):
    g = ConvGeometry.of((1, 16, 32, 32), (16, 16, 3, 3), padding=1)  # 2.4M MACs: measured
    first = conv.explain(g, "forward")
    assert first.how == "measured" and first.algo in first.times_ms
    assert set(first.times_ms) <= set(fresh_chooser.candidates(g, "forward"))
    monkeypatch.setattr(fresh_chooser, "_measure", lambda *a: pytest.fail("measured twice"))
    assert conv.explain(g, "forward") is first
    assert conv.select(g, "forward") is ALGORITHMS[first.algo]


def test_tiny_geometries_use_the_heuristic(fresh_chooser, monkeypatch):
    monkeypatch.setattr(fresh_chooser, "_measure", lambda *a: pytest.fail("tiny case measured"))
    g = ConvGeometry.of((1, 3, 8, 8), (4, 3, 3, 3), padding=1)
    assert g.macs < chooser.TINY_MACS
    choice = conv.explain(g, "forward")
    assert choice.how == "heuristic" and choice.algo == "im2col"


def test_workspace_limit_excludes_algorithms(fresh_chooser):
    g = ConvGeometry.of((1, 16, 32, 32), (16, 16, 3, 3), padding=1)
    limit = ALGORITHMS["winograd4"].workspace_bytes(g, "forward", 4) - 1
    conv.set_workspace_limit(limit)
    names = fresh_chooser.candidates(g, "forward")
    assert "winograd4" not in names and "direct" not in names
    assert all(ALGORITHMS[n].workspace_bytes(g, "forward", 4) <= limit for n in names)
    assert conv.explain(g, "forward").algo in names
    with pytest.raises(ValueError):
        conv.set_workspace_limit(-1)


def test_global_default_and_context_manager(fresh_chooser):
    g = ConvGeometry.of((1, 4, 9, 9), (4, 4, 3, 3), padding=1)
    gs2 = ConvGeometry.of((1, 4, 9, 9), (4, 4, 3, 3), stride=2, padding=1)
    with conv.default_algo("fft"):
        assert conv.get_default_algo() == "fft"
        assert conv.select(g, "forward") is ALGORITHMS["fft"]
        assert conv.select(g, "forward", "winograd2") is ALGORITHMS["winograd2"]  # layer wins
        with pytest.raises(UnsupportedConfigError, match="global default"):
            conv.select(gs2, "forward")
    assert conv.get_default_algo() == "auto"
    conv.set_default_algo("im2col")
    assert conv.select(g, "backward_weight") is ALGORITHMS["im2col"]
    conv.set_default_algo("auto")
    with pytest.raises(UnsupportedConfigError):
        conv.set_default_algo("nope")


def test_env_variable_is_an_opt_in_default(monkeypatch):
    monkeypatch.setenv(chooser.ENV_ALGO, "winograd2")
    assert chooser.Chooser(default_algo=chooser._initial_default()).default_algo == "winograd2"
    monkeypatch.delenv(chooser.ENV_ALGO)
    assert chooser._initial_default() == "auto"


def test_disk_cache_round_trip_and_fingerprint(fresh_chooser, tmp_path, monkeypatch):
    monkeypatch.setenv(chooser.ENV_CACHE, str(tmp_path))
    path = conv.enable_disk_cache()
    assert path == tmp_path / "conv_algos.json"
    g = ConvGeometry.of((1, 16, 32, 32), (16, 16, 3, 3), padding=1)
    measured = conv.explain(g, "backward_data")
    data = json.loads(path.read_text())
    fp, desc = fresh_chooser.fingerprint()
    entry = data["machines"][fp]
    assert entry["machine"] == desc and len(entry["choices"]) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["conv_algos.json"]  # no temp files left

    again = chooser.Chooser()                     # a new process on the same machine
    again.enable_disk_cache(path)
    hit = again.choose(g, "backward_data")
    assert (hit.how, hit.algo) == ("disk", measured.algo)

    other = chooser.Chooser()                     # the same file on another machine
    other.enable_disk_cache(path)
    monkeypatch.setattr(other, "fingerprint", lambda: ("0" * 16, "elsewhere"))
    monkeypatch.setattr(other, "_measure", lambda *a: chooser.Choice("im2col", "measured"))
    assert other.choose(g, "backward_data").how == "measured"
    assert set(json.loads(path.read_text())["machines"]) == {fp, "0" * 16}


def test_corrupt_cache_file_is_ignored_and_replaced(fresh_chooser, tmp_path):
    path = tmp_path / "sub" / "cache.json"
    path.parent.mkdir()
    path.write_text("{not json")
    conv.enable_disk_cache(path)
    g = ConvGeometry.of((1, 16, 32, 32), (16, 16, 3, 3), padding=1)
    assert conv.explain(g, "forward").how == "measured"
    assert json.loads(path.read_text())["format"] == chooser.CACHE_FORMAT
    conv.disable_disk_cache()


# ----------------------------------------------------------------------------- threads

def test_parallel_map_keeps_order_and_nests_serially():
    def inner(i):
        return threads.parallel_map(lambda j: (i, j), range(3))
    out = threads.parallel_map(inner, range(5))
    assert out == [[(i, j) for j in range(3)] for i in range(5)]


def test_results_do_not_depend_on_the_thread_count():
    g, args = _case((2, 8, 23, 21, 8, 3, 3, 1, 1, 1), seed=3)
    args32 = {p: [v.astype(np.float32) for v in a] for p, a in args.items()}
    old = conv.get_num_threads()
    try:
        for name in ("winograd4", "winograd2", "fft"):
            conv.set_num_threads(1)
            one = [ALGORITHMS[name].run(p, *args32[p], g) for p in PASSES]
            conv.set_num_threads(2)
            two = [ALGORITHMS[name].run(p, *args32[p], g) for p in PASSES]
            for a, b in zip(one, two):
                assert np.allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(a).max())
    finally:
        conv.set_num_threads(old)


# ----------------------------------------------------------------------------- command line

def test_bench_conv_command_runs_and_reports_the_choice(capsys):
    from cnnlab.cli import main
    code = main(["bench", "conv", "--no-torch", "--settings", "cifar32", "--layers", "conv5_3",
                 "--algos", "winograd2", "--repeat", "1"])
    out = capsys.readouterr().out
    assert code == 0
    assert "numpy sgemm" in out and "conv5_3" in out and "workspace MB" in out
    assert main(["bench", "conv", "--no-torch", "--layers", "conv9_9"]) == 2
    assert "unknown layer conv9_9" in capsys.readouterr().err
