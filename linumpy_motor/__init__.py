"""linumpy-motor: pooled global affine motor model and mosaic stitching for serial OCT."""

__version__ = "0.1.0"
