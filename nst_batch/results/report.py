"""The job report: ``job.json`` in each published job's folder. What a job was (its inputs, when,
on what), and for each result how it was made and how it ended; plus the states jobs and runs go
through, which the store records and the report publishes.

Written in two steps: each run leaves its ``.LABEL.run.json`` in the staging folder
(``RunSummary``), and publishing merges them into the job's report (``results.outbox``). Read
by the gallery and the sweep sheet. Reading is lenient: a report from an older version, or one a
person edited, loses only the fields that do not read, never the whole job.
"""

import json
import platform
from collections.abc import Mapping, Sequence
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from .. import __version__
from ..util.atomicio import atomic_write


class _State(str, Enum):
    """A state that is its stored string: compares, formats and serializes as its value."""

    def __str__(self) -> str:
        return self.value


class JobStatus(_State):
    """A job: claiming -> queued -> running -> done | failed, or -> cancelling -> cancelled
    (``nst-batch cancel``); a failed or cancelled job retried is claiming again. The values are
    what the store and job.json hold."""

    CLAIMING = "claiming"
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"  # at least one of its results failed (the others are published)
    CANCELLING = "cancelling"  # asked to stop: its running run stops, nothing of it is published
    CANCELLED = "cancelled"  # its inputs are in state_dir/cancelled/NAME/


class RunStatus(_State):
    """A run, one result of a job: queued -> running -> done | failed (queued again to retry)."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"  # by `nst-batch cancel`: not a result, nor a failure


ACTIVE_JOBS = (JobStatus.QUEUED, JobStatus.RUNNING)  # a job in these has work left
ACTIVE_RUNS = (RunStatus.QUEUED, RunStatus.RUNNING)
UNFINISHED_JOBS = (*ACTIVE_JOBS, JobStatus.CANCELLING)  # a job in these ends once its runs have


def job_ending(status: JobStatus, runs: Sequence[RunStatus]) -> JobStatus:
    """How a job whose runs have all ended ends (pure): cancelled when it was asked to be, or when
    every run was cancelled; failed when a result failed (the others are published); else done."""
    if status == JobStatus.CANCELLING or (runs and all(r == RunStatus.CANCELLED for r in runs)):
        return JobStatus.CANCELLED
    if any(r == RunStatus.FAILED for r in runs):
        return JobStatus.FAILED
    return JobStatus.DONE

_READ = ConfigDict(frozen=True, extra="ignore")


class FinalLosses(BaseModel):
    """The loss record of a result's last iteration; a field an edited file lacks stays None."""

    model_config = _READ

    iteration: int | None = None
    content: float | None = None
    style: float | None = None
    tv: float | None = None
    total: float | None = None
    elapsed_s: float | None = None


class RunSummary(BaseModel):
    """What a finished run knows about its result (stage: written, waiting in the staging folder
    for its job to be published)."""

    model_config = _READ

    label: str
    seed: int | None = None
    iterations: int | None = None  # all scales together
    seconds: float | None = None
    final_losses: FinalLosses | None = None
    scale_starts: tuple[int, ...] = ()
    early_stop: tuple[str, ...] | None = None
    repairs: tuple[str, ...] | None = None
    weights: str | None = None  # e.g. "vgg19 imagenet (caffe layout)"
    pretrained_weights: bool | None = None
    precision: str | None = None  # fp32 | bf16 | fp16


class ResultReport(RunSummary):
    """One result of a published job (stage: in job.json): what it was asked to be and how it ended."""

    # A status this version does not know (an edited file) is kept as text, and is not done.
    status: RunStatus | str = Field(RunStatus.DONE, union_mode="left_to_right")
    error: str | None = None
    content: str | None = None
    styles: tuple[str, ...] = ()
    varying: dict[str, Any] = Field(default_factory=dict)  # the sweep values it is named by
    attempts: int = 0
    warning: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)  # the engine parameters that were set
    node: str | None = None  # where it last ran, under the ray executor: a node's name...
    device: str | None = None  # ...and its device there ("gpu:0")

    @property
    def where(self) -> str | None:
        return None if self.node is None else f"{self.node} {self.device}"

    @property
    def done(self) -> bool:
        return self.status == RunStatus.DONE


class Inputs(BaseModel):
    model_config = _READ

    files: tuple[str, ...] = ()
    sha256: dict[str, str] = Field(default_factory=dict)
    sidecar: str | None = None


class JobReport(BaseModel):
    """``job.json``."""

    model_config = _READ

    id: StrictInt | None = None  # strict: a folder whose job.json says "5" is not job 5's
    name: str = ""
    kind: str = ""  # pair | folder | sidecar
    status: JobStatus = JobStatus.DONE
    inputs: Inputs = Field(default_factory=Inputs)
    created: float = 0.0
    finished: float = 0.0
    device: str | None = None
    versions: dict[str, str] = Field(default_factory=dict)
    results: tuple[ResultReport, ...] = ()

    def with_summaries(self, summaries: Sequence[RunSummary]) -> "JobReport":
        """This report with what the runs wrote merged into its results (a later summary of the
        same label wins)."""
        by_label = {s.label: {name: getattr(s, name) for name in s.model_fields_set} for s in summaries}
        results = tuple(r.model_copy(update=by_label.get(r.label, {})) for r in self.results)
        return self.model_copy(update={"results": results})

    def text(self) -> str:
        """job.json's text: the fields that were given (a failed result has no seed or losses)."""
        return _json(self.model_dump(mode="json", exclude_unset=True))


def versions() -> dict[str, str]:
    import torch  # here, not at the top: the gallery reads reports without loading torch
    import torchvision

    return {
        "nst-batch": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
    }


def read_report(path: Path) -> JobReport | None:
    """The job.json at ``path``; None when it cannot be read or is not a job's report."""
    data = _read_mapping(path)
    return None if data is None else report_from(data)


def report_from(data: Mapping[str, Any]) -> JobReport:
    """A report from job.json's data, dropping what does not read: a field of the wrong type, a
    result that is not a mapping or has no label."""
    raw = data.get("results")
    results = [_lenient(ResultReport, r) for r in raw if isinstance(r, Mapping)] if isinstance(raw, list) else []
    report = _lenient(JobReport, {k: v for k, v in data.items() if k != "results"})
    return report.model_copy(update={"results": tuple(r for r in results if r is not None)})


def write_summary(path: Path, summary: RunSummary) -> None:
    atomic_write(path, _json(summary.model_dump(mode="json")))


def read_summary(path: Path) -> RunSummary | None:
    data = _read_mapping(path)
    return None if data is None else _lenient(RunSummary, data)


def _read_mapping(path: Path) -> Mapping[str, Any] | None:
    """The JSON object in ``path``; None when it cannot be read or is not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, Mapping) else None


M = TypeVar("M", bound=BaseModel)


def _lenient(model: type[M], data: Mapping[str, Any]) -> M | None:
    """``model`` from ``data`` without the fields that fail to validate; None if a required one does."""
    data = dict(data)
    while True:
        try:
            return model.model_validate(data)
        except ValidationError as error:
            bad = {e["loc"][0] for e in error.errors() if e["loc"]} & data.keys()
            if not bad:
                return None
            for key in bad:
                del data[key]


def _json(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"
