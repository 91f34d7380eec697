"""Writes that are never seen half done.

Every write goes to a hidden temporary file (``.<name>.<random>.tmp``) in the target's own
folder, is fsynced, then renamed over the target with ``os.replace``. Watchers and the outbox
ignore names that start with ``.`` and end with ``.tmp``, so nobody reads a partial file, and
a crash leaves either the old content or the new one.
"""

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TEMP_SUFFIX = ".tmp"


def atomic_write(path: Path, data: bytes | str) -> None:
    """Replace ``path`` with ``data`` (str is written as UTF-8) in one atomic step."""
    with atomic_path(Path(path)) as temp:
        temp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path to write by name; on clean exit it replaces ``path``.

    The temporary name ends in ``.tmp``, so writers that pick a format from the suffix
    (``PIL.Image.save``, ``matplotlib.savefig``) must be given the format explicitly.
    """
    path = Path(path)
    temp = _create_temp(path)
    try:
        yield temp
        _fsync_file(temp)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def is_temp_name(name: str) -> bool:
    """True for names this module uses for files still being written."""
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


def fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable; best effort (not every OS or filesystem can)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _create_temp(path: Path) -> Path:
    # O_EXCL reserves a fresh name; mode 0o666 lets the umask decide the final permissions,
    # unlike tempfile.mkstemp, which would leave every result readable by its owner only.
    while True:
        temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}")
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return temp


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
