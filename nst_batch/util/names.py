"""Names of files and folders: which characters no name is meant to have, and the numbered
candidates (``name``, ``name-2``, ...) for a name that may be taken."""

import itertools
import unicodedata
from collections.abc import Iterator

# Control characters, undecodable bytes (surrogate escapes), line and paragraph separators.
_UNSAFE_CATEGORIES = ("Cc", "Cs", "Zl", "Zp")


def unsafe_name(name: str) -> bool:
    """Whether a name has a character no picture is meant to be named with: one that would break
    a log line, a folder listing or a terminal."""
    return any(unicodedata.category(char) in _UNSAFE_CATEGORIES for char in name)


def safe_name(name: str) -> str:
    """``name`` with each such character replaced by ``_``: fit for a folder name and a log line."""
    return "".join("_" if unicodedata.category(char) in _UNSAFE_CATEGORIES else char for char in name)


def numbered(name: str) -> Iterator[str]:
    """``name``, ``name-2``, ``name-3``...: the candidates, in order, for a name that may be taken."""
    yield name
    for n in itertools.count(2):
        yield f"{name}-{n}"
