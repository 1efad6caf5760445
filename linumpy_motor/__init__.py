"""linumpy-motor: pooled global affine motor model and mosaic stitching for serial OCT."""

__all__ = ["__version__"]

__version__ = "0.1.0"
