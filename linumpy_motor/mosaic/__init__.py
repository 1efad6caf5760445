"""Mosaic sub-package, mirroring ``linumpy.mosaic``."""
