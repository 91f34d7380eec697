"""`nst-batch pause | resume | priority | cancel | retry`: control of the daemon through its job
database. Each prints one line per job it names; a name that is unknown or ambiguous, or a job in
a state the command cannot change, is one line on stderr and exit status 2 before anything is
changed. Cancel and retry are carried out by the daemon: the command waits for its answer."""

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..daemon.control import Target, cancel_refusal, resolve, retry_refusal
from ..daemon.store import Action, Pause, Store
from ..engine import StyleParams
from ..results.report import ACTIVE_JOBS, JobStatus
from ..settings.config import Config, params_with_overrides
from ..settings.problems import unknown_key_message
from ..settings.yamlfile import parse_yaml
from ..util.errors import ConfigError, InputError

ANSWER_WAIT_S = 5.0  # the daemon acts within 2 s of a request; past this it is probably not running


def _store(config: Config) -> Store:
    if not (config.state_dir / "jobs.sqlite3").exists():
        raise InputError(f"no job database at {config.state_dir / 'jobs.sqlite3'}: has the daemon ever run with this config?")
    return Store(config.state_dir)


def pause(config: Config, now: bool) -> str:
    store = _store(config)
    try:
        store.set_pause(Pause.NOW if now else Pause.AFTER_RUNS)
    finally:
        store.close()
    if now:
        return "paused: no new run starts; running runs checkpoint and wait (`nst-batch resume` goes on)"
    return "paused: no new run starts; running runs finish (`nst-batch resume` goes on)"


def resume(config: Config) -> str:
    store = _store(config)
    try:
        was = store.pause()
        store.set_pause(Pause.OFF)
    finally:
        store.close()
    return "resumed: queued runs start again" if was != Pause.OFF else "not paused: queued runs start as they fit"


def priority(config: Config, ref: str, value: int) -> str:
    store = _store(config)
    try:
        target = resolve(store, ref)
        job = target.job
        if target.run is not None:
            raise InputError(f"{target.describe()}: a priority belongs to a job, not a run; give the job's id")
        if job.status == JobStatus.CLAIMING:  # its sidecar's priority is still to be read, and would win
            raise InputError(f"{target.describe()} is being claimed; try again in a few seconds")
        if job.status not in ACTIVE_JOBS:
            raise InputError(f"{target.describe()} is {job.status}: only a waiting job has a priority to change")
        store.set_priority(job.id, value)
    finally:
        store.close()
    return f"{target.describe()}: priority {job.priority} -> {value}"


def param_overrides(items: Sequence[str], defaults: StyleParams) -> dict[str, Any]:
    """``--param key=value`` as a mapping, each value read as YAML and checked against StyleParams."""
    overrides = {}
    for item in items:
        key, equals, text = item.partition("=")
        key = key.strip()
        if not equals or not key:
            raise ConfigError(f"--param {item!r}: expected KEY=VALUE, e.g. --param style_weight=1e5")
        if key not in StyleParams.model_fields:
            raise ConfigError(f"--param {key}: {unknown_key_message(key, list(StyleParams.model_fields))}")
        overrides[key] = parse_yaml(text, f"--param {key}")
    params_with_overrides(defaults, overrides, source="--param")  # a bad value: one line, before any job changes
    return overrides


@dataclass(frozen=True)
class Answer:
    """The daemon's one line about one job or run; ``refused``: it changed nothing."""

    text: str
    refused: bool = False


def cancel(config: Config, refs: Sequence[str], sleep: Callable[[float], None] = time.sleep) -> list[Answer]:
    return _ask(config, refs, Action.CANCEL, cancel_refusal, {}, sleep)


def retry(config: Config, refs: Sequence[str], overrides: Mapping[str, Any], sleep=time.sleep) -> list[Answer]:
    return _ask(config, refs, Action.RETRY, retry_refusal, {"overrides": dict(overrides)}, sleep)


def _ask(
    config: Config, refs: Sequence[str], action: Action, refusal: Callable[[Target], str | None],
    payload: dict[str, Any], sleep: Callable[[float], None],
) -> list[Answer]:
    """Every target checked first (nothing is asked if one is wrong), then asked, then answered."""
    store = _store(config)
    try:
        targets = [resolve(store, ref) for ref in refs]
        for target in targets:
            if (reason := refusal(target)) is not None:
                raise InputError(reason)
        asked = [
            (target, store.ask(action, target.job.id, target.run.id if target.run else None, payload))
            for target in targets
        ]
        deadline = time.monotonic() + ANSWER_WAIT_S
        while any(store.request(i).handled is None for _, i in asked) and time.monotonic() < deadline:
            sleep(0.1)
        answers = []
        for target, request_id in asked:
            request = store.request(request_id)
            answers.append(Answer(request.answer, request.refused) if request.answer else Answer(
                f"{target.describe()}: {action} asked; the daemon has not answered in {ANSWER_WAIT_S:g} s "
                "(is it running?) and will act on it when it runs"))
        return answers
    finally:
        store.close()
