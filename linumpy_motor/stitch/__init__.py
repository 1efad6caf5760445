"""Stitching a slice: tile placement, blending, the multiscale pyramid (the flat field: :mod:`..register.flatfield`).

Modules
-------
assemble
    Stitch one slice into an OME-Zarr pyramid, block by block (:func:`assemble.stitch_slice`), from its
    :mod:`.plan` (which tiles meet which block, in which order), its :mod:`.tiles` (each chunk decoded once)
    and :mod:`.render` (one block's blended, resampled output).
blend
    Per-tile blending weight maps and the blending modes.
pyramid
    Multiscale levels, each the previous one 2x2-mean downsampled.
"""

__all__ = ["assemble", "blend", "plan", "pyramid", "render", "tiles"]
