"""nst-batch: an overnight neural-style-transfer service and its engine."""

__version__ = "0.1.0"
