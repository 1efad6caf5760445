"""Mosaic sub-package, mirroring ``linumpy.mosaic``."""

__all__ = ["motor"]
