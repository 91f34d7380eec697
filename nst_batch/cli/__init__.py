"""The command line: `nst-batch run | serve | status | estimate | check | fetch-weights`."""

from .main import main

__all__ = ["main"]
