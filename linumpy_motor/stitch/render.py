"""The numerics of the stitch: one block's blended output from its tiles, resampled at their sub-pixel places."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from linumpy_motor.stitch.plan import BlockPlan, Layout

__all__ = ["LERP_BYTES", "render_block"]

LERP_BYTES = 2**20  # planes of a tile resampled at once: about this much per pass, so it stays in the core's cache


def render_block(block: BlockPlan, layout: Layout, tiles: Sequence, weights, overwrite: bool, xp):
    """The blended output over one block: ``sum(w * tile / flat) / sum(w)`` resampled (a pure function).

    Parameters
    ----------
    block : BlockPlan
        The block's region, tiles and loads.
    layout : Layout
        The tiles' origins and sub-pixel fractions.
    tiles : sequence of arrays
        Per tile of ``block.tiles``: the padded, gain-multiplied planes of its load (``(z1 - z0, h + 2, w + 2)``).
    weights : array
        ``(h + 2, w + 2)`` blending weights padded with zeros.
    overwrite : bool
        The last tile wins where it has weight (blending ``none``) instead of the weighted mean.
    xp : module
        NumPy or CuPy.

    Returns
    -------
    array
        float32 ``(Z, Y, X)`` of the region, of the backend.
    """
    zs, ys, xs = block.region
    _, h, w = layout.tile_shape
    num = xp.zeros((zs.stop - zs.start, ys.stop - ys.start, xs.stop - xs.start), dtype=xp.float32)
    den = xp.zeros(num.shape[1:], dtype=xp.float32)
    for t, key, padded in zip(block.tiles, block.keys, tiles, strict=True):
        oy, ox = layout.origins[t]
        fy, fx = layout.fractions[t]
        r0, r1 = max(ys.start, oy), min(ys.stop, oy + h + 1)
        c0, c1 = max(xs.start, ox), min(xs.stop, ox + w + 1)
        # footprint rows r0 - oy .. r1 - oy need padded rows r0 - oy .. r1 - oy + 1 (see _lerp); whole rows are
        # resampled, contiguous, and the footprint's columns c0 - ox .. c1 - ox taken from the result
        rows, cols = slice(r0 - oy, r1 - oy + 1), slice(c0 - ox, c1 - ox)
        weight = _lerp(weights[rows], fy, fx, xp)[:, cols]
        out_rows, out_cols = slice(r0 - ys.start, r1 - ys.start), slice(c0 - xs.start, c1 - xs.start)
        covered = weight > 0 if overwrite else None
        first = zs.start - key[1]
        slab = max(1, LERP_BYTES // (4 * (r1 - r0 + 1) * (w + 2)))
        for z0 in range(0, len(num), slab):  # a few planes at a time: the passes' temporaries stay in cache
            z1 = min(z0 + slab, len(num))
            values = _lerp(padded[first + z0:first + z1, rows], fy, fx, xp)[..., cols]
            target = num[z0:z1, out_rows, out_cols]
            if overwrite:
                target[...] = xp.where(covered, values, target)
            else:
                target += values
        if overwrite:
            den[out_rows, out_cols] = xp.where(covered, weight, den[out_rows, out_cols])
        else:
            den[out_rows, out_cols] += weight
    den[den == 0] = 1  # uncovered: num is 0 there too
    num /= den
    return num


def _lerp(padded, fy: float, fx: float, xp=np):
    """Linear interpolation at ``k - fy, l - fx`` of a source padded with one leading row and column.

    ``padded[..., m, n]`` holds source row ``m - 1`` and column ``n - 1``; the result has one row and
    one column less and holds the samples for rows ``0 ..`` and columns ``0 ..``:
    ``(1 - f) * a[m + 1] + f * a[m]`` (:func:`_mix`). Each output sample depends only on its own 2x2
    neighbourhood, so a window of the padded tile gives exactly the matching window of the full result.

    Both passes run over contiguous operands (NumPy copies strided ones through a buffer, three times
    slower): ``padded`` is given whole rows, and the column pass runs over the row pass's result as one
    flat run, each sample with the next (the pair that straddles two rows lands in the column dropped).
    The result is a view of that run.
    """
    rows = _mix(padded[..., :-1, :], padded[..., 1:, :], fy, xp)
    run = rows.reshape(-1)
    out = xp.empty_like(run)
    _mix(run[:-1], run[1:], fx, xp, out=out[:-1])
    return out.reshape(rows.shape)[..., :-1]


def _mix(first, second, f: float, xp=np, out=None):
    """``f * first + (1 - f) * second`` in three passes, from the nearer of the two: computed from the farther
    one, a sample next to the zero padding (``(1 - f) * second`` with ``f`` near 1) lost most of its digits
    (5 % at ``f = 1 - 1e-6``), at the mosaic's outer rows and columns. Into ``out`` when given."""
    near, far, t = (second, first, f) if f <= 0.5 else (first, second, 1.0 - f)
    out = xp.subtract(far, near, out=out)
    out *= t
    out += near
    return out
