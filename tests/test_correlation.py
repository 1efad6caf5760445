"""Sub-pixel pair measurement (phase correlation, NCC-checked peaks) against known shifts.

Window pairs are cut from one speckle scene and from the same scene shifted by an exact
sub-pixel amount (Fourier shift of a periodic scene, so the only error is the method's), with the
sign convention of :func:`measure_shifts`: ``a(x) ≈ b(x - shift)``, i.e. ``b`` samples the scene
at ``x + shift``.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from linumpy_motor.register import correlation
from linumpy_motor.register.correlation import PairShift, measure_shifts, ncc_at

SCENE = 256
ORIGIN = 60


def speckle_scene(seed: int) -> np.ndarray:
    """Fully developed speckle on a smooth structure, periodic (so Fourier shifts are exact)."""
    rng = np.random.default_rng(seed)

    def smooth(sigma):
        return ndimage.gaussian_filter(rng.standard_normal((SCENE, SCENE)), sigma, mode="wrap")

    structure = smooth(8)
    structure = (structure - structure.min()) / np.ptp(structure)
    return np.abs(smooth(1.0) + 1j * smooth(1.0)) * (0.3 + structure)


def shifted(scene: np.ndarray, shift) -> np.ndarray:
    """``scene`` sampled at ``x + shift`` (exact for a periodic band-limited scene)."""
    return np.fft.ifft2(ndimage.fourier_shift(np.fft.fft2(scene), (-shift[0], -shift[1]))).real


def window_pair(scene: np.ndarray, shape, shift, noise: float = 0.0, seed: int = 0):
    """Windows ``a`` and ``b`` with ``a(x) = b(x - shift)`` (plus independent noise)."""
    rng = np.random.default_rng(seed)
    rows, cols = slice(ORIGIN, ORIGIN + shape[0]), slice(ORIGIN, ORIGIN + shape[1])
    a = scene[rows, cols]
    b = shifted(scene, shift)[rows, cols]
    return (a + rng.normal(0, noise * a.mean(), a.shape), b + rng.normal(0, noise * b.mean(), b.shape))


def bound(shape) -> tuple[int, int]:
    return tuple(min(15, size // 2 - 1) for size in shape)


# (window shape, shift): 160x32 windows are the overlap of horizontal neighbours, 32x160 of vertical
# ones; shifts across the narrow axis stay within what jitter and calibration errors give (±1.5 px),
# along the long axis up to what the scan rotation gives (a few px).
SUBPIXEL_CASES = [
    ((160, 32), (0.3, -0.7)),
    ((160, 32), (-3.35, 0.25)),
    ((160, 32), (4.6, 1.45)),
    ((160, 32), (-0.5, -1.1)),
    ((32, 160), (-0.7, 0.3)),
    ((32, 160), (0.25, 1.56)),
    ((32, 160), (1.45, -4.6)),
    ((32, 160), (-1.1, -0.5)),
    ((64, 64), (2.5, -2.5)),
    ((160, 41), (0.4, -0.6)),  # an odd FFT frame (45 px): a half spectrum without a Nyquist column
]


@pytest.mark.parametrize(("shape", "shift"), SUBPIXEL_CASES)
def test_a_single_pair_is_measured_within_0_05_px(shape, shift):
    seed = SUBPIXEL_CASES.index((shape, shift))
    a, b = window_pair(speckle_scene(seed), shape, shift, noise=0.05, seed=seed)
    (result,) = measure_shifts(a[None], b[None], bound(shape))
    assert isinstance(result, PairShift)
    assert np.abs(np.subtract(result.shift, shift)).max() <= 0.05
    assert result.ncc > 0.6  # NCC at the nearest integer shift


def test_integer_shift_sign_convention():
    scene = speckle_scene(42)
    a = scene[ORIGIN:ORIGIN + 160, ORIGIN:ORIGIN + 32]
    b = scene[ORIGIN + 3:ORIGIN + 163, ORIGIN - 2:ORIGIN + 30]  # b(x) = scene(x + (3, -2))
    (result,) = measure_shifts(a[None], b[None], (15, 15))
    assert result.shift == pytest.approx((3, -2), abs=0.05)
    assert result.ncc == pytest.approx(ncc_at(a, b, (3, -2)))


def test_a_batch_gives_the_same_shifts_as_single_pairs():
    shape = (160, 32)
    shifts = [(0.3, -0.7), (-2.2, 0.9), (1.1, 0.4)]
    pairs = [window_pair(speckle_scene(10 + k), shape, s, noise=0.05, seed=k) for k, s in enumerate(shifts)]
    batch = measure_shifts(np.stack([a for a, _ in pairs]), np.stack([b for _, b in pairs]), (15, 15))
    for (a, b), together, shift in zip(pairs, batch, shifts, strict=True):
        (alone,) = measure_shifts(a[None], b[None], (15, 15))
        assert together.shift == pytest.approx(alone.shift, abs=1e-6)
        assert together.shift == pytest.approx(shift, abs=0.05)
    assert measure_shifts(np.empty((0, 8, 8)), np.empty((0, 8, 8)), (3, 3)) == []


def periodic_scene(seed: int, period: int, axis: int) -> np.ndarray:
    """A texture repeating every ``period`` px along ``axis``, plus a weak unique speckle (10 %)."""
    rng = np.random.default_rng(seed)
    motif_shape = (SCENE, period) if axis == 1 else (period, SCENE)
    motif = ndimage.gaussian_filter(rng.standard_normal(motif_shape), 1.0, mode="wrap")
    repeated = np.tile(motif, (1, SCENE // period + 1) if axis == 1 else (SCENE // period + 1, 1))[:SCENE, :SCENE]
    return repeated + 0.1 * ndimage.gaussian_filter(rng.standard_normal((SCENE, SCENE)), 1.0, mode="wrap")


@pytest.mark.parametrize(("shape", "shift", "axis"), [((160, 32), (0.6, 6.7), 1), ((32, 160), (6.7, 0.6), 0)])
def test_ncc_check_rejects_a_stronger_wrong_correlation_peak(shape, shift, axis):
    """Repeated texture across the narrow axis: the highest phase-correlation peak is one period
    off (it has the larger overlap), the NCC check over several peaks picks the true shift."""
    a, b = window_pair(periodic_scene(3, period=10, axis=axis), shape, shift)
    (top_peak_only,) = measure_shifts(a[None], b[None], bound(shape), n_candidates=1)
    (checked,) = measure_shifts(a[None], b[None], bound(shape))
    assert abs(top_peak_only.shift[axis] - shift[axis]) == pytest.approx(10, abs=0.3)  # the trap is real
    assert np.abs(np.subtract(checked.shift, shift)).max() <= 0.2
    assert checked.ncc > top_peak_only.ncc


def test_the_search_bound_is_respected():
    a, b = window_pair(speckle_scene(7), (160, 32), (0.4, 9.0))
    (result,) = measure_shifts(a[None], b[None], (15, 5))
    assert abs(result.shift[1]) <= 5.5


def test_unrelated_windows_have_a_low_ncc():
    a, _ = window_pair(speckle_scene(1), (160, 32), (0, 0))
    b, _ = window_pair(speckle_scene(2), (160, 32), (0, 0))
    (result,) = measure_shifts(a[None], b[None], (15, 15))
    assert result.ncc < 0.3


def test_ncc_at_known_values():
    rng = np.random.default_rng(0)
    a = rng.random((40, 30))
    assert ncc_at(a, a, (0, 0)) == pytest.approx(1.0)
    assert ncc_at(a, 5 - 2 * a, (0, 0)) == pytest.approx(-1.0)
    b = np.roll(a, (2, -3), axis=(0, 1))  # b(x) = a(x - (2, -3)), so a(x) = b(x + (2, -3))
    assert ncc_at(a, b, (-2, 3)) == pytest.approx(1.0)
    assert ncc_at(a, b, (2, -3)) < 0.5
    assert ncc_at(a, a, (35, 0)) == -1.0  # overlap below min_fraction
    assert ncc_at(np.ones((10, 10)), a[:10, :10], (0, 0)) == -1.0  # flat window


def test_no_bias_for_larger_shifts_across_the_narrow_axis():
    errors = []
    for seed in range(6):
        a, b = window_pair(speckle_scene(100 + seed), (160, 32), (0.4, 4.2))
        (result,) = measure_shifts(a[None], b[None], (15, 15))
        errors.append(result.shift[1] - 4.2)
    assert abs(np.mean(errors)) < 0.015


def test_search_limit_and_bound():
    """10 % of the tile by default (at least 5 px), and never half a window or more: a shift of half the
    window is the same phase as minus that shift."""
    assert correlation.search_limit((160, 96)) == 16.0 and correlation.search_limit((30, 20)) == 5.0
    assert correlation.search_limit((160, 96), 3) == 3.0
    assert correlation.search_bound(16.0, (20, 64)) == (9, 16)
    assert correlation.search_bound(2.5, (20, 64)) == (2, 2)


@pytest.mark.parametrize("level", [0.8, 0.7, 1 / 3, 0.123, 1.3])
@pytest.mark.parametrize("shape", [(160, 32), (37, 23)])
def test_a_flat_overlap_has_no_correlation_and_no_weight(level, shape):
    """A blank or saturated overlap says nothing about the shift. Its centred values are a rounding residue,
    whose NCC with the other window's came out as 1 in float32: full weight for a shift 10-20 px off."""
    flat = np.full(shape, level, dtype=np.float32)
    assert ncc_at(flat, flat, (0, 0)) == -1.0
    faint = (1000 + 0.1 * window_pair(speckle_scene(4), shape, (0.0, 0.0))[0]).astype(np.float32)
    assert ncc_at(faint, faint, (0, 0)) > 0.99  # texture 1e-4 of its level is not flat
    textured = window_pair(speckle_scene(5), shape, (0.0, 0.0))[0].astype(np.float32)
    assert ncc_at(textured, flat, (0, 0)) == -1.0
    for a, b in ((flat, flat), (textured, flat)):
        measured = measure_shifts(a[None], b[None], bound(shape))[0]
        assert measured.ncc == -1.0
        assert all(abs(s) <= limit for s, limit in zip(measured.shift, bound(shape)))  # not refined off its window


@pytest.mark.parametrize("width", [2, 3, 4, 6])
def test_a_flat_pair_in_a_narrow_overlap_is_measured_without_error(width):
    """Refined, its flat correlation walked the shift ~1 px a pass until no overlap was left, and the FFT of an
    empty overlap raised ValueError (the grid accepts overlaps of 2 px)."""
    flat = np.full((128, width), 1.3, dtype=np.float32)
    measured = measure_shifts(flat[None], flat[None], correlation.search_bound(12.8, flat.shape))[0]
    assert measured.ncc == -1.0 and abs(measured.shift[1]) <= width - correlation.MIN_REFINE_OVERLAP_PX


def test_a_saturated_pair_in_a_batch_leaves_the_others_measured():
    scene = speckle_scene(6)
    truths = [(0.3, -0.7), (-1.2, 0.45), (2.6, 1.1)]
    pairs = [window_pair(scene, (160, 32), shift) for shift in truths]
    saturated = np.full((160, 32), 2.0)
    a = np.stack([p[0] for p in pairs] + [saturated])
    b = np.stack([p[1] for p in pairs] + [saturated])
    measured = measure_shifts(a, b, bound((160, 32)))
    assert measured[-1].ncc == -1.0
    for shift, truth in zip(measured[:-1], truths):
        assert shift.ncc > 0.5
        np.testing.assert_allclose(shift.shift, truth, atol=0.05)


def test_the_step_between_whole_tiles_is_found_on_photographs_whatever_the_overlap():
    """``measure_steps`` NCC-checks several correlation peaks; they were the surface's highest values, which after
    the low-pass are one peak and its neighbours, so a second, true peak was never checked (255 of these 270 found,
    now all). Tiles are cut from two photographs with a known step, vignetted alike, with noise."""
    from skimage import color, data

    h = w = 128
    yy, xx = np.mgrid[:h, :w]
    rng = np.random.default_rng(0)
    missed = []
    for name, image in (("camera", data.camera() / 255.0), ("astronaut", color.rgb2gray(data.astronaut()))):
        for vignetting in (0.0, 0.6, 0.9):
            gain = 1 - vignetting * (((yy - h / 2) / (h / 2)) ** 2 + ((xx - w / 2) / (w / 2)) ** 2) / 2
            for overlap in (16, 24, 32, 40, 48):
                for dy in (-3, 0, 2):
                    for r0, c0 in ((60, 60), (200, 150), (300, 40)):
                        a = image[r0:r0 + h, c0:c0 + w] * gain + rng.normal(0, 0.01, (h, w))
                        b = image[r0 + dy:r0 + dy + h, c0 + w - overlap:c0 + 2 * w - overlap] * gain \
                            + rng.normal(0, 0.01, (h, w))
                        step = correlation.measure_steps(a[None], b[None], True, 12)[0].shift
                        if step != (dy, w - overlap):
                            missed.append((name, vignetting, overlap, dy, (r0, c0), step))
    assert not missed


@pytest.mark.parametrize("seed", range(4))
def test_local_maxima_are_those_of_a_3x3_maximum_filter(seed):
    rng = np.random.default_rng(seed)
    surfaces = rng.integers(0, 4, size=(5, 9, 12)).astype(np.float32)  # few levels: plateaus and ties
    expected = surfaces == ndimage.maximum_filter(surfaces, size=(1, 3, 3), mode="nearest")
    assert np.array_equal(correlation._local_maxima(surfaces), expected)


def _direct_ncc(a: np.ndarray, b: np.ndarray, shift) -> float:
    """Zero-mean NCC of ``a[x]`` and ``b[x - shift]`` over their overlap, pixel by pixel in float64."""
    sy, sx = shift
    pairs = [(a[y, x], b[y - sy, x - sx]) for y in range(a.shape[0]) for x in range(a.shape[1])
             if 0 <= y - sy < a.shape[0] and 0 <= x - sx < a.shape[1]]
    first, second = (np.array(v, dtype=float) for v in zip(*pairs))
    first, second = first - first.mean(), second - second.mean()
    return float((first * second).sum() / np.sqrt((first**2).sum() * (second**2).sum()))


def test_every_candidate_is_scored_by_the_ncc_of_its_own_overlap():
    rng = np.random.default_rng(3)
    a, b = rng.random((4, 12, 10)).astype(np.float32), rng.random((4, 12, 10)).astype(np.float32)
    b[2] = 0.5  # flat: no correlation at any shift
    candidates = np.array([[[0, 0], [2, -3], [0, 0]], [[1, 1], [-4, 2], [2, -3]],
                           [[0, 0], [1, 0], [0, 1]], [[-11, 0], [5, 4], [1, 1]]])
    scores = correlation._candidate_ncc(a, b, candidates)
    for k in range(4):
        for c in range(3):
            shift = tuple(candidates[k, c])
            overlap = (12 - abs(shift[0])) * (10 - abs(shift[1]))
            expected = -1.0 if k == 2 or overlap < 0.25 * 120 else _direct_ncc(a[k], b[k], shift)
            assert scores[k, c] == pytest.approx(expected, abs=1e-5), (k, shift)
