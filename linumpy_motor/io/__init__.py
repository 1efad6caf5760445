"""Everything that touches files: reading mosaic grids, finding slices, the JSON formats, writing outputs.

Modules
-------
grid
    Open a mosaic grid (OME-Zarr, NGFF 0.4 or 0.5) and read its blocks (:func:`grid.open_mosaic`).
dataset
    A dataset's slices from a folder or a samplesheet, and the slice-id rule (:func:`dataset.discover_slices`).
schemas
    The JSON files passed between steps, validated on the way in (:func:`schemas.load`).
ngff
    Writing OME-Zarr images and the supported NGFF versions.
outputs
    What this program may write, replace or delete; atomic writes (:func:`outputs.atomic_output`).
records
    The typed values the core passes around: pair tables (:func:`records.pair_table`) and the motor model.
"""

__all__ = ["dataset", "grid", "ngff", "outputs", "records", "schemas"]
