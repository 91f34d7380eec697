"""Where a job's input files live: the inbox, then ``state_dir/jobs/ID/`` once claimed, then
``archive/`` after success or ``failed/NAME/`` (with ``error.txt``) after a failure.

Every move is a rename, or from an inbox on another filesystem a copy that appears whole before
the original goes, so a file is always in one place; the store records the claim first, so a
crash mid-claim is finished on the next start.
"""

import errno
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from .atomicio import atomic_path, atomic_write, fsync_dir
from .config import Config


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


def move_in(folders: Folders, job_id: int, files: Iterable[str]) -> list[str]:
    """Move the job's files from the inbox into its state folder; return those that are missing.

    Safe to repeat: a file already moved is skipped. Symbolic links are moved as links, never
    followed (the intake refuses them afterwards).
    """
    files = list(files)
    target = folders.job_dir(job_id)
    missing = []
    for name in files:
        source, destination = folders.inbox / name, target / name
        if os.path.lexists(destination):
            if os.path.lexists(source):  # a cross-device move stopped after its copy
                os.unlink(source)
            continue
        if not os.path.lexists(source):
            missing.append(name)
            continue
        destination.parent.mkdir(parents=True, exist_ok=True)
        _move(source, destination)
    for name in files:  # folder jobs leave their emptied folder behind
        parent = (folders.inbox / name).parent
        if parent != folders.inbox:
            try:
                parent.rmdir()
            except OSError:
                pass
    fsync_dir(target)
    return missing


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
    else:
        with atomic_path(destination) as temp:
            shutil.copyfile(source, temp)
    os.unlink(source)


def unique_child(parent: Path, name: str, taken: Iterable[str] = ()) -> Path:
    """``parent/name``, or ``name-2``, ``name-3``... so that nothing is ever overwritten."""
    taken = set(taken)
    candidate, n = name, 1
    while candidate in taken or os.path.lexists(parent / candidate):
        n += 1
        candidate = f"{name}-{n}"
    return parent / candidate


def dispose_success(folders: Folders, job_id: int, name: str, policy: str) -> Path | None:
    """After success: archive the inputs (``state_dir/archive/NAME``), delete them, or keep them."""
    source = folders.job_dir(job_id)
    if policy == "keep" or not source.exists():
        return source if source.exists() else None
    if policy == "delete":
        shutil.rmtree(source)
        return None
    destination = unique_child(folders.archive, name)
    os.rename(source, destination)
    return destination


def dispose_failure(folders: Folders, job_id: int, name: str, reason: str) -> Path:
    """After failure: inputs to ``state_dir/failed/NAME/`` with ``error.txt`` saying why and what to do."""
    source = folders.job_dir(job_id)
    destination = unique_child(folders.failed, name)
    if source.exists():
        os.rename(source, destination)
    else:
        destination.mkdir(parents=True)
    atomic_write(destination / "error.txt", reason.rstrip() + "\n")
    return destination
