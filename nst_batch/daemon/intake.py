"""From files in the inbox to queued runs in the store.

Each tick lists the inbox (through the watcher), asks ``inbox.plan`` which submissions are
ready, claims each into ``state_dir`` and turns it into runs: one per content x style x sweep
combination. A submission that cannot run is failed at once with the reason, its files moved
to ``failed/``; nothing stays behind in the inbox unexplained.
"""

import hashlib
import itertools
import os
import stat
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path, PurePosixPath

from loguru import logger
from pydantic import ValidationError

from ..engine import StyleParams
from ..results.report import JobStatus
from ..results.result import gif_frame_every
from ..settings.config import Config
from ..settings.problems import format_validation_error
from ..settings.sidecar import Sidecar, SidecarJob, load_sidecar
from ..settings.yamlfile import load_yaml
from ..util.errors import InputError, NstBatchError
from ..util.imagefile import image_size
from ..util.text import format_value
from .claims import dispose_failure, move_in, unique_child
from .folders import Folders
from .inbox import LIBRARY_PREFIX, SIDECAR_SUFFIXES, SidecarRefs, Submission, is_ignored, plan
from .store import JobRecord, RunSpec, Store
from .watcher import InboxWatcher

# A listing taken in the same clock tick as a change to the folder could miss that change while
# the folder's mtime stays the same, so a listing is reused only once its mtime is this old.
LISTING_TRUSTED_AFTER_S = 2.0


@dataclass(frozen=True)
class Scan:
    """What one tick did: how many submissions it claimed, and whether inbox files still wait."""

    claimed: int
    waiting: bool


class Intake:
    def __init__(self, config: Config, folders: Folders, store: Store, watcher: InboxWatcher):
        self.config, self.folders, self.store, self.watcher = config, folders, store, watcher
        self._refs: dict[tuple[str, float, int], SidecarRefs] = {}
        self._library_listing: tuple[int, list[str]] | None = None  # (the folder's mtime_ns, its names)
        # Inbox files a failed job left behind (a read-only inbox): skipped until they change,
        # or every tick would fail them again as a new job.
        self._left_behind: dict[str, tuple[int, int]] = {}

    def recover(self) -> None:
        """Finish claims a crash or an error interrupted. A failure that was decided is finished
        with its reason; any other claim moves what is still in the inbox, then is admitted."""
        for job in self.store.jobs(JobStatus.CLAIMING):
            if job.error:
                self._fail(job, job.error)
            else:
                self._settle(job)

    def tick(self) -> Scan:
        """Finish interrupted claims, then claim every submission that is ready."""
        self.recover()
        self._left_behind = {p: s for p, s in self._left_behind.items() if _signature(self.folders.inbox / p) == s}
        entries = [e for e in self.watcher.snapshot() if e.path not in self._left_behind]
        sidecars = {e.path: self._sidecar_refs(e.path) for e in entries if e.complete and _is_sidecar(e.path)}
        self._refs = {key: refs for key, refs in self._refs.items() if key[0] in sidecars}
        submissions = plan(entries, sidecars, self._library(), self.config.pair_timeout)
        claimed: set[str] = set()
        for submission in submissions:
            self.claim(submission)
            claimed.update(submission.files)
        waiting = any(e.path not in claimed and e.path not in self._left_behind for e in entries)
        return Scan(len(submissions), waiting)

    def claim(self, submission: Submission) -> int:
        spec = {k: v for k, v in asdict(submission).items() if k in ("contents", "styles", "problem")}
        job_id = self.store.begin_claim(submission.name, submission.kind, submission.files, submission.sidecar, spec)
        self.folders.job_dir(job_id).mkdir(parents=True, exist_ok=True)  # a failure always has a folder to report in
        self._settle(self.store.job(job_id))
        return job_id

    def _settle(self, job: JobRecord) -> None:
        """Queue the job's runs or fail it with the reason. Only a failure to record the failure
        escapes: the job stays ``claiming`` and the next tick tries again."""
        try:
            reason = self._admit(job)
        except Exception as error:  # e.g. a read-only inbox: the job fails, not the intake
            logger.bind(job=job.label).opt(exception=error).warning(f"claiming {job.name} failed")
            reason = self._unexpected(job, error)
        if reason is not None:
            self._fail(job, reason)

    def _admit(self, job: JobRecord) -> str | None:
        """Move the job's files in and queue its runs; or the reason it cannot run. A retried job's
        files are in its folder already: the inbox is not touched (a new file of the same name
        there is another submission)."""
        if _retried(job):
            folder = self.folders.job_dir(job.id)
            missing = [name for name in job.files if not os.path.lexists(folder / name)]
            if missing:
                return f"{', '.join(missing)} went from {folder} before the retry could claim it: drop it again"
        elif missing := move_in(self.folders, job.id, job.files):
            return f"{', '.join(missing)} disappeared from the inbox before it could be claimed: drop it again"
        try:
            runs, priority, name = self._runs(job)
        except NstBatchError as error:
            return str(error)
        # Only a hint: the outbox resolves a name taken meanwhile when it publishes.
        outbox_name = unique_child(self.folders.outbox, name).name
        self.store.queue(job.id, runs, priority, outbox_name, self._hashes(job))
        logger.bind(job=job.label).info(f"queued {job.name} ({job.kind}): {len(runs)} result(s), priority {priority}")
        return None

    def _unexpected(self, job: JobRecord, error: Exception) -> str:
        reason = f"{job.name} could not be claimed: {type(error).__name__}: {error}"
        left = [] if _retried(job) else [f for f in job.files if os.path.lexists(self.folders.inbox / f)]
        if left:
            reason += f"; still in the inbox: {', '.join(left)} (skipped until changed or dropped again)"
        return reason

    def _fail(self, job: JobRecord, reason: str) -> None:
        self.store.record_error(job.id, reason)  # first: recover() finishes this failure after a crash
        folder = dispose_failure(self.folders, job.id, job.name, reason)
        if folder is not None:
            self.store.set_place(job.id, str(folder.relative_to(self.folders.state)))
        self.store.set_job_status(job.id, JobStatus.FAILED, reason)
        for name in [] if _retried(job) else job.files:  # a retry's inbox namesakes are new submissions
            if (signature := _signature(self.folders.inbox / name)) is not None:
                self._left_behind[name] = signature
        where = f"inputs in {folder}" if folder else "its folder had already gone to failed/"
        logger.bind(job=job.label).error(f"{job.name} failed: {reason} ({where})")

    def _runs(self, job: JobRecord) -> tuple[list[RunSpec], int, str]:
        if job.spec.get("problem"):
            raise InputError(job.spec["problem"])
        folder = self.folders.job_dir(job.id)
        for name in job.files:
            _check_plain_file(folder / name, name)
        overrides = job.spec.get("overrides", {})  # a retry's --param
        sidecar = load_sidecar(folder / job.sidecar, self.config.defaults, overrides) if job.sidecar else None
        contents, styles = job.spec["contents"], job.spec["styles"]
        sizes = {ref: image_size(self.folders.input_path(job.id, ref), self.config.max_pixels) for ref in (*contents, *styles)}
        style_groups = [tuple(styles)] if job.kind != "sidecar" else [(s,) for s in styles]
        combinations = sidecar.combinations() if sidecar else [({}, self.config.defaults.with_overrides(overrides))]
        runs = [
            RunSpec(
                label=_label(job.name, content, group, varying, len(contents), len(style_groups), len(combinations)),
                content=content,
                styles=group,
                params=_with_gif(params, sidecar),
                varying=varying,
                content_size=sizes[content],
            )
            for content, group, (varying, params) in itertools.product(contents, style_groups, combinations)
        ]
        for group, (_, params) in itertools.product(style_groups, combinations):
            params.blend_weights(len(group))
        for hint in dict.fromkeys(params.weights_hint() for _, params in combinations):
            if hint:
                logger.bind(job=job.label).warning(f"{job.name}: {hint}")
        for _, params in combinations:
            if (name := params.init_image_name) is not None:
                if "/" in name or "\\" in name:
                    raise InputError(f"init {name!r}: name a file of the style library, without a folder")
                image_size(self.folders.input_path(job.id, LIBRARY_PREFIX + name), self.config.max_pixels)
        _deduplicate_labels(runs)
        return runs, sidecar.priority if sidecar else 0, (sidecar.name if sidecar and sidecar.name else job.name)

    def _hashes(self, job: JobRecord) -> dict[str, str]:
        folder = self.folders.job_dir(job.id)
        return {name: _sha256(folder / name) for name in job.files if (folder / name).is_file()}

    def _library(self) -> list[str]:
        """The style library's file names, listed again only when the folder changed."""
        styles = self.folders.styles
        if styles is None:
            return []
        try:
            mtime_ns = os.stat(styles).st_mtime_ns
            if self._library_listing is not None and self._library_listing[0] == mtime_ns:
                return self._library_listing[1]
            with os.scandir(styles) as listing:
                names = [e.name for e in listing if e.is_file(follow_symlinks=False) and not is_ignored(e.name)]
        except OSError:
            return []  # no library (yet)
        if time.time_ns() - mtime_ns >= LISTING_TRUSTED_AFTER_S * 1e9:
            self._library_listing = (mtime_ns, names)
        return names

    def _sidecar_refs(self, path: str) -> SidecarRefs:
        """``sidecar_refs``, cached by (path, mtime, size): a sidecar is read once, not every tick."""
        try:
            info = os.lstat(self.folders.inbox / path)
        except OSError:
            return SidecarRefs(problem=f"{path} cannot be read")
        key = (path, info.st_mtime, info.st_size)
        if key not in self._refs:
            self._refs[key] = sidecar_refs(self.folders.inbox, path)
        return self._refs[key]


def sidecar_refs(inbox: Path, path: str) -> SidecarRefs:
    """What the sidecar ``inbox/path`` names, or why it cannot say. A symbolic link is never read:
    what it points to may be outside the inbox."""
    file = inbox / path
    try:
        info = os.lstat(file)
    except OSError:
        return SidecarRefs(problem=f"{path} cannot be read")
    if stat.S_ISLNK(info.st_mode):
        return SidecarRefs(problem=f"{path} is a symbolic link: copy the file itself into the inbox")
    if not stat.S_ISREG(info.st_mode):  # reading a named pipe would hang the intake
        return SidecarRefs(problem=f"{path} is not a regular file (a named pipe, a socket or a device)")
    return _read_refs(file)


def _check_plain_file(path: Path, name: str) -> None:
    """Refuse what the claim moved in without following or opening it: a symbolic link may point
    outside the inbox, and opening a named pipe would hang the intake."""
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        raise InputError(f"{name} is a symbolic link: copy the file itself into the inbox")
    if not stat.S_ISREG(info.st_mode):
        raise InputError(f"{name} is not a regular file (a named pipe, a socket or a device): drop the file itself")


def _retried(job: JobRecord) -> bool:
    """Whether the job was asked for again (``nst-batch retry``): its files came from its own folder,
    and the inbox is none of its business."""
    return bool(job.spec.get("retried"))


def _signature(path: Path) -> tuple[int, int] | None:
    try:
        info = os.lstat(path)
    except OSError:
        return None
    return info.st_size, info.st_mtime_ns


def _is_sidecar(path: str) -> bool:
    return "/" not in path and PurePosixPath(path).suffix.lower() in SIDECAR_SUFFIXES


def _read_refs(file: Path) -> SidecarRefs:
    """The files a sidecar names, read the way the sidecar model reads them (a name or a list)."""
    try:
        data = load_yaml(file, untrusted=True)
    except NstBatchError as error:
        return SidecarRefs(problem=str(error))
    given = {key: data[key] for key in ("content", "style") if key in data}
    try:
        job = SidecarJob.model_validate(given)
    except ValidationError as error:
        return SidecarRefs(problem=format_validation_error(str(file), error, SidecarJob, given))
    return SidecarRefs(
        content=job.content if "content" in given else None, style=job.style if "style" in given else None
    )


def _with_gif(params: StyleParams, sidecar: Sidecar | None) -> StyleParams:
    if sidecar is not None and sidecar.gif:
        return params.with_overrides({"frame_every": gif_frame_every(params)})
    return params


def _label(name: str, content: str, styles: tuple[str, ...], varying: dict, n_contents: int, n_styles: int, n_combos: int) -> str:
    """A result's file name: the job's name, or what varies between its results."""
    parts = []
    if n_contents > 1:
        parts.append(PurePosixPath(content).stem)
    if n_styles > 1:
        parts.append("+".join(PurePosixPath(s).stem for s in styles))
    if n_combos > 1:
        parts.extend(f"{key}={format_value(value)}" for key, value in varying.items())
    return "_".join(parts) or name


def _deduplicate_labels(runs: list[RunSpec]) -> None:
    seen: dict[str, int] = {}
    for i, run in enumerate(runs):
        count = seen.get(run.label, 0) + 1
        seen[run.label] = count
        if count > 1:
            runs[i] = replace(run, label=f"{run.label}-{count}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
