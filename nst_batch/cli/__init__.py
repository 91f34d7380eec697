"""The command line: `nst-batch run | serve | status | pause | resume | cancel | retry | priority | estimate | validate | fetch-weights`."""

from .main import main

__all__ = ["main"]
