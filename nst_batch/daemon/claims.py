"""Where a job's input files live: the inbox, then ``state_dir/jobs/ID/`` once claimed, then
``archive/`` after success or ``failed/NAME/`` (with ``error.txt``) after a failure.

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

from ..util.atomicio import TEMP_SUFFIX, atomic_path, atomic_write, fsync_dir, is_temp_name
from ..settings.config import Config
from ..util.errors import InputError
from .inbox import LIBRARY_PREFIX, is_litter


class Folders:
    """The daemon's folders, derived from the config."""

    def __init__(self, config: Config):
        self.inbox = config.inbox
        self.outbox = config.outbox
        self.styles = config.styles_dir
        self.state = config.state_dir
        self.jobs = self.state / "jobs"
        self.archive = self.state / "archive"
        self.failed = self.state / "failed"
        self.checkpoints = self.state / "checkpoints"
        self.staging = self.outbox / ".staging"  # on the outbox's filesystem, so publishing is a rename

    def create(self) -> None:
        for folder in (self.inbox, self.outbox, self.jobs, self.archive, self.failed, self.checkpoints, self.staging):
            folder.mkdir(parents=True, exist_ok=True)

    def job_dir(self, job_id: int) -> Path:
        return self.jobs / str(job_id)

    def staging_dir(self, job_id: int) -> Path:
        return self.staging / f"job-{job_id}"

    def checkpoint(self, run_id: int) -> Path:
        return self.checkpoints / f"run-{run_id}.pt"

    def tidy(self) -> int:
        """Remove what writes and moves a crash interrupted; return how many. For start-up only,
        before anything else runs. Temporary names are ours alone (inputs are never hidden
        files), and an empty folder in archive/ or failed/ is one reserved for a job that never
        arrived in it (``_rename_to_unique``)."""
        removed = 0
        job_folders = _subfolders(self.jobs)
        in_jobs = [*job_folders, *(sub for folder in job_folders for sub in _subfolders(folder))]
        for folder in (self.checkpoints, *_subfolders(self.staging), *in_jobs):
            for item in _listing(folder):
                if is_temp_name(item.name):
                    _remove(Path(item.path))
                    removed += 1
        for folder in (*_subfolders(self.archive), *_subfolders(self.failed)):
            try:
                folder.rmdir()  # only an empty one goes
                removed += 1
            except OSError:
                pass
        return removed

    def input_path(self, job_id: int, ref: str) -> Path:
        """Where a job's input is: its claimed folder, or the style library (never outside it)."""
        if not ref.startswith(LIBRARY_PREFIX):
            return self.job_dir(job_id) / ref
        if self.styles is None:
            raise InputError(f"{ref} names the style library, but styles_dir is not set")
        path = self.styles / ref.removeprefix(LIBRARY_PREFIX)
        if path.is_symlink() or not path.resolve().is_relative_to(self.styles.resolve()):
            raise InputError(f"{ref} is not a file inside the style library {self.styles}")
        return path


def _listing(folder: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as listing:
            return list(listing)
    except OSError:
        return []


def _subfolders(folder: Path) -> list[Path]:
    return [Path(item.path) for item in _listing(folder) if item.is_dir(follow_symlinks=False)]


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
                _remove(source)
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
    _remove(source)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        os.unlink(path)


def unique_child(parent: Path, name: str) -> Path:
    """``parent/name``, or ``name-2``, ``name-3``..., whichever does not exist yet."""
    candidate, n = name, 1
    while os.path.lexists(parent / candidate):
        n += 1
        candidate = f"{name}-{n}"
    return parent / candidate


def _rename_to_unique(source: Path, parent: Path, name: str) -> Path:
    """Rename the folder ``source`` to ``parent/name``, or ``name-2``...; never onto anything.

    Two threads may pick a name at once (the intake and the main thread both fail jobs), so each
    candidate is reserved with mkdir, which only one caller wins; the rename then replaces that
    empty folder in one step. A crash in between leaves an empty folder, never a lost input.
    """
    n = 1
    while True:
        candidate = parent / (name if n == 1 else f"{name}-{n}")
        try:
            os.mkdir(candidate)
        except FileExistsError:
            n += 1
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
