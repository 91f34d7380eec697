"""From files in the inbox to queued runs in the store.

Each tick lists the inbox (through the watcher), asks ``inbox.plan`` which submissions are
ready, claims each into ``state_dir`` and turns it into runs: one per content x style x sweep
combination. A submission that cannot run is failed at once with the reason, its files moved
to ``failed/``; nothing stays behind in the inbox unexplained.
"""

import hashlib
import itertools
from dataclasses import asdict
from pathlib import Path, PurePosixPath
from typing import Any

from loguru import logger

from .claims import Folders, dispose_failure, move_in, unique_child
from .config import Config
from .engine import StyleParams
from .errors import InputError, NstBatchError
from .imagefile import image_size
from .inbox import LIBRARY_PREFIX, SidecarRefs, Submission, plan
from .sidecar import Sidecar, load_sidecar
from .store import JobRecord, RunSpec, Store
from .watcher import InboxWatcher
from .yamlfile import load_yaml


class Intake:
    def __init__(self, config: Config, folders: Folders, store: Store, watcher: InboxWatcher):
        self.config, self.folders, self.store, self.watcher = config, folders, store, watcher
        self._refs: dict[tuple[str, float, int], SidecarRefs] = {}

    def recover(self) -> None:
        """Finish claims a crash interrupted: move what is still in the inbox, then admit."""
        for job in self.store.jobs("claiming"):
            move_in(self.folders, job.id, job.files)
            self._admit(job)

    def tick(self) -> int:
        """Claim every submission that is ready; return how many."""
        entries = self.watcher.snapshot()
        sidecars = {e.path: self._sidecar_refs(e.path) for e in entries if e.complete and _is_sidecar(e.path)}
        self._refs = {key: refs for key, refs in self._refs.items() if key[0] in sidecars}
        submissions = plan(entries, sidecars, self._library(), self.config.pair_timeout)
        for submission in submissions:
            self.claim(submission)
        return len(submissions)

    def claim(self, submission: Submission) -> int:
        spec = {k: v for k, v in asdict(submission).items() if k in ("contents", "styles", "problem")}
        job_id = self.store.begin_claim(submission.name, submission.kind, submission.files, submission.sidecar, spec)
        missing = move_in(self.folders, job_id, submission.files)
        job = self.store.job(job_id)
        if missing:
            self._fail(job, f"{', '.join(missing)} disappeared from the inbox before it could be claimed: drop it again")
        else:
            self._admit(job)
        return job_id

    def _admit(self, job: JobRecord) -> None:
        try:
            runs, priority, name = self._runs(job)
        except NstBatchError as error:
            self._fail(job, str(error))
            return
        taken = {j.outbox_name for j in self.store.all_jobs() if j.outbox_name}
        outbox_name = unique_child(self.folders.outbox, name, taken).name
        self.store.queue(job.id, runs, priority, outbox_name, self._hashes(job))
        logger.bind(job=job.label).info(f"queued {job.name} ({job.kind}): {len(runs)} result(s), priority {priority}")

    def _fail(self, job: JobRecord, reason: str) -> None:
        folder = dispose_failure(self.folders, job.id, job.name, reason)
        self.store.set_job_status(job.id, "failed", reason)
        logger.bind(job=job.label).error(f"{job.name} failed: {reason} (inputs in {folder})")

    def _runs(self, job: JobRecord) -> tuple[list[RunSpec], int, str]:
        if job.spec.get("problem"):
            raise InputError(job.spec["problem"])
        folder = self.folders.job_dir(job.id)
        for name in job.files:
            if (folder / name).is_symlink():
                raise InputError(f"{name} is a symbolic link: copy the file itself into the inbox")
        sidecar = load_sidecar(folder / job.sidecar, self.config.defaults) if job.sidecar else None
        contents, styles = job.spec["contents"], job.spec["styles"]
        for ref in (*contents, *styles):
            image_size(self.input_path(job.id, ref), self.config.max_pixels)
        style_groups = [tuple(styles)] if job.kind != "sidecar" else [(s,) for s in styles]
        combinations = sidecar.combinations() if sidecar else [({}, self.config.defaults)]
        runs = [
            RunSpec(
                label=_label(job.name, content, group, varying, len(contents), len(style_groups), len(combinations)),
                content=content,
                styles=group,
                params=_stored_params(params, sidecar),
                varying=varying,
            )
            for content, group, (varying, params) in itertools.product(contents, style_groups, combinations)
        ]
        for group, (_, params) in itertools.product(style_groups, combinations):
            params.blend_weights(len(group))
        for _, params in combinations:
            if params.init not in ("content", "noise"):
                if "/" in params.init or "\\" in params.init:
                    raise InputError(f"init {params.init!r}: name a file of the style library, without a folder")
                image_size(self.input_path(job.id, LIBRARY_PREFIX + params.init), self.config.max_pixels)
        _deduplicate_labels(runs)
        return runs, sidecar.priority if sidecar else 0, (sidecar.name if sidecar and sidecar.name else job.name)

    def input_path(self, job_id: int, ref: str) -> Path:
        """Where a job's input is: its claimed folder, or the style library (never outside it)."""
        if ref.startswith(LIBRARY_PREFIX):
            if self.config.styles_dir is None:
                raise InputError(f"{ref} names the style library, but styles_dir is not set")
            path = self.config.styles_dir / ref.removeprefix(LIBRARY_PREFIX)
            if path.is_symlink() or not path.resolve().is_relative_to(self.config.styles_dir.resolve()):
                raise InputError(f"{ref} is not a file inside the style library {self.config.styles_dir}")
            return path
        return self.folders.job_dir(job_id) / ref

    def _hashes(self, job: JobRecord) -> dict[str, str]:
        folder = self.folders.job_dir(job.id)
        return {name: _sha256(folder / name) for name in job.files if (folder / name).is_file()}

    def _library(self) -> list[str]:
        styles = self.config.styles_dir
        if styles is None or not styles.is_dir():
            return []
        return [p.name for p in styles.iterdir() if p.is_file() and not p.name.startswith(".")]

    def _sidecar_refs(self, path: str) -> SidecarRefs:
        """What a sidecar names, cached by (path, mtime, size): it is read once, not every tick."""
        file = self.folders.inbox / path
        try:
            stat = file.stat()
        except OSError:
            return SidecarRefs(problem=f"{path} cannot be read")
        key = (path, stat.st_mtime, stat.st_size)
        if key not in self._refs:
            self._refs[key] = _read_refs(file)
        return self._refs[key]


def _is_sidecar(path: str) -> bool:
    return "/" not in path and PurePosixPath(path).suffix.lower() in (".yaml", ".yml")


def _read_refs(file: Path) -> SidecarRefs:
    try:
        data = load_yaml(file)
    except NstBatchError as error:
        return SidecarRefs(problem=str(error))

    def names(key: str) -> tuple[str, ...] | None:
        value = data.get(key)
        if value is None:
            return None
        return tuple(str(v) for v in (value if isinstance(value, list) else [value]))

    return SidecarRefs(content=names("content"), style=names("style"))


def _stored_params(params: StyleParams, sidecar: Sidecar | None) -> dict[str, Any]:
    stored = params.model_dump(mode="json", exclude_unset=True)
    if sidecar is not None and sidecar.gif and not params.frame_every:
        stored["frame_every"] = max(1, params.iterations // 50)
    return stored


def _label(name: str, content: str, styles: tuple[str, ...], varying: dict, n_contents: int, n_styles: int, n_combos: int) -> str:
    """A result's file name: the job's name, or what varies between its results."""
    parts = []
    if n_contents > 1:
        parts.append(PurePosixPath(content).stem)
    if n_styles > 1:
        parts.append("+".join(PurePosixPath(s).stem for s in styles))
    if n_combos > 1:
        parts.extend(f"{key}={_short(value)}" for key, value in varying.items())
    return "_".join(parts) or name


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "+".join(_short(v) for v in value)
    return str(value)


def _deduplicate_labels(runs: list[RunSpec]) -> None:
    seen: dict[str, int] = {}
    for i, run in enumerate(runs):
        count = seen.get(run.label, 0) + 1
        seen[run.label] = count
        if count > 1:
            runs[i] = RunSpec(f"{run.label}-{count}", run.content, run.styles, run.params, run.varying)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
