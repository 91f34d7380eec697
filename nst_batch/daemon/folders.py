"""The daemon's folders, all derived from the config: the inbox and outbox, the style library,
and under ``state_dir`` the claimed jobs, the archive, failed/, cancelled/ and the checkpoints; plus tidying
what an interruption left in them."""

import os
import shutil
from pathlib import Path

from ..settings.config import Config
from ..util.atomicio import is_temp_name
from ..util.errors import InputError
from .inbox import LIBRARY_PREFIX
from .preview import FOLDER as PREVIEWS


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
        self.cancelled = self.state / "cancelled"
        self.checkpoints = self.state / "checkpoints"
        self.staging = self.outbox / ".staging"  # on the outbox's filesystem, so publishing is a rename

    def create(self) -> None:
        for folder in (
            self.inbox, self.outbox, self.jobs, self.archive, self.failed, self.cancelled, self.checkpoints, self.staging
        ):
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
        arrived in it (``claims``)."""
        removed = 0
        job_folders = _subfolders(self.jobs)
        in_jobs = [*job_folders, *(sub for folder in job_folders for sub in _subfolders(folder))]
        # The outbox itself: the gallery's pages are written there (and previews in .running/).
        for folder in (self.checkpoints, self.outbox, self.outbox / PREVIEWS, *_subfolders(self.staging), *in_jobs):
            for item in _listing(folder):
                if is_temp_name(item.name):
                    remove(Path(item.path))
                    removed += 1
        for folder in (*_subfolders(self.archive), *_subfolders(self.failed), *_subfolders(self.cancelled)):
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


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        os.unlink(path)
