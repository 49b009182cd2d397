"""Augmentation transforms, the geometric warp path and test-time augmentation crops."""
import numpy as np
import pytest

from cnnlab.data.geometric import (RandomLens, RandomRotation, RandomShear, RandomStretch,
                                   RandomTranslate, RandomWarp, Warp, rotation_matrix,
                                   scale_matrix, shear_matrix, translation_matrix, warp)
from cnnlab.data.imageops import resize, resize_short_side, to_float_batch
from cnnlab.data.transforms import (ColorJitter, Compose, HorizontalFlip, PCALighting, RandomApply,
                                    RandomChoice, RandomCrop, RandomResizedCrop, ScaleAugmentation,
                                    apply_to_batch, pca_lighting_basis)
from cnnlab.data.tta import multiscale_ten_crop, softmax, ten_crop, ten_crop_positions, tta_predict
from cnnlab.errors import ShapeError


def rng(seed=0):
    return np.random.default_rng(seed)


@pytest.fixture
def rgb():
    return rng(1).integers(0, 256, size=(12, 15, 3), dtype=np.uint8)


@pytest.fixture
def gray():
    return rng(2).integers(0, 256, size=(12, 15), dtype=np.uint8)


def all_transforms(image):
    return [
        HorizontalFlip(), RandomCrop((10, 11), padding=2), RandomResizedCrop(8),
        ScaleAugmentation((16, 20), 9), ColorJitter(0.4, 0.4, 0.4),
        RandomTranslate(0.2), RandomRotation(25), RandomStretch(0.3), RandomShear(12),
        RandomLens(0.25), RandomWarp(0.1, 10, 0.1, 5, 0.1),
        Compose([RandomRotation(10), RandomLens(0.1), HorizontalFlip(), RandomCrop(10, padding=1)]),
        RandomApply(ColorJitter(0.5), p=0.5), RandomChoice([HorizontalFlip(1.0), RandomShear(10)]),
    ] + ([PCALighting(*pca_lighting_basis(image), std=0.5)] if image.ndim == 3 else [])


@pytest.mark.parametrize("kind", ["rgb", "gray", "float"])
def test_same_seed_same_output_dtype_and_rank_kept(kind, rgb, gray):
    image = {"rgb": rgb, "gray": gray, "float": rgb.astype(np.float32) / 255}[kind]
    for t in all_transforms(image):
        a, b = t(image, rng(7)), t(image, rng(7))
        assert np.array_equal(a, b), t
        assert a.dtype == image.dtype and a.ndim == image.ndim, t
        if a.ndim == 3:
            assert a.shape[2] == image.shape[2]


def test_random_transforms_vary_with_the_seed(rgb):
    for t in [RandomCrop(10, padding=3), RandomRotation(30), ColorJitter(0.5), RandomLens(0.3)]:
        outs = {t(rgb, rng(s)).tobytes() for s in range(6)}
        assert len(outs) > 1, t


def test_flip_is_exact(rgb, gray):
    assert np.array_equal(HorizontalFlip(1.0)(rgb, rng()), rgb[:, ::-1])
    assert np.array_equal(HorizontalFlip(1.0)(gray, rng()), gray[:, ::-1])
    assert np.array_equal(HorizontalFlip(0.0)(rgb, rng()), rgb)


def test_random_crop_is_a_window_of_the_padded_image(rgb):
    padded = np.pad(rgb, ((3, 3), (3, 3), (0, 0)))
    for seed in range(5):
        out = RandomCrop((12, 15), padding=3)(rgb, rng(seed))
        hits = [(i, j) for i in range(7) for j in range(7)
                if np.array_equal(padded[i:i + 12, j:j + 15], out)]
        assert hits
    assert np.array_equal(RandomCrop((12, 15))(rgb, rng()), rgb)


def test_resized_crop_and_scale_augmentation_shapes(rgb):
    assert RandomResizedCrop((7, 9))(rgb, rng()).shape == (7, 9, 3)
    full = RandomResizedCrop((12, 15), scale=(1.0, 1.0), ratio=(15 / 12, 15 / 12))
    assert np.array_equal(full(rgb, rng()), rgb)
    t = RandomResizedCrop(5)
    for seed in range(20):
        top, left, h, w = t.window(12, 15, rng(seed))
        assert 0 <= top and top + h <= 12 and 0 <= left and left + w <= 15
    out = ScaleAugmentation((16, 24), 14)(rgb, rng())
    assert out.shape == (14, 14, 3)


def test_scale_augmentation_crops_from_resized_short_side():
    image = rng().integers(0, 256, (30, 40, 3), dtype=np.uint8)
    t = ScaleAugmentation((20, 20), 16)
    resized = resize_short_side(image, 20)
    assert resized.shape == (20, 27, 3)
    out = t(image, rng(3))
    assert any(np.array_equal(resized[i:i + 16, j:j + 16], out) for i in range(5) for j in range(12))


def test_color_jitter_math(rgb):
    assert np.array_equal(ColorJitter()(rgb, rng()), rgb)
    dark = (rgb // 3).astype(np.uint8)                       # no clipping at 1.5x
    out = ColorJitter(brightness=0.5)(dark, rng(4)).astype(np.float64)
    f = rng(4).uniform(0.5, 1.5)
    assert np.abs(out - dark * f).max() <= 0.5 + 1e-9
    gray3 = np.repeat(dark[:, :, :1], 3, axis=2)             # saturation leaves grey alone
    assert np.array_equal(ColorJitter(saturation=0.9)(gray3, rng()), gray3)
    x = rgb.astype(np.float32) / 255                         # float: contrast keeps the mean luma
    y = ColorJitter(contrast=0.5)(x, rng(5))
    luma = np.array([0.299, 0.587, 0.114], np.float32)
    assert np.isclose((y @ luma).mean(), (x @ luma).mean(), atol=1e-5)


def test_pca_basis_on_synthetic_data():
    q, _ = np.linalg.qr(rng(3).standard_normal((3, 3)))
    coeffs = rng(4).standard_normal((20000, 3)) * np.array([0.12, 0.05, 0.02])
    pixels = 0.5 + coeffs @ q.T                              # principal axes = columns of q
    vals, vecs = pca_lighting_basis(pixels.reshape(100, 200, 1, 3).transpose(0, 2, 1, 3))
    assert np.allclose(vals, [0.0144, 0.0025, 0.0004], rtol=0.05)
    assert np.allclose(np.abs(np.sum(vecs * q, axis=0)), 1.0, atol=1e-3)
    assert np.all(np.diff(vals) <= 0)
    u8 = np.clip(np.rint(pixels * 255), 0, 255).astype(np.uint8).reshape(1, 100, 200, 3)
    assert np.allclose(pca_lighting_basis(u8)[0], vals, rtol=0.05)


def test_pca_lighting_adds_one_offset_per_image():
    image = np.full((6, 7, 3), 100, np.uint8)
    vals, vecs = np.array([0.2, 0.05, 0.01]), np.linalg.qr(rng(5).standard_normal((3, 3)))[0]
    t = PCALighting(vals, vecs, std=0.1)
    out = t(image, rng(9)).astype(np.float64)
    expected = vecs @ (rng(9).normal(0, 0.1, 3) * vals) * 255
    assert np.allclose(out - 100, np.rint(100 + expected) - 100)
    with pytest.raises(ShapeError):
        t(image[:, :, 0], rng())


def test_affine_identity_is_identity(rgb, gray):
    assert np.array_equal(warp(rgb, np.eye(3)), rgb)
    assert np.array_equal(RandomWarp()(gray, rng()), gray)
    assert np.array_equal(Warp.affine(translation_matrix(0, 0)).apply(rgb.astype(np.float32)),
                          rgb.astype(np.float32))


def test_lens_zero_is_identity_and_barrel_pulls_inward(rgb):
    assert np.array_equal(warp(rgb, lens=0.0), rgb)
    assert np.array_equal(RandomLens((0.0, 0.0))(rgb, rng()), rgb)
    grid = Warp.lens(0.2).sampling_grid(11, 11)
    assert np.allclose(grid[:, 5, 5], [5, 5])                # centre fixed
    assert np.allclose(grid[:, 0, 0], [5 - 5 * 1.2, 5 - 5 * 1.2])   # corner r=1 sampled at 1.2


def test_rotation_by_90_matches_rot90():
    image = rng(6).integers(0, 256, (9, 9, 3), dtype=np.uint8)
    out = warp(image, rotation_matrix(90))
    assert np.array_equal(out[1:-1, 1:-1], np.rot90(image)[1:-1, 1:-1])
    assert np.abs(out.astype(int) - np.rot90(image).astype(int)).max() <= 1
    back = warp(out.astype(np.float64), rotation_matrix(-90))
    assert np.allclose(back[1:-1, 1:-1], image[1:-1, 1:-1])


def test_integer_translation_shifts_pixels(gray):
    out = warp(gray, translation_matrix(2, 1), fill=7)
    assert np.array_equal(out[1:, 2:], gray[:-1, :-2])
    assert np.all(out[0] == 7) and np.all(out[:, :2] == 7)


def test_stretch_and_shear_matrices_move_points_as_documented():
    p = np.array([2.0, 3.0, 1.0])
    assert np.allclose(scale_matrix(2, 0.5) @ p, [4, 1.5, 1])
    assert np.allclose(shear_matrix(45, 0) @ p, [5, 3, 1])
    grid = Warp.affine(scale_matrix(2.0, 1.0)).sampling_grid(5, 9)
    assert np.allclose(grid[1, 2], 4 + (np.arange(9) - 4) / 2)     # output x samples input x/2


def test_warps_blend_with_the_fill_at_the_edge():
    """A tiny rotation, shrink or sub-pixel shift no longer blanks whole border rows: the
    image continues with the fill beyond its edge and bilinear sampling blends the two."""
    from cnnlab.data.geometric import rotation_matrix, scale_matrix, translation_matrix, warp
    x = np.full((32, 32), 200, np.uint8)
    assert not (warp(x, rotation_matrix(1)) == 0).any()
    assert not (warp(x, scale_matrix(0.999)) == 0).any()
    col = warp(np.full((5, 6), 100, np.uint8), translation_matrix(0.3, 0))[:, 0]
    assert np.all(col == 70)
    with pytest.raises(ValueError, match="finite"):
        RandomRotation(float("nan"))


def test_color_jitter_leaves_alpha_alone():
    rgba = np.random.default_rng(0).integers(0, 256, (6, 5, 4), dtype=np.uint8)
    out = ColorJitter(brightness=0.5, contrast=0.5, saturation=0.5)(rgba, np.random.default_rng(2))
    assert out.shape == rgba.shape and np.array_equal(out[:, :, 3], rgba[:, :, 3])


def test_compose_fuses_consecutive_warps_into_one_resampling(rgb):
    there_and_back = Compose([RandomRotation((30, 30)), RandomRotation((-30, -30))])
    assert np.array_equal(there_and_back(rgb, rng()), rgb)         # one exact identity, no blur
    two = Compose([RandomRotation(20), RandomLens(0.2), RandomTranslate(0.1)])
    r1, r2 = rng(11), rng(11)
    w = RandomRotation(20).sample_warp(rgb.shape, r2)
    w = w.then(RandomLens(0.2).sample_warp(rgb.shape, r2)).then(RandomTranslate(0.1).sample_warp(rgb.shape, r2))
    assert np.array_equal(two(rgb, r1), w.apply(rgb))
    assert len(w.steps) == 3                                       # affine, lens, affine


def test_random_apply_and_choice(rgb):
    assert np.array_equal(RandomApply(HorizontalFlip(1.0), p=0.0)(rgb, rng()), rgb)
    assert np.array_equal(RandomApply(HorizontalFlip(1.0), p=1.0)(rgb, rng()), rgb[:, ::-1])
    choice = RandomChoice([HorizontalFlip(1.0), ColorJitter()], p=[0, 1])
    assert np.array_equal(choice(rgb, rng()), rgb)


def test_apply_to_batch_matches_per_sample_calls():
    batch = rng(8).standard_normal((4, 3, 10, 10)).astype(np.float32)
    t = Compose([HorizontalFlip(), RandomCrop(8, padding=1), RandomRotation(10)])
    out = apply_to_batch(t, batch, rng(1))
    r = rng(1)
    expected = np.stack([t(s.transpose(1, 2, 0), r).transpose(2, 0, 1) for s in batch])
    assert out.shape == (4, 3, 8, 8) and out.dtype == np.float32
    assert np.array_equal(out, expected)
    u8 = rng(2).integers(0, 256, (3, 10, 10), dtype=np.uint8)
    assert apply_to_batch(RandomCrop(6), u8, rng(), layout="NHWC").shape == (3, 6, 6)
    with pytest.raises(ShapeError):
        apply_to_batch(RandomResizedCrop(4), batch[0], rng())


@pytest.mark.parametrize("make, err", [
    (lambda: HorizontalFlip(p=1.5), ValueError),
    (lambda: RandomCrop(0), ValueError),
    (lambda: RandomCrop(4, padding=-1), ValueError),
    (lambda: RandomCrop(4, pad_mode="wrap"), ValueError),
    (lambda: RandomResizedCrop(4, scale=(0.5, 0.1)), ValueError),
    (lambda: ScaleAugmentation((100, 200), 224), ValueError),
    (lambda: ColorJitter(brightness=-0.1), ValueError),
    (lambda: PCALighting(np.ones(2), np.eye(3)), ShapeError),
    (lambda: RandomWarp(lens=(-0.4, 0.1)), ValueError),
    (lambda: RandomShear((-95, 10)), ValueError),
    (lambda: RandomStretch(1.5), ValueError),
    (lambda: RandomTranslate(2.0), ValueError),
    (lambda: RandomChoice([]), ValueError),
    (lambda: Compose([3]), TypeError),
    (lambda: Warp.affine(np.zeros((3, 3)) + np.array([0, 0, 1])), ValueError),
])
def test_parameter_validation(make, err):
    with pytest.raises(err):
        make()


def test_bad_inputs_are_reported(rgb):
    with pytest.raises(TypeError, match="Generator"):
        HorizontalFlip()(rgb, 0)
    with pytest.raises(ShapeError):
        HorizontalFlip()(np.zeros((2, 3, 4, 5), np.uint8), rng())
    with pytest.raises(ShapeError, match="larger"):
        RandomCrop(20)(rgb, rng())


def test_resize_and_float_batch_helpers(rgb):
    assert resize(rgb, (6, 5)).shape == (6, 5, 3)
    assert resize(rgb[:, :, :2], (6, 5)).shape == (6, 5, 2)
    assert resize(rgb.astype(np.float32), (6, 5)).dtype == np.float32
    x = to_float_batch(np.stack([rgb, rgb]), mean=[0.5, 0.4, 0.3], std=0.2)
    assert x.shape == (2, 3, 12, 15) and x.dtype == np.float32
    assert np.allclose(x[0, 1], (rgb[:, :, 1] / 255 - 0.4) / 0.2, atol=1e-5)


# --- test-time augmentation --------------------------------------------------------

def test_ten_crop_positions_and_flips():
    image = np.arange(5 * 7 * 2, dtype=np.uint8).reshape(5, 7, 2)
    assert ten_crop_positions(5, 7, 3) == [(0, 0), (0, 4), (2, 0), (2, 4), (1, 2)]
    crops = ten_crop(image, 3)
    assert crops.shape == (10, 3, 3, 2)
    for k, (top, left) in enumerate(ten_crop_positions(5, 7, 3)):
        assert np.array_equal(crops[k], image[top:top + 3, left:left + 3])
        assert np.array_equal(crops[k + 5], image[top:top + 3, left:left + 3][:, ::-1])
    with pytest.raises(ShapeError):
        ten_crop(image, 6)


def test_multiscale_ten_crop_shapes():
    image = rng().integers(0, 256, (20, 30, 3), dtype=np.uint8)
    crops = multiscale_ten_crop(image, scales=(8, 10, 16), size=8)
    assert crops.shape == (30, 8, 8, 3)
    assert np.array_equal(crops[10:20], ten_crop(resize_short_side(image, 10), 8))
    with pytest.raises(ValueError):
        multiscale_ten_crop(image, scales=(6, 10), size=8)


def test_tta_predict_averages_softmax_over_crops():
    images = rng(3).integers(0, 256, (3, 9, 11), dtype=np.uint8)
    w = rng(4).standard_normal((3, 5))

    def predict(x):                       # (K, 1, h, w) -> (K, 5): column means -> logits
        assert x.dtype == np.float32 and x.ndim == 4
        return x.mean(axis=(1, 2))[:, :3] @ w

    probs = tta_predict(predict, images, mode="ten_crop", size=6)
    assert probs.shape == (3, 5) and np.allclose(probs.sum(axis=1), 1)
    expected = softmax(predict(to_float_batch(ten_crop(images[1], 6)))).mean(axis=0)
    assert np.allclose(probs[1], expected)
    center = tta_predict(predict, images, mode="center", size=6)
    assert np.allclose(center[0], softmax(predict(to_float_batch(images[0][1:7, 2:8][None])))[0])
    multi = tta_predict(predict, list(images), mode="multiscale", size=6, scales=(9, 12))
    assert multi.shape == (3, 5)
    with pytest.raises(ValueError):
        tta_predict(predict, images, mode="twelve")
