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

import copy

import cnnlab.conv as conv
from cnnlab import functional as F
from cnnlab import nn
from cnnlab.conv import ALGORITHMS, PASSES, ConvGeometry, chooser, gemm, threads, winograd
from cnnlab.conv.step import step_backward, step_forward
from cnnlab.conv.winograd import POINTS, cook_toom, cook_toom_reversed
from cnnlab.errors import CnnlabError, ShapeError, UnsupportedConfigError
from cnnlab.optim import SGD

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


@pytest.mark.parametrize("schedule", ["fused", "phased, channel blocks", "phased, tile rows"])
def test_winograd_schedules_match_direct(schedule, monkeypatch):
    """Every Winograd schedule (``winograd._Plan``) on shapes with several chunks, channel
    blocks, batches and edge tiles: the fused one (forced by a large U limit and few tiles
    per chunk), the phased one cutting channels with every tile per job (in place in V, M
    and Z), and the phased one cutting tile rows (one channel's tiles over
    PHASE_JOB_FLOATS / 8)."""
    if schedule == "fused":
        monkeypatch.setattr(winograd, "FUSED_U_BYTES", 1 << 30)
        monkeypatch.setattr(winograd, "FUSED_DU_BYTES", 1 << 30)
        monkeypatch.setattr(winograd, "MIN_TILES", 2)
        monkeypatch.setattr(winograd, "WIDE_TILES_X_CH", 1)
        monkeypatch.setattr(winograd, "MAX_TILES", 6)
    elif schedule == "phased, channel blocks":
        monkeypatch.setattr(winograd, "FUSED_U_BYTES", 0)
        monkeypatch.setattr(winograd, "FUSED_DU_BYTES", 0)
        monkeypatch.setattr(winograd, "PHASE_JOB_FLOATS", 8 * 36 * 60)  # a few channels a job
    else:
        monkeypatch.setattr(winograd, "FUSED_U_BYTES", 0)
        monkeypatch.setattr(winograd, "FUSED_DU_BYTES", 0)
        monkeypatch.setattr(winograd, "PHASE_JOB_FLOATS", 8)
        monkeypatch.setattr(winograd, "PHASED_FLOATS", 1)
    for shape in [(2, 13, 11, 9, 7, 3, 3, 1, 1, 1), (1, 10, 14, 17, 12, 3, 3, 1, 0, 1),
                  (3, 8, 7, 6, 6, 3, 3, 1, 2, 2)]:
        g, args = _case(shape, seed=11)
        for m in (2, 4):
            plan = winograd._Plan(m, g.n, g.c // g.groups, g.h, g.w, g.o // g.groups, g.ho, g.wo,
                                  1, 1)
            assert plan.fused == (schedule == "fused")
            if plan.fused:
                assert len(plan.chunks) >= 2
            else:
                assert (plan.channel_jobs(g.c) is not None) == (schedule != "phased, tile rows")
                assert len(plan.channel_jobs(g.c) or plan.chunks) >= 2
            a = ALGORITHMS[f"winograd{m}"]
            for p in PASSES:
                ref = ALGORITHMS["direct"].run(p, *args[p], g)
                assert _rel(a.run(p, *args[p], g), ref) <= 1e-10, (m, p)
            saved = {}
            a.forward(*args["forward"], g, save=saved)
            kept = a.backward_weight(*args["backward_weight"], g, saved=saved)
            assert np.array_equal(kept, a.backward_weight(*args["backward_weight"], g))


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


def test_reversed_matrices_transform_the_reversed_kernel_like_the_forward():
    """The data gradient's matrices: G' = G J exactly, and y = A'^T [(G' k) * (B'^T d)]
    correlates d with k, so the forward's U = G w G^T serves the rotated kernel."""
    rng = np.random.default_rng(1)
    for m, pts in POINTS.items():
        _, gm, _ = cook_toom(m, 3, pts)
        at, gr, bt = cook_toom_reversed(m, 3, pts)
        assert np.array_equal(gr, gm[:, ::-1])
        d, k = rng.standard_normal(m + 2), rng.standard_normal(3)
        want = np.array([d[i:i + 3] @ k for i in range(m)])
        assert np.allclose(at @ ((gr @ k) * (bt @ d)), want, rtol=0, atol=1e-13)
        assert np.allclose(at @ ((gm @ k[::-1]) * (bt @ d)), want, rtol=0, atol=1e-13)


PREPARED_SHAPES = [(1, 5, 9, 11, 6, 3, 3, 1, 1, 1), (2, 6, 13, 10, 4, 3, 3, 1, 1, 2),
                   (1, 8, 17, 19, 6, 3, 3, 1, (2, 1), 1), (2, 4, 11, 9, 5, 5, 3, 1, 2, 1)]


@pytest.mark.parametrize("shape", PREPARED_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_prepared_weights_give_identical_results(shape, dtype):
    """forward / backward_data with ``prepare``'s result: bit for bit the unprepared pass;
    Winograd's one U serves both passes and any image size (its key says so)."""
    g, args = _case(shape, seed=5)
    prepared_any = False
    for name in ("winograd2", "winograd4", "fft", "im2col", "direct"):
        a = ALGORITHMS[name]
        for p in ("forward", "backward_data"):
            if a.supports(g, p) is not None:
                continue
            arr, w = (v.astype(dtype) for v in args[p])
            key = a.prepared_key(g, p)
            prep = a.prepare(w, g, p)
            assert (prep is None) == (key is None), name
            if prep is None:
                assert a.prepared_bytes(g, p, w.itemsize) == 0
                continue
            prepared_any = True
            assert sum(u.nbytes for u in prep) == a.prepared_bytes(g, p, w.itemsize)
            assert np.array_equal(a.run(p, arr, w, g, prepared=prep), a.run(p, arr, w, g)), (name, p)
        if name.startswith("winograd") and a.supports(g, "forward") is None:
            bigger = ConvGeometry.of((g.n, g.c, g.h + 5, g.w + 3), g.w_shape, g.stride, g.padding,
                                     1, g.groups)
            assert a.prepared_key(g, "forward") == a.prepared_key(bigger, "backward_data")
            dy, w = (v.astype(dtype) for v in args["backward_data"])
            assert np.array_equal(a.backward_data(dy, w, g, prepared=a.prepare(w, bigger, "forward")),
                                  a.backward_data(dy, w, g))
    assert prepared_any


def test_fft_prepares_only_what_fits_one_block(monkeypatch):
    from cnnlab.conv import fft
    g = ConvGeometry.of((1, 4, 12, 12), (6, 4, 5, 5), padding=2)
    assert ALGORITHMS["fft"].prepared_key(g, "forward") is not None
    assert ALGORITHMS["fft"].prepared_key(g, "backward_weight") is None
    monkeypatch.setattr(fft, "BLOCK_BYTES", 1024)
    assert ALGORITHMS["fft"].prepared_key(g, "forward") is None
    assert ALGORITHMS["fft"].prepare(np.ones(g.w_shape), g, "forward") is None


@pytest.mark.parametrize("shape", [(1, 6, 23, 9, 5, 3, 3, 1, 1, 1), (3, 4, 10, 11, 6, 3, 3, 2, 1, 2),
                                   (2, 3, 9, 8, 4, 5, 3, 1, 2, 1)], ids=str)
def test_im2col_in_blocks_matches_direct(shape, monkeypatch):
    """A column matrix over COLS_BYTES is used in blocks: rows of one image, or whole images."""
    g, args = _case(shape, seed=11)
    a = ALGORITHMS["im2col"]
    whole = {p: a.run(p, *args[p], g) for p in PASSES}
    unblocked = a.workspace_bytes(g, "forward", 8)
    assert gemm.blocks(g, 8) == [(0, g.n, 0, g.ho)]
    monkeypatch.setattr(gemm, "COLS_BYTES", g.c * g.kh * g.kw * g.wo * 8 * 2)  # two rows
    parts = gemm.blocks(g, 8)
    assert len(parts) > g.n and all(n1 - n0 == 1 for n0, n1, _, _ in parts)
    assert a.workspace_bytes(g, "forward", 8) < unblocked
    for limit in (gemm.COLS_BYTES, g.c * g.kh * g.kw * g.wo * g.ho * 8):  # rows; one image each
        monkeypatch.setattr(gemm, "COLS_BYTES", limit)
        for p in PASSES:
            ref = ALGORITHMS["direct"].run(p, *args[p], g)
            out = a.run(p, *args[p], g)
            assert out.shape == ref.shape and _rel(out, ref) <= 1e-12, (p, limit)
            assert _rel(out, whole[p]) <= 1e-12


def test_workspace_is_reported():
    g = ConvGeometry.of((1, 64, 56, 56), (64, 64, 3, 3), padding=1)
    for name in ALGOS:
        for p in PASSES:
            assert ALGORITHMS[name].workspace_bytes(g, p, 4) > 0, (name, p)
    assert ALGORITHMS["winograd4"].workspace_bytes(g, "forward", 8) > \
        ALGORITHMS["winograd4"].workspace_bytes(g, "forward", 4)


@pytest.mark.parametrize("threads", [1, 4])
@pytest.mark.parametrize("blocked", [False, True], ids=["whole", "blocked"])
@pytest.mark.parametrize("shape", [(2, 8, 12, 10, 12, 3, 3, 1, 1, 1), (3, 6, 11, 9, 6, 5, 5, 1, 2, 3),
                                   (1, 24, 14, 14, 24, 3, 3, 1, 1, 1)], ids=str)
def test_workspace_bytes_covers_the_measured_peak(shape, blocked, threads, monkeypatch):
    """Each algorithm's reported workspace is at least the extra memory its pass really takes
    (tracemalloc's peak less the result), within 15% and 64 KiB of Python objects; also where
    im2col's columns and FFT's kernel spectra are cut in blocks (an im2col forward once kept
    every block's columns to the end: 6-9x its report), and with a pool of 4 threads (im2col's
    weight gradient holds a partial dW per thread). Buffers of every thread are counted:
    tracemalloc sees them all, and the calling thread's are freed first."""
    import tracemalloc

    from cnnlab.conv import fft, set_num_threads
    from cnnlab.conv import threads as threads_mod
    from cnnlab.conv.winograd import clear_scratch
    if blocked:
        monkeypatch.setattr(gemm, "COLS_BYTES", 8 << 10)
        monkeypatch.setattr(fft, "BLOCK_BYTES", 16 << 10)
    g, args = _case(shape, seed=3)
    before = conv.get_num_threads()
    set_num_threads(threads)
    try:
        for name in ALGOS:          # not the reference (its einsums' temporaries vary)
            a = ALGORITHMS[name]
            for p in PASSES:
                if a.supports(g, p) is not None:
                    continue
                threads_mod.parallel_map(lambda _: clear_scratch(), range(4 * threads))
                clear_scratch()
                tracemalloc.start()
                out = a.run(p, *args[p], g)
                peak = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
                extra, reported = peak - out.nbytes, a.workspace_bytes(g, p, 8)
                assert extra <= 1.15 * reported + (64 << 10), (name, p, extra, reported)
    finally:
        set_num_threads(before)


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


def test_a_smaller_batch_takes_the_larger_batch_choice(fresh_chooser, monkeypatch):
    """An epoch's last, smaller batch runs as the full batches did: no second timing."""
    big = ConvGeometry.of((4, 16, 32, 32), (16, 16, 3, 3), padding=1)
    small, larger = (ConvGeometry.of((n, 16, 32, 32), (16, 16, 3, 3), padding=1) for n in (3, 6))
    first = conv.explain(big, "forward")
    plan = conv.select_step(big)
    assert first.how == "measured"
    monkeypatch.setattr(fresh_chooser, "_measure", lambda *a: pytest.fail("timed again"))
    monkeypatch.setattr(fresh_chooser, "_measure_steps", lambda *a: pytest.fail("timed again"))
    tail = conv.explain(small, "forward")
    assert tail.how == "larger batch" and tail.algo == first.algo
    assert conv.select_step(small) == plan
    with pytest.raises(BaseException, match="timed again"):     # a larger batch is measured
        conv.explain(larger, "forward")


def test_tiny_geometries_use_the_heuristic(fresh_chooser, monkeypatch):
    monkeypatch.setattr(fresh_chooser, "_measure", lambda *a: pytest.fail("tiny case measured"))
    g = ConvGeometry.of((1, 3, 8, 8), (4, 3, 3, 3), padding=1)
    assert g.macs < chooser.TINY_MACS
    choice = conv.explain(g, "forward")
    assert choice.how == "heuristic" and choice.algo == "im2col"


def test_workspace_limit_excludes_algorithms(fresh_chooser):
    g = ConvGeometry.of((1, 16, 32, 32), (16, 16, 3, 3), padding=1)
    limit = ALGORITHMS["winograd2"].workspace_bytes(g, "forward", 4) - 1
    conv.set_workspace_limit(limit)
    names = fresh_chooser.candidates(g, "forward")
    assert names and "winograd2" not in names and "direct" not in names
    assert all(ALGORITHMS[n].workspace_bytes(g, "forward", 4) <= limit for n in names)
    assert conv.explain(g, "forward").algo in names
    with pytest.raises(ValueError):
        conv.set_workspace_limit(-1)


def test_prepared_choices_are_timed_with_prepared_weights(fresh_chooser, monkeypatch):
    """A frozen layer's key is separate, and each candidate runs on weights prepared beforehand."""
    g = ConvGeometry.of((1, 16, 32, 32), (16, 16, 3, 3), padding=1)
    calls = []
    for name in ("winograd2", "winograd4"):
        a = ALGORITHMS[name]
        orig_run = a.run
        monkeypatch.setattr(a, "run", lambda *args, _orig=orig_run, **kw:
                            calls.append(kw.get("prepared") is not None) or _orig(*args, **kw))
    plain = conv.explain(g, "forward")
    assert calls and not any(calls)
    calls.clear()
    prepared = conv.explain(g, "forward", prepared=True)
    assert calls and all(calls) and prepared is not plain
    assert set(fresh_chooser.choices) == {chooser.cache_key(g, "forward", np.float32, 1 << 30),
                                          chooser.cache_key(g, "forward", np.float32, 1 << 30, True)}
    # the weight gradient does not read the weights: one key whatever the flag
    assert conv.explain(g, "backward_weight", prepared=True) is conv.explain(g, "backward_weight")


def test_choices_are_filed_per_thread_count(fresh_chooser):
    """A choice measured on one thread is not reused on two: the key holds the count, the
    disk fingerprint does not (it would go stale when the count changes in a process)."""
    g = ConvGeometry.of((1, 16, 32, 32), (16, 16, 3, 3), padding=1)
    before = conv.get_num_threads()
    try:
        conv.set_num_threads(1)
        one = conv.explain(g, "forward")
        conv.set_num_threads(2)
        two = conv.explain(g, "forward")
    finally:
        conv.set_num_threads(before)
    assert one is not two and one.how == two.how == "measured"
    assert set(fresh_chooser.choices) == {chooser.cache_key(g, "forward", np.float32, 1 << 30,
                                                            threads=t) for t in (1, 2)}
    assert "threads" not in chooser.machine_fingerprint()[1]


def test_a_held_prepared_algorithm_is_kept_when_nearly_as_fast(fresh_chooser):
    g = ConvGeometry.of((1, 16, 32, 32), (16, 16, 3, 3), padding=1)
    key = chooser.cache_key(g, "backward_data", np.float32, fresh_chooser.workspace_limit, True)
    times = {"winograd2": 10.0, "winograd4": 11.0, "im2col": 30.0}
    fresh_chooser.choices[key] = chooser.Choice("winograd2", "measured", times)
    sel = lambda held: conv.select(g, "backward_data", prepared=True, held=held).name  # noqa: E731
    assert sel(()) == "winograd2"
    assert sel(("winograd4",)) == "winograd4"              # 10% slower: no second U
    assert sel(("im2col",)) == "winograd2"                 # 3x slower: prepare winograd2 too
    times["winograd4"] = 10.0 * chooser.REUSE_SLACK * 1.01
    assert sel(("winograd4",)) == "winograd2"
    assert conv.select(g, "backward_data", "im2col", prepared=True, held=("winograd4",)).name == "im2col"


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


def _malformed_caches(fp, key):
    fmt = chooser.CACHE_FORMAT
    yield {"format": fmt, "machines": []}
    yield {"format": fmt}
    yield {"format": fmt, "machines": {fp: []}}
    yield {"format": fmt, "machines": {fp: {"choices": []}}}
    for entry in ("im2col", {"algo": "im2col", "times_ms": None}, {"algo": 3},
                  {"algo": "im2col", "times_ms": {"im2col": "fast"}}, ["im2col"]):
        yield {"format": fmt, "machines": {fp: {"machine": "m", "choices": {key: entry}}}}


def test_malformed_cache_entries_are_dropped_not_fatal(fresh_chooser, tmp_path):
    """Valid JSON of the wrong shape is ignored part by part and rewritten on the next save."""
    path = tmp_path / "cache.json"
    g = ConvGeometry.of((1, 16, 32, 32), (16, 16, 3, 3), padding=1)
    key = chooser.cache_key(g, "forward", np.float32, fresh_chooser.workspace_limit)
    for content in _malformed_caches(fresh_chooser.fingerprint()[0], key):
        path.write_text(json.dumps(content))
        fresh_chooser.clear()
        conv.enable_disk_cache(path)
        assert conv.explain(g, "forward").how == "measured", content
        saved = json.loads(path.read_text())["machines"][fresh_chooser.fingerprint()[0]]
        assert saved["choices"][key]["algo"] in ALGORITHMS
    conv.disable_disk_cache()


def test_cache_paths_expand_the_home_folder(fresh_chooser, monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert conv.enable_disk_cache("~/algos.json") == tmp_path / "algos.json"
    monkeypatch.setenv(chooser.ENV_CACHE, "~/c")
    assert chooser.default_cache_path() == tmp_path / "c" / "conv_algos.json"
    conv.disable_disk_cache()


# ----------------------------------------------------------------------------- inputs

@pytest.mark.parametrize("algo", ["auto", *ALGORITHMS])
def test_integer_and_mixed_inputs_compute_in_one_float_dtype(algo):
    """uint8 images with float32 weights compute in float32, all-integer operands in float64,
    whatever the algorithm (the transforms once ran in the input's integer dtype)."""
    rng = np.random.default_rng(0)
    x8 = rng.integers(0, 256, (2, 3, 10, 9)).astype(np.uint8)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    ref, _ = F.conv2d_forward(x8.astype(np.float64), w.astype(np.float64), padding=1,
                              algo="direct")
    y, cache = F.conv2d_forward(x8, w, padding=1, algo=algo)
    assert y.dtype == np.float32 and np.abs(y - ref).max() <= 1e-5 * np.abs(ref).max()
    dx, dw, _ = F.conv2d_backward(np.ones(y.shape, np.float64), cache)
    assert dx.dtype == dw.dtype == np.float32
    xi, wi = rng.integers(-3, 4, (2, 3, 10, 9)), rng.integers(-3, 4, (4, 3, 3, 3))
    yi, _ = F.conv2d_forward(xi, wi, padding=1, algo=algo)
    assert yi.dtype == np.float64
    assert np.array_equal(np.rint(yi), F.conv2d_forward(xi * 1.0, wi * 1.0, padding=1,
                                                        algo="direct")[0])
    with pytest.raises(CnnlabError, match="real numbers"):
        F.conv2d_forward(x8.astype(complex), w, algo=algo)


def test_empty_batch_and_padding_names():
    x = np.zeros((0, 2, 8, 8), np.float32)
    w = np.ones((3, 2, 3, 3), np.float32)
    for algo in ALGORITHMS:
        y, cache = F.conv2d_forward(x, w, np.ones(3, np.float32), padding=1, algo=algo,
                                    for_backward=algo != "direct")
        dx, dw, db = F.conv2d_backward(y, cache)
        assert y.shape == (0, 3, 8, 8) and dx.shape == x.shape
        assert not dw.any() and not db.any() and dw.shape == w.shape
    layer = nn.Conv2d(2, 3, 5, padding="same", dilation=2)
    assert layer.padding == (4, 4) and layer.forward(np.ones((1, 2, 9, 9))).shape == (1, 3, 9, 9)
    assert nn.Conv2d(2, 3, 3, padding="valid").padding == (0, 0)
    assert ConvGeometry.of((1, 2, 9, 7), (3, 2, 3, 1), padding="same").padding == (1, 0)


@pytest.mark.parametrize("kwargs, words", [
    (dict(padding="same", stride=2), ["'same' needs stride 1"]),
    (dict(padding="same", kernel_size=4), ["4x4", "numpy.pad"]),
    (dict(padding="full"), ["'same' or 'valid'"]),
    (dict(padding=(1.5, 1)), ["pair of ints"]),
    (dict(padding=True), ["pair of ints"]),
    (dict(kernel_size=0), [">= 1"]),
    (dict(groups=0), [">= 1"]),
    (dict(algo="bogus"), ["unknown convolution algorithm", "winograd4"]),
    (dict(algo="winograd4", stride=2), ["winograd4", "stride", "im2col"]),
    (dict(algo="fft", dilation=2), ["dilation", "im2col"]),
])
def test_conv2d_layer_rejects_bad_settings_when_built(kwargs, words):
    args = dict(in_channels=2, out_channels=2, kernel_size=3)
    args.update(kwargs)
    with pytest.raises(CnnlabError) as err:
        nn.Conv2d(**args)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_zero_size_operands_are_shape_errors():
    for xs, ws in (((1, 2, 8, 8), (2, 2, 0, 3)), ((1, 0, 8, 8), (2, 0, 3, 3)),
                   ((1, 2, 8, 8), (0, 2, 3, 3))):
        with pytest.raises(ShapeError, match="at least one"):
            F.conv2d_forward(np.zeros(xs, np.float32), np.zeros(ws, np.float32))


# ----------------------------------------------------------------------------- nn.Conv2d's cache

def _frozen_pair(algo="winograd4", seed=0, **kw):
    """A frozen Conv2d and an identical one that never caches (the reference)."""
    layers = [nn.Conv2d(6, 8, 3, padding=1, algo=algo, rng=np.random.default_rng(seed),
                        cache_weights=cache, **kw) for cache in (True, False)]
    for layer in layers:
        layer.freeze()
    return layers


def _fwd_bwd(layer, x, dy):
    y = layer.forward(x)
    return y, layer.backward(dy)


@pytest.mark.parametrize("algo", ["winograd2", "winograd4", "fft", "auto"])
def test_conv2d_frozen_weights_are_prepared_once_with_identical_results(algo, monkeypatch):
    cached, plain = _frozen_pair(algo)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 6, 13, 11)).astype(np.float32)
    dy = rng.standard_normal((2, 8, 13, 11)).astype(np.float32)
    first = _fwd_bwd(cached, x, dy)
    ref = _fwd_bwd(plain, x, dy)
    assert all(np.array_equal(a, b) for a, b in zip(first, ref))
    assert len(plain.weight_cache) == 0 and plain.weight.data.flags.writeable
    if algo != "auto":
        # Winograd: one U for both passes; FFT: one block matrix per pass
        assert len(cached.weight_cache) == (2 if algo == "fft" else 1)
        assert cached.weight_cache.nbytes > 0 and not cached.weight.data.flags.writeable
        a = ALGORITHMS[algo]
        monkeypatch.setattr(a, "prepare", lambda *args: pytest.fail("prepared twice"))
    x2 = rng.standard_normal((1, 6, 7, 9)).astype(np.float32)      # another image size
    dy2 = rng.standard_normal((1, 8, 7, 9)).astype(np.float32)
    if algo == "fft":
        monkeypatch.undo()                              # FFT spectra depend on the size
    again = _fwd_bwd(cached, x2, dy2)
    assert all(np.array_equal(a, b) for a, b in zip(again, _fwd_bwd(plain, x2, dy2)))
    assert cached.weight.grad is None and cached.bias.grad is None


def test_conv2d_cache_follows_new_weights_load_state_dict_and_unfreezing():
    cached, plain = _frozen_pair()
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 6, 10, 10)).astype(np.float32)
    dy = rng.standard_normal((1, 8, 10, 10)).astype(np.float32)

    def check():
        got, want = _fwd_bwd(cached, x, dy), _fwd_bwd(plain, x, dy)
        assert all(np.array_equal(a, b) for a, b in zip(got, want))

    check()
    # load_state_dict: new arrays
    other = nn.Conv2d(6, 8, 3, rng=np.random.default_rng(9))
    state = {k: v * 2 + 1 for k, v in other.state_dict().items()}
    for layer in (cached, plain):
        layer.load_state_dict(state)
    check()
    # assignment through the Parameter
    w = rng.standard_normal(cached.weight.shape).astype(np.float32)
    cached.weight.data, plain.weight.data = w, w.copy()
    check()
    # unfreeze, train a step (in place), freeze again
    before = cached.weight.data.copy()
    for layer in (cached, plain):
        layer.unfreeze()
        _fwd_bwd(layer, x, dy)
        SGD(layer.parameters(), lr=0.1).step()
        layer.zero_grad()
        layer.freeze()
    assert cached.weight.data is w and not np.array_equal(w, before)
    check()


def test_in_place_edits_of_a_cached_weight_are_refused_until_the_cache_is_cleared():
    cached, plain = _frozen_pair()
    x = np.random.default_rng(3).standard_normal((1, 6, 8, 8)).astype(np.float32)
    cached.forward(x)
    with pytest.raises(ValueError, match="read-only"):
        cached.weight.data *= 2                        # would leave U stale: refused
    cached.unfreeze()                                  # no forward yet: still refused
    with pytest.raises(ValueError, match="read-only"):
        cached.weight.data -= 1
    cached.freeze()
    cached.clear_weight_cache()
    assert len(cached.weight_cache) == 0 and cached.weight.data.flags.writeable
    cached.weight.data *= 2
    plain.weight.data *= 2
    assert np.array_equal(cached.forward(x), plain.forward(x))
    # a copy starts with an empty cache and a writeable weight
    twin = copy.deepcopy(cached)
    assert len(cached.weight_cache) == 1 and len(twin.weight_cache) == 0
    assert twin.weight.data.flags.writeable
    twin.weight.data += 1
    assert not np.array_equal(twin.forward(x), cached.forward(x))
    # a read-only array stays read-only when the cache lets go of it
    ro = np.array(plain.weight.data)
    ro.flags.writeable = False
    cached.weight.data = ro
    cached.forward(x)
    cached.clear_weight_cache()
    assert not ro.flags.writeable


def test_trainable_conv2d_shares_u_within_a_step_and_keeps_no_frozen_cache(monkeypatch):
    """A training step computes U once (forward), the data gradient runs on it, results are
    bit for bit those of the unshared passes, and the next step reuses U's memory."""
    def make(**kw):
        return nn.Conv2d(6, 8, 3, padding=1, algo="winograd4", rng=np.random.default_rng(0), **kw)
    layer, plain = make(), make(cache_weights=False)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 6, 9, 9)).astype(np.float32)
    dy = rng.standard_normal((1, 8, 9, 9)).astype(np.float32)
    calls = []
    real = ALGORITHMS["winograd4"].prepare
    monkeypatch.setattr(ALGORITHMS["winograd4"], "prepare",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    buffers = []
    for step in range(2):
        got = _fwd_bwd(layer, x, dy)
        want = _fwd_bwd(plain, x, dy)
        assert all(np.array_equal(a, b) for a, b in zip(got, want))
        assert np.array_equal(layer.weight.grad, plain.weight.grad)
        buffers.append(layer.weight_cache.step_u[0])
        for m in (layer, plain):
            m.weight.data -= 0.1 * m.weight.grad        # in place: allowed, nothing is frozen
            m.zero_grad()
    assert len(calls) == 2 and buffers[0] is buffers[1]   # once per step, same memory
    assert layer.weight_cache.nbytes == buffers[0].nbytes
    assert copy.deepcopy(layer).weight_cache.step_u is None   # copies do not carry it
    assert len(layer.weight_cache) == 0 and layer.weight.data.flags.writeable
    layer.eval()                                          # no backward expected: no U kept
    layer.forward(x)
    assert len(calls) == 2 and layer.weight_cache.step_u is None
    assert "cache_weights" not in repr(layer)
    assert "cache_weights=False" in repr(nn.Conv2d(2, 2, 3, cache_weights=False))


def test_select_step_forced_filed_and_measured(tmp_path):
    g = ConvGeometry.of((1, 32, 24, 24), (32, 32, 3, 3), 1, 1)
    Chooser, Choice, cache_key = chooser.Chooser, chooser.Choice, chooser.cache_key
    ch = Chooser()

    def plan(*args, **kw):
        p = ch.select_step(g, *args, **kw)
        return (p.forward.name, p.backward_data and p.backward_data.name,
                p.backward_weight and p.backward_weight.name, p.share_u, p.keep_v)

    # forced: share and keep whenever the algorithm can, within the workspace limit
    assert plan("winograd4") == ("winograd4", "winograd4", "winograd4", True, True)
    assert plan("winograd2", need_dx=False) == ("winograd2", None, "winograd2", False, True)
    assert plan("im2col") == ("im2col", "im2col", "im2col", False, True)   # keeps its columns
    ch.workspace_limit = 1000
    assert plan("winograd4")[3:] == (False, False)
    ch.workspace_limit = chooser.DEFAULT_WORKSPACE_LIMIT
    # a filed step choice is used as it is (its code names the plan)
    ch.choices[cache_key(g, "forward", np.float32, ch.workspace_limit)] = \
        Choice("im2col", "measured", {"im2col": 1.0, "winograd4": 1.2})
    ch.choices[cache_key(g, "step|dx|dw", np.float32, ch.workspace_limit)] = \
        Choice("winograd4,winograd4,im2col,U,", "measured", {})
    assert plan() == ("winograd4", "winograd4", "im2col", True, False)
    # measured: whole steps of each candidate plan, the fastest kept, and filed on disk
    fresh = Chooser()
    fresh.enable_disk_cache(tmp_path / "algos.json")
    lines = []
    fresh.notify = lines.append
    p = fresh.select_step(g)
    key = cache_key(g, "step|dx|dw", np.float32, fresh.workspace_limit)
    choice = fresh.choices[key]
    assert choice.how == "measured" and len(choice.times_ms) >= 2
    assert choice.algo == min(choice.times_ms, key=choice.times_ms.get) == p.code()
    assert chooser.StepPlan.from_code(p.code()) == p
    # one line for the whole selection (its passes' timings included), none when filed
    assert len(lines) == 1 and p.describe() in lines[0], lines
    assert "x 1x32x24x24, w 32x32x3x3, pad 1" in lines[0]
    assert f"{len(choice.times_ms)} plans timed as whole steps" in lines[0]
    fresh.select_step(g)
    again = Chooser()
    again.enable_disk_cache(tmp_path / "algos.json")
    again.notify = lines.append
    assert again.select_step(g) == p and again.choices[key].how == "disk"
    assert len(lines) == 1
    # a pass chosen on its own reports itself
    g2 = ConvGeometry.of((1, 16, 32, 32), (16, 16, 3, 3), padding=1)
    pick = fresh.select(g2, "backward_data")
    assert len(lines) == 2 and lines[1].startswith("conv chooser: backward data of x 1x16x32x32")
    assert f": {pick.name} (" in lines[1]


def test_training_step_keeps_v_with_identical_results():
    """F.conv2d_forward(for_backward=True) with a forced algorithm: Winograd's U shared and V
    kept, im2col's columns kept, every gradient bit for bit that of the passes run apart
    (groups and odd sizes too; im2col also strided, on one thread and on several)."""
    rng = np.random.default_rng(5)
    for shape, wshape, pad, groups in [((2, 6, 9, 11), (8, 6, 3, 3), 1, 1),
                                       ((1, 8, 10, 7), (8, 4, 3, 3), 0, 2)]:
        x = rng.standard_normal(shape).astype(np.float32)
        w = rng.standard_normal(wshape).astype(np.float32)
        b = rng.standard_normal(wshape[0]).astype(np.float32)
        for algo in ("winograd2", "winograd4", "im2col"):
            y, cache = F.conv2d_forward(x, w, b, 1, pad, 1, groups, algo, for_backward=True)
            step = cache[5]
            assert step.plan.share_u == (algo != "im2col") and step.plan.keep_v and step.saved
            dy = rng.standard_normal(y.shape).astype(np.float32)
            got = F.conv2d_backward(dy, cache)
            y0, cache0 = F.conv2d_forward(x, w, b, 1, pad, 1, groups, algo)
            want = F.conv2d_backward(dy, cache0)
            assert np.array_equal(y, y0)
            assert all(np.array_equal(a, c) for a, c in zip(got, want))
    x = rng.standard_normal((3, 5, 13, 12)).astype(np.float32)
    w = rng.standard_normal((7, 5, 3, 3)).astype(np.float32)
    for n_threads in (1, 2):
        old = threads.get_num_threads()
        threads.set_num_threads(n_threads)
        try:
            y, cache = F.conv2d_forward(x, w, None, 2, 1, algo="im2col", for_backward=True)
            dy = rng.standard_normal(y.shape).astype(np.float32)
            got = F.conv2d_backward(dy, cache)
            want = F.conv2d_backward(dy, F.conv2d_forward(x, w, None, 2, 1, algo="im2col")[1])
        finally:
            threads.set_num_threads(old)
        assert all(a is c or np.array_equal(a, c) for a, c in zip(got, want))


# ----------------------------------------------------------------------------- threads

def test_parallel_map_keeps_order_and_nests_serially():
    def inner(i):
        return threads.parallel_map(lambda j: (i, j), range(3))
    out = threads.parallel_map(inner, range(5))
    assert out == [[(i, j) for j in range(3)] for i in range(5)]


@pytest.mark.parametrize("shape", [(2, 8, 23, 21, 8, 3, 3, 1, 1, 1), (1, 6, 9, 13, 4, 3, 3, 2, 1, 2),
                                   (1, 3, 17, 12, 5, 3, 3, 1, 1, 1),
                                   (1, 40, 7, 6, 24, 3, 3, 1, 1, 1),    # im2col: channel split
                                   (2, 37, 5, 9, 20, 3, 3, 2, 1, 1)], ids=str)
def test_results_do_not_depend_on_the_thread_count(shape):
    g, args = _case(shape, seed=3)
    args32 = {p: [v.astype(np.float32) for v in a] for p, a in args.items()}
    old = conv.get_num_threads()
    try:
        for name in ("im2col", "winograd4", "winograd2", "fft"):
            if any(ALGORITHMS[name].supports(g, p) for p in PASSES):
                continue
            conv.set_num_threads(1)
            one = [ALGORITHMS[name].run(p, *args32[p], g) for p in PASSES]
            for n in (2, 3):
                conv.set_num_threads(n)
                more = [ALGORITHMS[name].run(p, *args32[p], g) for p in PASSES]
                for a, b in zip(one, more):
                    assert np.allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(a).max()), (name, n)
    finally:
        conv.set_num_threads(old)


def test_im2col_runs_on_the_pool_not_on_blas_threads(monkeypatch):
    """With a worker pool, im2col's GEMMs run inside pool regions (BLAS on one thread: its
    idle threads busy-wait after a multi-threaded call and would take a core from the
    pool), cut into one block per thread (forward, weight gradient) or channel blocks
    within groups (data gradient)."""
    if not threads.can_parallelize():
        pytest.skip("needs threadpoolctl")
    g, args = _case((1, 6, 15, 11, 4, 3, 3, 1, 1, 2), seed=5)
    calls = []
    real = threads.blas_threads

    def spy(n):
        calls.append(n)
        return real(n)
    monkeypatch.setattr(threads, "blas_threads", spy)
    old = conv.get_num_threads()
    try:
        conv.set_num_threads(2)
        for p in PASSES:
            calls.clear()
            ALGORITHMS["im2col"].run(p, *args[p], g)
            assert calls and set(calls) == {1}, p
        assert len(gemm.blocks(g, 8, 2)) == 2 and gemm.blocks(g, 8) == [(0, 1, 0, g.ho)]
        assert gemm._channel_blocks(g, 2) == [(0, 3), (3, 6)]
        assert gemm._channel_blocks(g, 4) == [(0, 1), (1, 3), (3, 4), (4, 6)]
        wide = ConvGeometry.of((5, 2, 8, 8), (3, 2, 3, 3), padding=1)
        parts = gemm.blocks(wide, 8, 2)
        assert len(parts) == 2 and [(n0, n1) for n0, n1, _, _ in parts] == [(0, 2), (2, 5)]
    finally:
        conv.set_num_threads(old)


@pytest.mark.parametrize("shape", [(1, 40, 7, 6, 24, 3, 3, 1, 1, 1), (2, 37, 5, 9, 20, 3, 3, 2, 1, 1),
                                   (3, 33, 6, 5, 17, 3, 3, 1, 2, 1)], ids=str)
def test_im2col_small_maps_split_channels_over_threads(shape):
    """Small output maps (conv5 at 14x14): forward and weight gradient cut the input
    channels (forward: SPLIT_BLOCKS partial outputs added, on any thread count; weight
    gradient: disjoint columns of dW, one block per thread), within the float32 bound of
    direct convolution; the forward is the same bit for bit on 1, 2 and 3 threads."""
    if not threads.can_parallelize():
        pytest.skip("needs threadpoolctl")
    g, args = _case(shape, seed=11)
    old = conv.get_num_threads()
    try:
        conv.set_num_threads(2)
        assert gemm._split_channels(g, 4)
        for p in PASSES:
            ref = ALGORITHMS["direct"].run(p, *args[p], g)
            out = ALGORITHMS["im2col"].run(p, *(v.astype(np.float32) for v in args[p]), g)
            assert out.shape == ref.shape and out.dtype == np.float32
            assert _rel(out, ref) <= FLOAT32_BOUND["im2col"], (p, _rel(out, ref))
            assert _rel(ALGORITHMS["im2col"].run(p, *args[p], g), ref) <= 1e-10, p
        x32, w32 = (v.astype(np.float32) for v in args["forward"])
        ys = []
        for n in (1, 2, 3):
            conv.set_num_threads(n)
            ys.append(ALGORITHMS["im2col"].run("forward", x32, w32, g))
        assert all(np.array_equal(ys[0], y) for y in ys[1:])
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


def test_step_plans_survive_checkpoints_and_reject_bad_filed_entries(tmp_path):
    """A resumed run gets the step plans of the original (trainer checkpoints carry them);
    a corrupt or foreign step entry in the disk cache is ignored, never run."""
    from cnnlab.train.trainer import _conv_choices, _restore_conv_choices
    g = ConvGeometry.of((1, 32, 24, 24), (32, 32, 3, 3), 1, 1)
    key = chooser.cache_key(g, "step|dx|dw", np.float32, chooser.CHOOSER.workspace_limit)
    code = "winograd4,winograd4,winograd4,U,V"
    old = dict(chooser.CHOOSER.choices)
    try:
        chooser.CHOOSER.choices[key] = chooser.Choice(code, "measured", {code: 1.0})
        saved = _conv_choices()
        chooser.CHOOSER.choices.clear()
        _restore_conv_choices(saved)
        assert chooser.CHOOSER.select_step(g).code() == code
    finally:
        chooser.CHOOSER.choices.clear()
        chooser.CHOOSER.choices.update(old)
    path = tmp_path / "algos.json"
    writer = chooser.Chooser()
    writer.enable_disk_cache(path)
    rng = np.random.default_rng(6)
    x = rng.standard_normal(g.x_shape).astype(np.float32)
    w = rng.standard_normal(g.w_shape).astype(np.float32)
    dy = rng.standard_normal(g.y_shape).astype(np.float32)
    want = ALGORITHMS["direct"].backward_weight(dy, x, g)
    for bad in (None, 5, "", "fft,fft,fft,U,V", "direct,direct,direct,,V",
                "winograd4,winograd2,winograd4,U,", "fft,fft,fft,U,", "im2col,-,im2col,,V",
                "nosuch,im2col,im2col,,"):
        writer._save(key, chooser.Choice(bad, "measured", {}))
        reader = chooser.Chooser(measure=False)
        reader.enable_disk_cache(path)
        plan = reader.select_step(g)
        assert plan.forward.name != "direct" and plan.backward_data is not None
        _, state = step_forward(plan, x, w, g)
        _, dw = step_backward(state, dy, x, w, g)
        assert np.allclose(dw, want, rtol=1e-3, atol=1e-3), bad


def test_step_with_an_algorithm_whose_prepare_takes_no_reuse():
    """Algorithms written to the older ``prepare(w, g, pass_)`` still share U in a step."""
    base = ALGORITHMS["winograd4"]

    class OldStyle(conv.ConvAlgorithm):
        name = "oldstyle-test"

        def supports(self, g, pass_):
            return base.supports(g, pass_)

        def forward(self, x, w, g, prepared=None):
            return base.forward(x, w, g, prepared=prepared)

        def backward_data(self, dy, w, g, prepared=None):
            return base.backward_data(dy, w, g, prepared=prepared)

        def backward_weight(self, dy, x, g):
            return base.backward_weight(dy, x, g)

        def prepared_key(self, g, pass_):
            return base.prepared_key(g, pass_)

        def prepared_bytes(self, g, pass_, itemsize):
            return base.prepared_bytes(g, pass_, itemsize)

        def prepare(self, w, g, pass_):
            return base.prepare(w, g, pass_)

    conv.register(OldStyle())
    try:
        layer = nn.Conv2d(4, 6, 3, padding=1, algo="oldstyle-test", rng=np.random.default_rng(0))
        x = np.random.default_rng(1).standard_normal((2, 4, 7, 7)).astype(np.float32)
        for _ in range(2):
            y = layer.forward(x)
            assert layer._cache[5].plan.share_u and not layer._cache[5].plan.keep_v
            layer.backward(np.ones_like(y))
    finally:
        del ALGORITHMS["oldstyle-test"]


def test_im2col_columns_kept_on_small_maps_are_used_at_any_thread_count(monkeypatch):
    g = ConvGeometry.of((1, 64, 8, 8), (16, 64, 3, 3), 1, 1)
    rng = np.random.default_rng(7)
    x = rng.standard_normal(g.x_shape).astype(np.float32)
    w = rng.standard_normal(g.w_shape).astype(np.float32)
    dy = rng.standard_normal(g.y_shape).astype(np.float32)
    a = ALGORITHMS["im2col"]
    real = gemm.im2col
    built = []
    monkeypatch.setattr(gemm, "im2col", lambda *args, **kw: built.append(1) or real(*args, **kw))
    old = threads.get_num_threads()
    try:
        for n in (1, 2, 3):
            threads.set_num_threads(n)
            saved = {}
            a.forward(x, w, g, save=saved)
            built.clear()
            dw = a.backward_weight(dy, x, g, saved=saved)
            assert built == [], n                     # the forward's columns, not rebuilt
            assert np.array_equal(dw, a.backward_weight(dy, x, g))
    finally:
        threads.set_num_threads(old)


@pytest.mark.parametrize("name", ["winograd2", "winograd4", "fft"])
def test_algorithm_objects_refuse_what_they_cannot_run(name):
    """Called directly (not through F.conv2d_forward or a module), an algorithm checks its
    own supports(): Winograd on stride 2 computed a wrong result before."""
    g = ConvGeometry.of((1, 2, 8, 8), (2, 2, 3, 3), stride=2, padding=1)
    a, x, w, dy = ALGORITHMS[name], np.ones(g.x_shape), np.ones(g.w_shape), np.ones(g.y_shape)
    for call in (lambda: a.forward(x, w, g), lambda: a.backward_data(dy, w, g),
                 lambda: a.backward_weight(dy, x, g)):
        with pytest.raises(UnsupportedConfigError, match="stride.*im2col"):
            call()


def test_off_the_cpu_auto_runs_im2col_and_numpy_only_algorithms_refuse(fresh_chooser, monkeypatch):
    """For arrays of another module than numpy (CuPy), auto does not time anything (its
    timings are of numpy code) and picks im2col; Winograd and FFT, written for numpy,
    refuse with a clear error instead of failing inside numpy calls."""
    import types
    gpu = types.SimpleNamespace(__name__="cupy")
    monkeypatch.setattr(fresh_chooser, "_measure", lambda *a: pytest.fail("timed"))
    g = ConvGeometry.of((2, 32, 28, 28), (32, 32, 3, 3), padding=1)
    for p in PASSES:
        assert conv.select(g, p, xp=gpu) is ALGORITHMS["im2col"]
        assert conv.select(g, p, "direct", xp=gpu) is ALGORITHMS["direct"]
        for name in ("winograd4", "fft"):
            with pytest.raises(UnsupportedConfigError, match="numpy arrays only, not cupy"):
                conv.select(g, p, name, xp=gpu)
    plan = conv.select_step(g, xp=gpu)
    assert (plan.forward.name, plan.backward_data.name, plan.backward_weight.name) == \
        ("im2col", "im2col", "im2col")
    with conv.default_algo("winograd2"):
        with pytest.raises(UnsupportedConfigError, match="global default"):
            conv.select_step(g, xp=gpu)
