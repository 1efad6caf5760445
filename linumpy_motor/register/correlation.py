"""Batched phase correlation with peak candidates checked by NCC and sub-pixel refinement.

Each pair is two same-sized windows ``a`` and ``b`` cut from the expected overlap of two
neighbouring tiles, so the expected shift between them is zero. For a window pair the measured
shift ``s`` satisfies ``a(x) ≈ b(x - s)``. Several correlation peaks are considered and the one
whose actual overlap has the best normalised cross-correlation wins (as MIST and ASHLAR do),
then it is refined to sub-pixel precision with a locally upsampled DFT (Guizar-Sicairos 2008).
Arrays may be NumPy or CuPy: the array module is passed in, one code path for both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from types import ModuleType

import numpy as np
import scipy

from linumpy_motor.backend import to_numpy

__all__ = ["CANDIDATE_PEAK_RATIO", "FILTER_SIGMA", "FLAT_RELATIVE_SPREAD", "FRAME_MARGIN_PX", "MAX_SHIFT_DEFAULT_TEXT",
           "MAX_SHIFT_FRACTION", "MAX_SHIFT_MIN_PX", "MIN_REFINE_OVERLAP_PX", "NCC_MIN_OVERLAP", "PairShift",
           "REFINE_BATCH_BYTES", "REFINE_MAX_RATIO", "REFINE_PASSES", "REFINE_TAPER", "REFINE_TOLERANCE", "UPSAMPLE",
           "measure_shifts", "measure_steps", "ncc_at", "refine_shifts", "search_bound", "search_limit"]

REFINE_TAPER = 0.5  # Tukey taper of the sub-pixel refinement: Hann's cost pair precision on real images
REFINE_PASSES = 6
REFINE_TOLERANCE = 0.002  # px
REFINE_MAX_RATIO = 0.5  # moves shrinking slower than this from pass to pass are not extrapolated
REFINE_BATCH_BYTES = 2 * 2**20
"""Window data (per side) refined in one batch: batches that stay in the CPU's cache."""
MIN_REFINE_OVERLAP_PX = 2
"""A refinement that would leave a pair's windows overlapping by fewer pixels stops at its last estimate."""
FRAME_MARGIN_PX = 4
"""Zeros at least this wide follow each window in its FFT frame: the correlation near zero shift does not wrap
round (a margin of 0, circular, and of 4 and 12 px were as accurate on the real-image benchmark; 4 gave the
lowest spread of 0 and 4), and every overlap cut from a window fits the window's frame, so pairs of any
integer shift are transformed in one batch."""
NCC_MIN_OVERLAP = 0.25
"""A shift whose overlap is smaller than this fraction of the window gets NCC -1 (too few pixels to tell)."""
FLAT_RELATIVE_SPREAD = 1e-6
"""A window whose values spread less than this fraction of their mean (RMS) is flat: float32 rounding is 6e-8."""
CANDIDATE_PEAK_RATIO = 0.5
"""A correlation peak lower than half of a pair's highest is not a candidate: no NCC is computed for it (the
NCC check is for peaks that contest the best, such as repeated texture's; on real-image mosaics the lower
peaks of well-correlated pairs never won, and skipping them halves the NCC work)."""
FILTER_SIGMA = 1.0  # px: default Gaussian low-pass of the whitened spectrum
UPSAMPLE = 10  # default upsampling of the sub-pixel refinement
MAX_SHIFT_FRACTION = 0.1
"""Largest stage error searched by default, a fraction of the tile size ..."""
MAX_SHIFT_MIN_PX = 5.0
"""... and at least this many pixels."""
MAX_SHIFT_DEFAULT_TEXT = f"{100 * MAX_SHIFT_FRACTION:g} % of the tile size, at least {MAX_SHIFT_MIN_PX:g} px"
"""The default search bound in words, for help texts and hints."""


def search_limit(tile_hw: tuple[int, int], max_shift_px: float | None = None) -> float:
    """Largest stage error searched: ``max_shift_px``, by default :data:`MAX_SHIFT_FRACTION` of the tile size,
    at least :data:`MAX_SHIFT_MIN_PX`."""
    if max_shift_px is None:
        return max(MAX_SHIFT_FRACTION * max(tile_hw), MAX_SHIFT_MIN_PX)
    return float(max_shift_px)


def search_bound(limit: float, window_hw: tuple[int, ...]) -> tuple[int, int]:
    """Largest |shift| searched along Y and X in windows of ``window_hw``: ``limit``, kept below half a window."""
    return int(min(limit, window_hw[0] // 2 - 1)), int(min(limit, window_hw[1] // 2 - 1))


@dataclass(frozen=True)
class PairShift:
    """The measured shift of one window pair: ``a(x) ≈ b(x - shift)``, and its quality.

    ``ncc`` is the normalised cross-correlation of the overlap at the integer shift; ``peak`` the
    height of the whitened (phase) correlation there, which smooth shading cannot raise.
    """

    shift: tuple[float, float]
    ncc: float
    peak: float


def ncc_at(a: np.ndarray, b: np.ndarray, shift: tuple[int, int], min_fraction: float = NCC_MIN_OVERLAP) -> float:
    """Zero-mean normalised cross-correlation of ``a[x]`` and ``b[x - shift]`` over their overlap.

    Returns -1 when the overlap is smaller than ``min_fraction`` of the window or is flat.
    """
    if not _enough_overlap(a.shape, shift, min_fraction):
        return -1.0
    pa, pb = _overlap_views(a, b, shift)
    return float(_overlap_ncc(pa[None], pb[None])[0])


def _enough_overlap(shape: tuple[int, ...], shift: tuple[int, int], min_fraction: float) -> bool:
    """Whether windows of ``shape`` (last two axes) shifted by ``shift`` overlap over ``min_fraction`` of a window."""
    ny, nx = shape[-2:]
    return (ny - abs(shift[0])) * (nx - abs(shift[1])) >= min_fraction * ny * nx


def _overlap_ncc(pa: np.ndarray, pb: np.ndarray) -> np.ndarray:
    """Zero-mean NCC of each pair of overlaps ``pa[k]``, ``pb[k]`` (batches ``(n, h, w)``): ``(n,)``, -1 where
    either is flat (:func:`_flat`)."""
    mean_a, mean_b = pa.mean(axis=(1, 2), keepdims=True), pb.mean(axis=(1, 2), keepdims=True)
    pa, pb = pa - mean_a, pb - mean_b
    power_a, power_b = (pa * pa).sum(axis=(1, 2), dtype=float), (pb * pb).sum(axis=(1, 2), dtype=float)
    size = pa.shape[1] * pa.shape[2]
    # centring a flat window leaves a rounding residue, whose correlation with the other's came out as 1
    dead = _flat(power_a / size, mean_a.ravel()) | _flat(power_b / size, mean_b.ravel())
    products = (pa * pb).sum(axis=(1, 2), dtype=float)
    return np.where(dead, -1.0, products / np.sqrt(np.where(dead, 1.0, power_a * power_b)))


def _flat(variance, mean):
    """Whether values of this variance and mean are flat (blank, saturated): spread less than
    :data:`FLAT_RELATIVE_SPREAD` of their mean (scalars, or arrays of windows)."""
    return variance <= (FLAT_RELATIVE_SPREAD * np.asarray(mean, dtype=float)) ** 2


def _signed(index: np.ndarray, size: int) -> np.ndarray:
    return np.where(index > size // 2, index - size, index)


def _tukey(size: int | np.ndarray, alpha: float, offset: np.ndarray | float = 0.0,
           length: int | None = None) -> np.ndarray:
    """Tukey window over ``size`` samples (cosine edges over ``alpha`` of each side; 1: Hann, 0: none),
    evaluated ``offset`` samples further on: one row per offset, or per size, ``length`` samples long (default
    ``size``). The window is 0 outside its support and from sample ``size`` on (a window in the corner of a
    frame, :func:`_frame_taper`).

    With ``offset`` 0 it equals ``scipy.signal.windows.tukey(size + 2, alpha)[1:-1]``.
    """
    size = np.reshape(size, (-1, 1))
    x = np.arange(int(size.max()) if length is None else length)[None, :]
    u = (x + 1 + np.reshape(offset, (-1, 1))) / (size + 1)
    near = np.minimum(u, 1 - u)
    edge = max(alpha / 2, 1e-12)
    ramp = 0.5 * (1 - np.cos(np.pi * np.clip(near, 0, None) / edge))
    return np.where(near < edge, ramp, 1.0) * ((near > 0) & (x < size))


def _correlation(a, b, xp: ModuleType, fft: ModuleType, filter_sigma: float, taper_alpha: float, frame: bool):
    """Whitened correlation surfaces of window batches (host array ``(n, H, W)``, or the frame's shape), low-passed
    by a Gaussian of ``filter_sigma`` px, the windows tapered by a Tukey window of ``taper_alpha`` (1: Hann,
    0: none) first. ``frame``: the windows set in frames of a fast FFT size (:func:`_frame_shape`), zeros
    around them (circular otherwise, at the windows' own size)."""
    shape = a.shape[1:]
    size = _frame_shape(shape) if frame else shape
    taper = xp.asarray(np.pad(_taper(*shape, taper_alpha), [(0, f - s) for f, s in zip(size, shape)]))
    windows = np.broadcast_to(np.array(shape), (len(a), 2))
    spectra = [_spectrum(xp.asarray(_framed(x, size)), xp, fft, (taper,), windows) for x in (a, b)]
    product = _whiten(spectra[0] * xp.conj(spectra[1]), xp, filter_sigma, size)
    return to_numpy(fft.irfft2(product, s=size))


def _whiten(product, xp: ModuleType, filter_sigma: float, shape: tuple[int, int]):
    """The cross-power half spectrum ``product`` (``rfft2``) of windows of ``shape``, whitened and low-passed by
    a Gaussian of ``filter_sigma`` px, in place."""
    magnitude = xp.abs(product)
    gain = 1 / (magnitude + (1e-12 * magnitude.max() + np.finfo(np.float32).tiny))
    if filter_sigma > 0:
        gain *= xp.asarray(_low_pass(*shape, filter_sigma))
    product *= gain  # one pass over the complex spectrum: whitened and low-passed
    return product


def _spectrum(x, xp: ModuleType, fft: ModuleType, taper: tuple, sizes: np.ndarray):
    """The half spectrum (``rfft2``) of a batch of windows, each less its mean and tapered. Each window fills
    the ``sizes`` ``(n, 2)`` corner of its frame, zeros around it (:func:`_framed`); ``taper``: factors
    whose product is the taper (a Tukey window is the product of one along each axis)."""
    counts = xp.asarray(np.prod(sizes, axis=1), dtype=xp.float32)[:, None, None]
    centred = x - x.sum(axis=(1, 2), keepdims=True) / counts
    for factor in taper:
        centred *= factor
    return fft.rfft2(centred)


@lru_cache(maxsize=256)
def _taper(ny: int, nx: int, alpha: float) -> np.ndarray:
    """The 2-D Tukey taper of ``(ny, nx)`` windows (float32; cached: every batch of a shape shares it)."""
    return np.outer(_tukey(ny, alpha)[0], _tukey(nx, alpha)[0]).astype(np.float32)


@lru_cache(maxsize=256)
def _low_pass(ny: int, nx: int, sigma: float) -> np.ndarray:
    """Gaussian low-pass of ``sigma`` px on the half spectrum (``rfft2``) of ``(ny, nx)`` windows."""
    fy = np.fft.fftfreq(ny)[:, None]
    fx = np.fft.rfftfreq(nx)[None, :]
    return np.exp(-2 * (np.pi * sigma) ** 2 * (fy**2 + fx**2)).astype(np.float32)


@lru_cache(maxsize=256)
def _dft_kernel(size: int, upsample: int, region: int) -> np.ndarray:
    """``(region, size)`` kernel of the local upsampled DFT around zero shift (complex64)."""
    grid = np.arange(region, dtype=np.float64)[:, None] - np.fix(region / 2.0)
    return np.exp(2j * np.pi * grid * np.fft.fftfreq(size, upsample)[None, :]).astype(np.complex64)


def _peak_candidates(corr: np.ndarray, max_shift: tuple[int, int], count: int) -> np.ndarray:
    """The ``count`` highest local maxima of each correlation surface ``(n, H, W)`` within ``max_shift``.

    Returns signed integer shifts ``(n, count, 2)``; missing peaks repeat the best one.
    """
    n, ny, nx = corr.shape
    iy, ix = _search_index(ny, max_shift[0]), _search_index(nx, max_shift[1])
    corr = corr[:, iy[:, None], ix[None, :]]  # the searched shifts and a 1 px margin: the filter's neighbours
    sy, sx = _signed(iy, ny), _signed(ix, nx)
    allowed = (np.abs(sy)[:, None] <= max_shift[0]) & (np.abs(sx)[None, :] <= max_shift[1])
    peaks = _local_maxima(corr) & allowed
    values = np.where(peaks, corr, -np.inf).reshape(n, -1)
    count = min(count, values.shape[1])
    top = np.argpartition(-values, count - 1, axis=1)[:, :count]
    top = np.take_along_axis(top, np.argsort(-np.take_along_axis(values, top, axis=1), axis=1), axis=1)
    heights = np.take_along_axis(values, top, axis=1)
    weak = heights < CANDIDATE_PEAK_RATIO * np.maximum(heights[:, :1], 0)  # far below the best: no contest
    top = np.where(np.isfinite(heights) & ~weak, top, top[:, :1])
    rows, cols = np.unravel_index(top, corr.shape[1:])
    return np.stack([sy[rows], sx[cols]], axis=-1)


def _search_index(size: int, bound: int) -> np.ndarray:
    """Indices of the shifts ``-bound - 1 .. bound + 1`` along an axis of a correlation surface (circularly):
    finding the peaks only there is the same as on the whole surface, for a fraction of the work in long
    overlap strips. The shifts ±(bound + 1) are a margin: neighbours of the shifts searched, never peaks."""
    return np.arange(-bound - 1, bound + 2) % size


def _local_maxima(surfaces: np.ndarray) -> np.ndarray:
    """Where each surface ``(n, H, W)`` is at least as high as its 8 neighbours (its edges repeated outwards:
    ``maximum_filter`` of 3x3, mode "nearest", for a quarter of the time)."""
    padded = np.pad(surfaces, ((0, 0), (1, 1), (1, 1)), mode="edge")
    rows = np.maximum(np.maximum(padded[:, :, :-2], padded[:, :, 1:-1]), padded[:, :, 2:])
    return surfaces == np.maximum(np.maximum(rows[:, :-2], rows[:, 1:-1]), rows[:, 2:])


def _upsampled_peaks(product, upsample: int, xp: ModuleType, width: int) -> np.ndarray:
    """Sub-pixel peak (n, 2) within ±0.75 px of zero shift, by a local matrix-multiply DFT.

    ``product`` is the half spectrum (``rfft2``) of windows ``width`` px wide. The correlation of
    real windows is real: each column ``kx`` of the hidden half equals the conjugate of its mirror,
    so the half's columns ``0 < kx < width / 2`` count twice in the real part, and the Nyquist
    column (even widths), the one without a mirror, is added with its own phase. The same DFT
    kernels serve every pair of the batch, so the work is two large real matrix products
    (:func:`_real_kernels`; complex GEMM in OpenBLAS starts threads even for these small matrices,
    which costs a thousandfold on a busy machine).
    """
    n, ny, half = product.shape
    region = int(np.ceil(upsample * 1.5))
    centre = np.fix(region / 2.0)
    kx, ky = (xp.asarray(k) for k in _real_kernels(width, ny, upsample, region))
    paired = half - 1 if width % 2 == 0 else half
    values = xp.ascontiguousarray(product, dtype=xp.complex64).view(xp.float32).reshape(n * ny, 2 * half)
    rows = values[:, :2 * paired] @ kx  # (n * ny, 2 * region): the DFT along x, real parts then imaginary
    rows = xp.ascontiguousarray(rows.reshape(n, ny, 2, region).transpose(2, 1, 0, 3)).reshape(2 * ny, n * region)
    surface = (ky @ rows).reshape(region, n, region)  # the real part of the DFT along y
    if width % 2 == 0:
        nyquist = product[:, :, paired].T  # (ny, n): its DFT along y is real
        level = ky[:, :ny] @ nyquist.real.astype(xp.float32) + ky[:, ny:] @ nyquist.imag.astype(xp.float32)
        phase = xp.asarray(_dft_kernel(width, upsample, region)[:, paired])
        surface = surface + level[:, :, None] * phase[None, None, :]
    upsampled = to_numpy(xp.abs(surface).transpose(1, 0, 2))
    flat = np.argmax(upsampled.reshape(n, -1), axis=1)
    peak = np.stack(np.unravel_index(flat, (region, region)), axis=1)
    return (peak + _parabolic_offsets(upsampled, peak) - centre) / upsample


@lru_cache(maxsize=256)
def _real_kernels(width: int, ny: int, upsample: int, region: int) -> tuple[np.ndarray, np.ndarray]:
    """The local DFT kernels of :func:`_upsampled_peaks` as real matrices (float32).

    Along x, ``(2 * paired, 2 * region)``: a half spectrum's paired columns, read as interleaved real and
    imaginary parts, times it give the DFT's real parts then its imaginary parts (each ``0 < kx`` counted
    twice). Along y, ``(region, 2 * ny)``: times the real parts stacked on the imaginary ones, it gives
    the real part of the DFT.
    """
    paired = width // 2 if width % 2 == 0 else width // 2 + 1
    weights = np.where(np.arange(paired) == 0, 1.0, 2.0)
    along_x = (_dft_kernel(width, upsample, region)[:, :paired] * weights).T  # (paired, region)
    kx = np.empty((paired, 2, 2, region))
    kx[:, 0, 0], kx[:, 0, 1] = along_x.real, along_x.imag  # a real part's share of the DFT's real, imaginary
    kx[:, 1, 0], kx[:, 1, 1] = -along_x.imag, along_x.real  # an imaginary part's
    along_y = _dft_kernel(ny, upsample, region)
    ky = np.concatenate([along_y.real, -along_y.imag], axis=1)
    return kx.reshape(2 * paired, 2 * region).astype(np.float32), ky.astype(np.float32)


def _parabolic_offsets(surface: np.ndarray, peak: np.ndarray) -> np.ndarray:
    """Sub-sample offsets (n, 2) of each surface's maximum from a parabola through its neighbours."""
    n, size, _ = surface.shape
    index = np.arange(n)
    offsets = np.zeros(peak.shape, dtype=float)
    for axis in (0, 1):
        before, after = peak.copy(), peak.copy()
        before[:, axis] = np.clip(peak[:, axis] - 1, 0, size - 1)
        after[:, axis] = np.clip(peak[:, axis] + 1, 0, size - 1)
        left = surface[index, before[:, 0], before[:, 1]]
        centre = surface[index, peak[:, 0], peak[:, 1]]
        right = surface[index, after[:, 0], after[:, 1]]
        curvature = left - 2 * centre + right
        safe = np.where(curvature < 0, curvature, -1.0)
        offsets[:, axis] = np.where(curvature < 0, np.clip(0.5 * (left - right) / safe, -0.5, 0.5), 0.0)
    return offsets


def _overlap_views(a: np.ndarray, b: np.ndarray, shift: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The parts of ``a[..., x]`` and ``b[..., x - shift]`` that overlap (last two axes)."""
    sy, sx = shift
    ny, nx = a.shape[-2:]
    return (a[..., max(sy, 0):ny + min(sy, 0), max(sx, 0):nx + min(sx, 0)],
            b[..., max(-sy, 0):ny - max(sy, 0), max(-sx, 0):nx - max(sx, 0)])


def _refine_on_overlaps(a: np.ndarray, b: np.ndarray, shifts: np.ndarray, xp: ModuleType, fft: ModuleType,
                        filter_sigma: float, upsample: int, taper_alpha: float) -> np.ndarray:
    """Sub-pixel shifts, refined on the parts of each pair that overlap at its integer shift.

    A taper fixed on both windows pulls the peak towards the integer shift (the correlation of
    the tapers peaks there), by a large fraction of the residual in narrow overlap strips (a third
    in 16 px), enough to pick the wrong integer. So the refinement is iterated: each pass moves
    ``b``'s taper by the current estimate (:func:`_frame_taper`), which leaves a bias of that
    fraction of the current error (the fixed point is unbiased); a residual beyond half a pixel
    moves the integer shift and the overlap cut. A pair stops when its pass moved it less than
    ``REFINE_TOLERANCE``, or when the passes to come would: the moves shrink geometrically (a twentieth
    pass to pass on real images), so from the last two moves their sum is known and added, which
    saves the pass that would only have confirmed convergence; at most ``REFINE_PASSES`` passes. Each
    pair's overlap is cut out and set in the corner of a frame of one fast FFT size, zeros around it
    (:func:`_frame_shape`), so that every pair of a batch is transformed at once, whatever its integer
    shift; batches of :data:`REFINE_BATCH_BYTES`.
    """
    integer = shifts.astype(int).copy()
    residual = np.zeros(shifts.shape, dtype=float)
    n = len(shifts)
    # a flat window has a flat correlation: its peak is noise, its integer shift stands
    a_values, b_values = a.reshape(n, -1), b.reshape(n, -1)
    active = ~(_flat(a_values.var(axis=1), a_values.mean(axis=1)) | _flat(b_values.var(axis=1), b_values.mean(axis=1)))
    limit = np.array(a.shape[1:]) - MIN_REFINE_OVERLAP_PX
    frame = _frame_shape(a.shape[1:])
    size = max(1, REFINE_BATCH_BYTES // (4 * frame[0] * frame[1]))
    a_spectra = xp.empty((n, frame[0], frame[1] // 2 + 1), dtype=xp.complex64)  # a's taper does not move: a's
    spectrum_at = np.full(shifts.shape, np.iinfo(int).max)  # spectrum is kept, and the integer shift it is at
    previous, passes = np.zeros(shifts.shape), 0
    for _ in range(REFINE_PASSES):
        found = residual.copy()
        order = np.flatnonzero(active)
        for members in (order[start:start + size] for start in range(0, len(order), size)):
            sizes = np.array(a.shape[1:]) - np.abs(integer[members])  # each overlap's rows and columns
            views = [_overlap_views(a[k], b[k], (integer[k, 0], integer[k, 1])) for k in members.tolist()]
            new = np.flatnonzero((spectrum_at[members] != integer[members]).any(axis=1))
            if len(new):
                spectra = _spectrum(xp.asarray(_framed([views[m][0] for m in new], frame)), xp, fft,
                                    _frame_taper(sizes[new], np.zeros((len(new), 2)), frame, taper_alpha, xp),
                                    sizes[new])
                a_spectra[xp.asarray(members[new])] = spectra  # device indices for a device array
                spectrum_at[members[new]] = integer[members[new]]
            b_spectra = _spectrum(xp.asarray(_framed([v[1] for v in views], frame)), xp, fft,
                                  _frame_taper(sizes, residual[members], frame, taper_alpha, xp), sizes)
            product = _whiten(a_spectra[xp.asarray(members)] * xp.conj(b_spectra), xp, filter_sigma, frame)
            found[members] = _upsampled_peaks(product, upsample, xp, frame[1])
        step = found - residual
        moved = np.abs(step).max(axis=1)
        # each pass moves about a fixed fraction of the one before (the taper's bias shrinks with the error):
        # a pair whose next moves, summed, would stay under the tolerance stops here, their sum added
        ratio = np.linalg.norm(step, axis=1) / np.maximum(np.linalg.norm(previous, axis=1), 1e-12) if passes \
            else np.ones(len(step))
        remainder = step * (ratio / (1 - np.minimum(ratio, REFINE_MAX_RATIO)))[:, None]
        geometric = (ratio < REFINE_MAX_RATIO) & (np.abs(remainder).max(axis=1) < REFINE_TOLERANCE)
        stopping = active & ((moved <= REFINE_TOLERANCE) | geometric) & ~np.round(found).any(axis=1)
        found[stopping & geometric] += remainder[stopping & geometric]
        recentre = np.round(found).astype(int)
        lost = active & (np.abs(integer + recentre) > limit).any(axis=1)  # it runs off the window: keep the last
        found[lost], recentre[lost] = residual[lost], 0
        stopping |= lost
        integer += recentre
        residual = found - recentre
        previous = step
        passes += 1
        active &= ~stopping
        if not active.any():
            break
    return integer + residual


@lru_cache(maxsize=64)
def _frame_shape(window_hw: tuple[int, int]) -> tuple[int, int]:
    """The FFT frame of windows of ``window_hw`` (and of overlaps cut from them): each side with
    :data:`FRAME_MARGIN_PX` more, to its next fast length."""
    return (scipy.fft.next_fast_len(window_hw[0] + FRAME_MARGIN_PX),
            scipy.fft.next_fast_len(window_hw[1] + FRAME_MARGIN_PX, real=True))


def _framed(crops: Sequence[np.ndarray] | np.ndarray, frame: tuple[int, int]) -> np.ndarray:
    """The crops, each in the top-left corner of a zero frame ``(len(crops), *frame)`` (float32)."""
    out = np.zeros((len(crops), *frame), dtype=np.float32)
    if isinstance(crops, np.ndarray):  # one shape: one copy
        out[:, :crops.shape[1], :crops.shape[2]] = crops
        return out
    for m, crop in enumerate(crops):
        out[m, :crop.shape[0], :crop.shape[1]] = crop
    return out


def _frame_taper(sizes: np.ndarray, offsets: np.ndarray, frame: tuple[int, int], alpha: float,
                 xp: ModuleType) -> tuple:
    """Per window, the Tukey taper of its ``sizes`` (rows, columns) moved by its ``offsets`` (:func:`_tukey`), in
    the corner of a frame, 0 elsewhere: its factors along y ``(n, H, 1)`` and x ``(n, 1, W)`` (float32)."""
    wy, wx = (xp.asarray(_tukey(sizes[:, axis], alpha, offsets[:, axis], frame[axis]), dtype=xp.float32)
              for axis in (0, 1))
    return wy[:, :, None], wx[:, None, :]


def refine_shifts(a: np.ndarray, b: np.ndarray, shifts: np.ndarray, *, xp: ModuleType = np,
                  fft: ModuleType | None = None, filter_sigma: float = FILTER_SIGMA, upsample: int = UPSAMPLE,
                  refine_taper: float = REFINE_TAPER) -> np.ndarray:
    """Sub-pixel shifts ``(n, 2)`` of window pairs from their integer shifts (:func:`measure_shifts`).

    The larger the batch, the fewer (and larger) the FFT batches: pairs are batched by the shape
    of their overlap, which many pairs share.

    Parameters
    ----------
    a, b : np.ndarray
        Window batches ``(n, H, W)`` (host arrays).
    shifts : np.ndarray
        ``(n, 2)`` integer shifts, as measured by :func:`measure_shifts` with ``subpixel=False``.
    xp, fft, filter_sigma, upsample, refine_taper
        As in :func:`measure_shifts`.
    """
    if len(a) == 0:
        return np.zeros((0, 2))
    return _refine_on_overlaps(a, b, np.asarray(shifts), xp, scipy.fft if fft is None else fft, filter_sigma,
                               upsample, refine_taper)


def measure_shifts(
    a: np.ndarray,
    b: np.ndarray,
    max_shift: tuple[int, int],
    *,
    xp: ModuleType = np,
    fft: ModuleType | None = None,
    filter_sigma: float = FILTER_SIGMA,
    n_candidates: int = 3,
    upsample: int = UPSAMPLE,
    refine_taper: float = REFINE_TAPER,
    subpixel: bool = True,
) -> list[PairShift]:
    """Measure the shift between each window pair of two batches.

    Parameters
    ----------
    a, b : np.ndarray
        Window batches of shape ``(n, H, W)`` (host arrays; moved to ``xp`` for the FFT work).
    max_shift : (int, int)
        Largest plausible |shift| along Y and X; must stay below half the window size.
    xp, fft : module
        Array and FFT modules (``numpy``/``scipy.fft`` or ``cupy``/``cupyx.scipy.fft``).
    filter_sigma : float
        Gaussian low-pass (px) applied to the whitened spectrum; speckle needs about 1.
    n_candidates : int
        Number of correlation peaks checked by NCC.
    upsample : int
        Sub-pixel precision is ``1 / upsample`` px.
    refine_taper : float
        Tukey taper of the sub-pixel refinement (1: Hann).
    subpixel : bool
        Refine the integer shifts (False: integer shifts only, for when only the quality is needed,
        or to refine the pairs worth it later, all at once, with :func:`refine_shifts`).

    Returns
    -------
    list of PairShift
        One per window pair.
    """
    fft = scipy.fft if fft is None else fft
    if len(a) == 0:
        return []
    corr = _correlation(a, b, xp, fft, filter_sigma, 1.0, frame=True)
    candidates = _peak_candidates(corr, max_shift, n_candidates)
    scores = _candidate_ncc(a, b, candidates)
    choice = np.argmax(scores, axis=1)  # a tie goes to the strongest peak (candidates come first)
    index = np.arange(len(a))
    integer, score = candidates[index, choice], scores[index, choice]
    peaks = corr[index, integer[:, 0], integer[:, 1]]
    refined = refine_shifts(a, b, integer, xp=xp, fft=fft, filter_sigma=filter_sigma, upsample=upsample,
                            refine_taper=refine_taper) if subpixel else integer.astype(float)
    return [PairShift(shift=(float(s[0]), float(s[1])), ncc=float(c), peak=float(p))
            for s, c, p in zip(refined, score, peaks)]


def _candidate_ncc(a: np.ndarray, b: np.ndarray, candidates: np.ndarray,
                   min_fraction: float = NCC_MIN_OVERLAP) -> np.ndarray:
    """:func:`ncc_at` of every pair at each of its candidate shifts ``(n, count, 2)``: ``(n, count)``, the pairs
    that share a shift computed together."""
    n, count, _ = candidates.shape
    scores = np.full((n, count), -1.0)
    shifts, which = np.unique(candidates.reshape(n * count, 2), axis=0, return_inverse=True)
    which = which.reshape(-1)
    for u, shift in enumerate(shifts.tolist()):
        if not _enough_overlap(a.shape, shift, min_fraction):
            continue
        entries = np.flatnonzero(which == u)
        pairs = np.unique(entries // count)
        rows = dict(zip(pairs.tolist(), _overlap_ncc(*_overlap_views(a[pairs], b[pairs], shift)).tolist()))
        scores.reshape(-1)[entries] = [rows[e // count] for e in entries.tolist()]
    return scores


def measure_steps(a: np.ndarray, b: np.ndarray, horizontal: bool, across: int, *, xp: ModuleType = np,
                  fft: ModuleType | None = None, filter_sigma: float = FILTER_SIGMA,
                  n_candidates: int = 5) -> list[PairShift]:
    """The step between whole neighbouring tiles, searched over every overlap a tile may have, whatever
    overlap was given: what the tiles themselves say the overlap is.

    Tile ``b`` is the right (``horizontal``) or lower neighbour of tile ``a``, so ``a(x) = b(x - step)``
    with a step along the pair's axis of ``(1 - overlap)`` tile. The whole tiles are phase-correlated
    without a taper (a taper would erase the overlap, which lies at the tiles' edges); circularly, the
    step is minus the overlap, so the search along the axis covers overlaps of 1 px to half a tile
    (:data:`~linumpy_motor.io.schemas.MAX_OVERLAP`), and ``across`` px across it. The best of
    ``n_candidates`` peaks by the NCC of the overlap it implies wins.

    Parameters
    ----------
    a, b : np.ndarray
        Tile batches ``(n, h, w)`` (host arrays).
    horizontal : bool
        ``b`` is right of ``a`` (else below).
    across : int
        Largest |offset| searched across the step (px).
    xp, fft, filter_sigma
        As in :func:`measure_shifts`.
    n_candidates : int
        Correlation peaks checked by NCC.

    Returns
    -------
    list of PairShift
        Per pair, ``shift`` the integer step (dy, dx) from ``a`` to ``b``, ``ncc`` over the overlap it
        implies and ``peak`` the correlation there.
    """
    fft = scipy.fft if fft is None else fft
    if len(a) == 0:
        return []
    n, h, w = a.shape
    corr = _correlation(a, b, xp, fft, filter_sigma, 0.0, frame=False)
    size = w if horizontal else h
    along = np.arange(-(size // 2), 0)  # circular shift along the step: minus the overlap
    offsets = np.arange(-across, across + 1)
    rows, cols = (offsets % h, along % w) if horizontal else (along % h, offsets % w)
    surfaces = corr[:, rows[:, None], cols[None, :]]
    # candidates are local maxima: the highest values alone are one peak and its neighbours
    peaks = _local_maxima(surfaces).reshape(n, -1)
    found = []
    for k in range(n):
        surface = surfaces[k]
        index = np.flatnonzero(peaks[k])
        best: tuple[float, tuple[int, int], float] | None = None
        for flat in index[np.argsort(surface.ravel()[index])[::-1][:n_candidates]]:
            r, c = np.unravel_index(flat, surface.shape)
            step = (int(offsets[r]), size + int(along[c])) if horizontal else (size + int(along[r]), int(offsets[c]))
            score = ncc_at(a[k], b[k], step, min_fraction=0.0)
            if best is None or score > best[0]:
                best = (score, step, float(surface[r, c]))
        assert best is not None  # the surface holds at least one shift
        found.append(PairShift(shift=(float(best[1][0]), float(best[1][1])), ncc=best[0], peak=best[2]))
    return found
