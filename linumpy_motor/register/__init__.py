"""Registration: measuring neighbour-tile displacements and fitting the motor model to them.

Modules
-------
flatfield
    The tiles' vignetting: estimated from a slice's tiles before measuring (or loaded), applied by the stitcher too.
correlation
    Batched phase correlation, peak candidates checked by NCC, sub-pixel refinement.
measure
    Neighbour pairs of one slice, a row of tiles at a time (:func:`measure.measure_grid_pairs`).
planes
    Which Z plane to measure on (:func:`planes.choose_plane`).
fit
    Robust fit of the 2x2 motor matrix, per slice and pooled (:func:`fit.fit_pooled`).
geometry
    Tile positions: ideal grid, affine model, registration solve.
robust
    The outlier rule (Tukey's biweight on 2-D residual lengths), used by fit, geometry and the QC report.
"""

__all__ = ["correlation", "flatfield", "fit", "geometry", "measure", "planes", "robust"]
