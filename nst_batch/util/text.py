"""How results are named: a swept value as it appears in a result's name and on a sweep sheet.

Plain functions on plain values, so the light modules (plots, gallery) can share them with the
intake without importing the engine.
"""

from typing import Any


def format_value(value: Any) -> str:
    """``1e+05``, ``0.001``, ``relu1_1``, ``a+b`` for a list."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "+".join(format_value(v) for v in value)
    return str(value)
