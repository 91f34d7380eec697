"""Where a job's input files live: the inbox, then ``state_dir/jobs/ID/`` once claimed, then
``archive/`` after success, ``failed/NAME/`` (with ``error.txt``) after a failure, or
``cancelled/NAME/`` (with ``cancelled.txt``) after ``nst-batch cancel``; a retry takes them back
from failed/ or cancelled/ into ``jobs/ID/``.

Every move is a rename, or from an inbox on another filesystem a copy that appears whole before
the original goes, so a file is always in one place; the store records the claim first, so a
crash mid-claim is finished on the next start.
"""

import errno
import os
import secrets
import shutil
from collections.abc import Iterable
from pathlib import Path

from ..util.atomicio import TEMP_SUFFIX, atomic_path, atomic_write, fsync_dir
from ..util.names import numbered
from .folders import Folders, remove
from .inbox import is_litter


def move_in(folders: Folders, job_id: int, files: Iterable[str]) -> list[str]:
    """Move the job's files from the inbox into its state folder; return those that are missing.

    Safe to repeat: a file already moved is skipped. Symbolic links are moved as links, never
    followed (the intake refuses them afterwards). A folder entry (``trip/raw/``) moves whole.
    """
    files = list(files)
    target = folders.job_dir(job_id)
    missing = []
    for name in files:
        source, destination = folders.inbox / name, target / name
        if os.path.lexists(destination):
            if os.path.lexists(source):  # a cross-device move stopped after its copy
                remove(source)
            continue
        if not os.path.lexists(source):
            missing.append(name)
            continue
        destination.parent.mkdir(parents=True, exist_ok=True)
        _move(source, destination)
    for parent in dict.fromkeys((folders.inbox / name).parent for name in files):
        if parent != folders.inbox:
            _remove_emptied(parent)
    fsync_dir(target)
    return missing


def _remove_emptied(folder: Path) -> None:
    """Remove a job folder the claim emptied, with litter such as ``.DS_Store`` still in it: that
    is nobody's input, and it would keep the folder in the inbox for good."""
    try:
        with os.scandir(folder) as listing:
            left = list(listing)
        if any(not is_litter(item.name) or item.is_dir(follow_symlinks=False) for item in left):
            return  # something else is there, or something is still being written
        for item in left:
            os.unlink(item.path)
        folder.rmdir()
    except OSError:
        pass  # gone already, or a file arrived meanwhile: the next scan finds it


def _move(source: Path, destination: Path) -> None:
    """A rename; across filesystems (an inbox on another mount), copy, fsync, rename, unlink.

    Either way the destination appears whole, in one step, and only then does the source go.
    """
    try:
        os.rename(source, destination)
        return
    except OSError as error:
        if error.errno != errno.EXDEV:
            raise
    if source.is_symlink():
        os.symlink(os.readlink(source), destination)
    elif source.is_dir():
        temp = destination.with_name(f".{destination.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}")
        shutil.copytree(source, temp, symlinks=True)
        os.rename(temp, destination)
    else:
        with atomic_path(destination) as temp:
            shutil.copyfile(source, temp)
    remove(source)


def unique_child(parent: Path, name: str) -> Path:
    """``parent/name``, or ``name-2``, ``name-3``..., whichever does not exist yet."""
    return next(parent / candidate for candidate in numbered(name) if not os.path.lexists(parent / candidate))


def _rename_to_unique(source: Path, parent: Path, name: str) -> Path:
    """Rename the folder ``source`` to ``parent/name``, or ``name-2``...; never onto anything.

    Two threads may pick a name at once (the intake and the main thread both fail jobs), so each
    candidate is reserved with mkdir, which only one caller wins; the rename then replaces that
    empty folder in one step. A crash in between leaves an empty folder, never a lost input.
    """
    for candidate in (parent / n for n in numbered(name)):
        try:
            os.mkdir(candidate)
        except FileExistsError:
            continue
        try:
            os.rename(source, candidate)
        except BaseException:
            candidate.rmdir()
            raise
        fsync_dir(parent)
        return candidate


def dispose_success(folders: Folders, job_id: int, name: str, policy: str) -> Path | None:
    """After success: archive the inputs (``state_dir/archive/NAME``), delete them, or keep them.

    Safe to repeat: once the job's folder is gone, there is nothing left to do (None).
    """
    source = folders.job_dir(job_id)
    if policy == "keep" or not source.exists():
        return source if source.exists() else None
    if policy == "delete":
        shutil.rmtree(source)
        return None
    return _rename_to_unique(source, folders.archive, name)


def dispose_failure(folders: Folders, job_id: int, name: str, reason: str) -> Path | None:
    """After failure: inputs to ``state_dir/failed/NAME/`` with ``error.txt`` saying why and what to do.

    Safe to repeat after a crash: error.txt is written into the job's folder first and the rename
    is the commit, so once the job's folder is gone there is nothing left to do (None).
    """
    source = folders.job_dir(job_id)
    if not source.exists():
        return None
    atomic_write(source / "error.txt", reason.rstrip() + "\n")
    return _rename_to_unique(source, folders.failed, name)


NOTES = ("error.txt", "cancelled.txt", "log.txt")  # what failed/ and cancelled/ add beside the inputs


def dispose_cancelled(folders: Folders, job_id: int, name: str, note: str) -> Path | None:
    """After ``nst-batch cancel``: inputs to ``state_dir/cancelled/NAME/`` with ``cancelled.txt``.
    Safe to repeat, as ``dispose_failure``."""
    source = folders.job_dir(job_id)
    if not source.exists():
        return None
    atomic_write(source / "cancelled.txt", note.rstrip() + "\n")
    return _rename_to_unique(source, folders.cancelled, name)


def take_back(folders: Folders, job_id: int, place: Path) -> None:
    """A retried job's inputs from ``place`` (its folder in failed/ or cancelled/) back into
    ``jobs/ID/``, without the notes the failure or cancel added. One rename; safe to repeat: once
    ``jobs/ID`` holds them, there is nothing left to move."""
    target = folders.job_dir(job_id)
    if not target.exists():
        os.rename(place, target)
        fsync_dir(target.parent)
    for note in NOTES:
        (target / note).unlink(missing_ok=True)
