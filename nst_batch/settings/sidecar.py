"""Job sidecars: the YAML dropped next to inputs that says how their job, or sweep of jobs, runs.

Owns the ``Sidecar`` model and ``load_sidecar``. Engine parameters are not listed here: any
top-level key that is a ``StyleParams`` field is applied over the config's defaults, so a new
knob works in sidecars without touching this file.
"""

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, Field, StringConstraints, ValidationError, field_validator, model_validator

from ..engine.params import StyleParams
from ..util.errors import ConfigError
from ..util.names import unsafe_name
from .config import FROZEN
from .problems import Problem, dotted, format_problems, show, unknown_key_message, validation_problems
from .yamlfile import load_yaml

MAX_COMBINATIONS = 256
MAX_NAME_LENGTH = 120

Text = Annotated[str, StringConstraints(min_length=1)]


def _one_or_many(value: Any) -> Any:
    return (value,) if isinstance(value, str) else value


def _unsafe_name(name: str) -> bool:
    return (
        not name.strip()
        or name != name.strip()
        or name.startswith(".")
        or len(name) > MAX_NAME_LENGTH
        or any(char in "/\\" for char in name)
        or unsafe_name(name)  # control characters, line breaks: as for the inbox's file names
    )


class SidecarJob(BaseModel):
    """The keys of a sidecar that describe the job rather than the engine."""

    model_config = FROZEN

    content: tuple[Text, ...] = Field((), description="content image file name(s) this sidecar is for")
    style: tuple[Text, ...] = Field((), description="style image(s): file names in the inbox or names in styles_dir")
    priority: int = Field(0, ge=-1000, le=1000, description="higher runs sooner")
    name: str | None = Field(None, description="output folder name: one path component, no leading '.'")
    sweep: dict[str, Annotated[tuple[Any, ...], Field(min_length=1)]] = Field(
        default_factory=dict, description="engine parameter -> list of values; one job per combination"
    )
    gif: bool = Field(False, description="also write an animated GIF of the progress frames")

    _content_and_style = field_validator("content", "style", mode="before")(_one_or_many)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str | None) -> str | None:
        if name is not None and _unsafe_name(name):
            raise ValueError(
                f"must be a single folder name (no '/', '\\', control characters, leading '.' or surrounding "
                f"spaces; at most {MAX_NAME_LENGTH} characters), got {show(name)}"
            )
        return name


JOB_KEYS = tuple(SidecarJob.model_fields)
PARAM_KEYS = tuple(StyleParams.model_fields)


def _override_problems(params: StyleParams, overrides: Mapping[str, Any], loc: tuple[str | int, ...]) -> list[Problem]:
    try:
        params.with_overrides(overrides)
    except ValidationError as error:
        return [Problem(loc, p.message) for p in validation_problems(error, StyleParams, overrides)]
    return []


def _settings(sweep: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of the sweep's values, in order; one empty one when there is no sweep."""
    keys = list(sweep)
    return [dict(zip(keys, values)) for values in itertools.product(*(sweep[k] for k in keys))]


def sweep_problems(params: StyleParams, sweep: Mapping[str, Sequence[Any]]) -> list[Problem]:
    """What is wrong with ``sweep`` applied over ``params``: unknown keys, too many jobs, invalid values."""
    unknown = [Problem(("sweep", key), unknown_key_message(key, PARAM_KEYS)) for key in sweep if key not in PARAM_KEYS]
    if unknown:
        return unknown
    total = math.prod(len(values) for values in sweep.values())
    if total > MAX_COMBINATIONS:
        sizes = " x ".join(str(len(values)) for values in sweep.values())
        return [Problem(("sweep",), f"{sizes} = {total} combinations; at most {MAX_COMBINATIONS} are allowed")]
    each_value = [
        problem
        for key, values in sweep.items()
        for index, value in enumerate(values)
        for problem in _override_problems(params, {key: value}, ("sweep", key, index))
    ]
    if each_value:
        return each_value
    for setting in _settings(sweep):  # values valid alone can still clash, e.g. backbone x style_layers
        clash = _override_problems(params, setting, ("sweep",))
        if clash:
            return [Problem(("sweep",), f"the combination {show(setting)}: {clash[0].message}")]
    return []


class Sidecar(SidecarJob):
    """A validated sidecar: the job keys plus the engine parameters it runs with."""

    params: StyleParams = Field(default_factory=StyleParams, description="config defaults + the sidecar's keys")

    @model_validator(mode="after")
    def _sweep_is_valid(self) -> "Sidecar":
        problems = sweep_problems(self.params, self.sweep)
        if problems:
            raise ValueError(f"{dotted(problems[0].loc)}: {problems[0].message}")
        return self

    def combinations(self) -> list[tuple[dict[str, Any], StyleParams]]:
        """One (the swept values, the parameters) per job; ``[({}, params)]`` without a sweep."""
        result = []
        for setting in _settings(self.sweep):
            params = self.params.with_overrides(setting)
            result.append(({key: getattr(params, key) for key in setting}, params))
        return result

    def summary(self) -> str:
        jobs = math.prod(len(values) for values in self.sweep.values())
        text = f"{jobs} job{'' if jobs == 1 else 's'}"
        return f"{text} (sweep of {' x '.join(self.sweep)})" if self.sweep else text


def _validated(
    check: Callable[[], Any], model: type[BaseModel], given: Mapping[str, Any], problems: list[Problem]
) -> Any:
    """``check()``, or None with its validation problems added to ``problems``."""
    try:
        return check()
    except ValidationError as error:
        problems += validation_problems(error, model, given)
        return None


def sidecar_from_mapping(data: Mapping[str, Any], *, source: str, defaults: StyleParams) -> Sidecar:
    """Validate sidecar ``data`` read from ``source`` over the config's ``defaults``.

    Problems of all keys are reported together; the sweep's values are tried once the rest is valid.
    """
    problems = [
        Problem((key,), unknown_key_message(key, [*JOB_KEYS, *PARAM_KEYS]))
        for key in data
        if key not in JOB_KEYS and key not in PARAM_KEYS
    ]
    job_keys = {key: value for key, value in data.items() if key in JOB_KEYS}
    param_keys = {key: value for key, value in data.items() if key in PARAM_KEYS}
    params = _validated(lambda: defaults.with_overrides(param_keys), StyleParams, param_keys, problems)
    job = _validated(lambda: SidecarJob.model_validate(job_keys), SidecarJob, job_keys, problems)
    if params is not None and job is not None:
        problems += sweep_problems(params, job.sweep)
    if problems:
        raise ConfigError(format_problems(source, problems))
    return Sidecar.model_validate({**job_keys, "params": params})


def load_sidecar(path: Path, defaults: StyleParams, overrides: Mapping[str, Any] | None = None) -> Sidecar:
    """The sidecar at ``path``, its parameters taken over ``defaults`` (the config's); ``overrides``
    (a retry's ``--param``) replace its keys of the same name."""
    return sidecar_from_mapping({**load_yaml(path), **(overrides or {})}, source=str(path), defaults=defaults)
