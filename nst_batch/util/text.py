"""How values read in names, captions and reports: plain functions on plain values, so the light
modules (plots, gallery, status) can share them with the intake without importing the engine."""

from collections.abc import Iterable
from typing import Any, TypeVar

T = TypeVar("T")


def format_value(value: Any) -> str:
    """A swept value as it appears in a result's name and on a sweep sheet: ``1e+05``,
    ``0.001``, ``relu1_1``, ``a+b`` for a list."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "+".join(format_value(v) for v in value)
    return str(value)


def format_duration(seconds: float) -> str:
    """``42 s``, ``3 min 5 s``, ``2 h 10 min``; never ``0 s`` for something that took time."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {secs} s"
    return f"{max(secs, 1) if seconds > 0 else 0} s"


def distinct(values: Iterable[T]) -> list[T]:
    """``values`` without repeats, in first-seen order (works for unhashable values too)."""
    seen: list[T] = []
    for value in values:
        if value not in seen:
            seen.append(value)
    return seen
