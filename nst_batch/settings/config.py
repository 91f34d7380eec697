"""Settings of the daemon: typed, frozen, validated once where they come in.

Owns the ``Config`` models, reading a config file with ``--set`` overrides, and the wording of
validation problems: every pydantic error becomes one plain line
``<file>: <key.path>: <what is wrong>`` (sidecars reuse it).
"""

import copy
import re
from collections.abc import Collection, Mapping, Sequence
from difflib import get_close_matches
from pathlib import Path
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ByteSize, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_core import ErrorDetails

from ..engine.params import StyleParams
from ..util.errors import ConfigError
from .yamlfile import load_yaml, parse_yaml

FROZEN = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

BUILTIN_WEIGHTS = ("imagenet", "random")
LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")
_DEVICE = re.compile(r"auto|cpu|cuda(:[0-9]+)?")


def _base_dir(info: ValidationInfo) -> Path:
    """The folder relative paths resolve against: the config file's, else the working directory."""
    context = info.context or {}
    return Path(context.get("base_dir") or Path.cwd())


def _absolute(path: Path, base: Path) -> Path:
    return (base / path.expanduser()).resolve()


class ModelConfig(BaseModel):
    """Which network weights the engine loads."""

    model_config = FROZEN

    weights: str = Field(
        "imagenet",
        min_length=1,
        description="imagenet | random (TESTS ONLY: meaningless images) | path of a .pth state dict",
    )
    weights_format: Literal["auto", "torchvision", "caffe"] = Field(
        "auto", description="layout of a weights file: auto (detect) | torchvision | caffe"
    )

    @field_validator("weights")
    @classmethod
    def _resolve_weights_path(cls, weights: str, info: ValidationInfo) -> str:
        if weights in BUILTIN_WEIGHTS:
            return weights
        return str(_absolute(Path(weights), _base_dir(info)))


class SchedulerConfig(BaseModel):
    """How runs share the device: the memory budget, how many at once, what to do with the too big."""

    model_config = FROZEN

    memory_budget: ByteSize | None = Field(
        None, description="cap on the memory runs may use, e.g. 4GiB; null = the device's free memory minus reserve"
    )
    reserve: ByteSize = Field(ByteSize(1 << 30), description="memory left free for everything else (null budget only)")
    max_concurrent: int | None = Field(
        None, ge=1, le=64, description="runs at once at most; null = 4 on a GPU, 1 on a CPU"
    )
    max_batch: int | None = Field(
        None, ge=1, le=64, description="runs of one shape that share the network's passes; null = 8 on a GPU, 1 on a CPU"
    )
    too_big: Literal["lbfgs_history", "adam", "downscale", "fail"] = Field(
        "downscale", description="a run that cannot fit alone: lbfgs_history | adam | downscale | fail"
    )
    calibrate: bool = Field(True, description="measure the device with two short probe runs at start-up")


class PerformanceConfig(BaseModel):
    """How the engine runs fast; `auto` turns a switch on only where it was measured to keep quality."""

    model_config = FROZEN

    autocast: Literal["auto", "off", "bf16", "fp16"] = Field(
        "auto", description="network precision: auto (bf16 for Adam on a bf16 CPU) | off | bf16 | fp16"
    )
    channels_last: bool = Field(False, description="channels-last memory layout for the network")
    compile: bool = Field(
        False, description="torch.compile the network's gradient pass; each new shape compiles first (10-30 s)"
    )
    threads: int | None = Field(
        None, ge=1, le=512, description="CPU threads; null = $OMP_NUM_THREADS if set, else every core this process may use"
    )
    cudnn_benchmark: bool = Field(True, description="let cuDNN pick the fastest convolution for each image size")
    tf32: bool = Field(False, description="TF32 matmuls and convolutions on GPUs that have them")

    @field_validator("autocast", mode="before")
    @classmethod
    def _off_is_false(cls, value: Any) -> Any:
        return "off" if value is False else value  # YAML reads an unquoted `off` as false


class LogConfig(BaseModel):
    """Where the daemon logs, and how much."""

    model_config = FROZEN

    level: Literal["TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"] = Field(
        "INFO", description="least severe level logged: " + " | ".join(LOG_LEVELS)
    )
    json_file: Path | None = Field(None, description="also write JSON lines to this file; null = stderr only")
    rotation: str = Field("10 MB", min_length=1, description="start a new json_file at this size or age (loguru)")
    retention: int = Field(5, ge=0, description="rotated json_files kept")

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, level: Any) -> Any:
        return level.upper() if isinstance(level, str) else level

    @field_validator("json_file")
    @classmethod
    def _resolve_json_file(cls, path: Path | None, info: ValidationInfo) -> Path | None:
        return None if path is None else _absolute(path, _base_dir(info))


def _folder(default: str, description: str) -> Any:
    return Field(Path(default), validate_default=True, description=description)


class Config(BaseModel):
    """Everything the daemon is told. Paths are absolute once validated."""

    model_config = FROZEN

    inbox: Path = _folder("inbox", "folder watched for new images and sidecars")
    outbox: Path = _folder("outbox", "folder results are written to")
    state_dir: Path = _folder("state", "job database, claimed jobs, checkpoints, archive/ and failed/")
    styles_dir: Path | None = _folder("styles", "optional library of named style images; null = none")
    settle_seconds: float = Field(2.0, ge=0, description="a file unchanged this long counts as complete")
    pair_timeout: float = Field(600.0, gt=0, description="seconds a half pair waits for its partner")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    observer: Literal["native", "polling"] = Field(
        "native", description="native | polling (use polling on network filesystems)"
    )
    rescan_seconds: float = Field(60.0, gt=0, description="seconds between full rescans of the inbox")
    on_success: Literal["keep", "archive", "delete"] = Field(
        "archive", description="what happens to the inputs after success: keep | archive | delete"
    )
    checkpoint_every: int = Field(
        25, ge=1, description="iterations between checkpoints (more when writing them would take over 5% of the time)"
    )
    max_attempts: int = Field(3, ge=1, le=100, description="tries before a job goes to failed/")
    max_pixels: int = Field(50_000_000, ge=1, description="input images with more pixels are refused before decoding")
    output_format: Literal["png", "jpg"] = Field("png", description="png | jpg")
    model: ModelConfig = Field(default_factory=ModelConfig, description="network weights")
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig, description="memory-aware scheduling")
    performance: PerformanceConfig = Field(default_factory=PerformanceConfig, description="speed switches")
    log: LogConfig = Field(default_factory=LogConfig, description="logging")
    defaults: StyleParams = Field(
        default_factory=StyleParams, description="engine parameters of every job; a sidecar overrides them"
    )

    @field_validator("inbox", "outbox", "state_dir", "styles_dir")
    @classmethod
    def _resolve_folder(cls, path: Path | None, info: ValidationInfo) -> Path | None:
        return None if path is None else _absolute(path, _base_dir(info))

    @field_validator("device")
    @classmethod
    def _known_device(cls, device: str) -> str:
        if not _DEVICE.fullmatch(device):
            raise ValueError(f"must be auto, cpu, cuda or cuda:N (N = GPU index), got {device!r}")
        return device

    @model_validator(mode="after")
    def _separate_folders(self) -> "Config":
        # Overlapping folders would feed results or archived inputs back in as new jobs.
        folders = {"inbox": self.inbox, "outbox": self.outbox, "state_dir": self.state_dir}
        if self.styles_dir is not None:
            folders["styles_dir"] = self.styles_dir
        for outer, outer_path in folders.items():
            for inner, inner_path in folders.items():
                if inner != outer and inner_path.is_relative_to(outer_path):
                    raise ValueError(
                        f"{inner} ({inner_path}) is inside {outer} ({outer_path}); "
                        f"inbox, outbox, state_dir and styles_dir must be separate folders"
                    )
        return self

    def summary(self) -> str:
        return f"inbox={self.inbox}, outbox={self.outbox}, device={self.device}, weights={self.model.weights}"


# ---- problems: one plain line per thing that is wrong ----


class Problem(NamedTuple):
    """One thing wrong, at a key path such as ``("defaults", "iterations")``."""

    loc: tuple[str | int, ...]
    message: str


_MAX_LINES = 20
_COMPARISONS = {
    "greater_than_equal": (">=", "ge"),
    "greater_than": (">", "gt"),
    "less_than_equal": ("<=", "le"),
    "less_than": ("<", "lt"),
}
_PLAIN = {
    "int_parsing": "must be a whole number",
    "int_type": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "finite_number": "must be a finite number",
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
    "string_type": "must be text (quote it)",
    "path_type": "must be a path (text)",
    "tuple_type": "must be a list",
    "list_type": "must be a list",
    "dict_type": "must be a mapping of `key: value` lines",
    "model_type": "must be a mapping of `key: value` lines",
}


def show(value: Any) -> str:
    """A value as the user wrote it, short enough for one line."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def did_you_mean(word: Any, choices: Sequence[str]) -> str:
    close = get_close_matches(str(word).lower(), choices, n=1) if isinstance(word, str) else []
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_key_message(key: Any, allowed: Sequence[str]) -> str:
    return f"unknown key{did_you_mean(key, allowed)}; allowed: {', '.join(allowed)}"


def dotted(loc: Sequence[str | int]) -> str:
    """``("defaults", "style_layers", 1)`` -> ``defaults.style_layers[1]``."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _model_at(model: type[BaseModel] | None, loc: Sequence[str | int]) -> type[BaseModel] | None:
    """The model class that ``loc`` names inside ``model``, or None when it names a plain value."""
    for part in loc:
        field = model.model_fields.get(part) if model is not None and isinstance(part, str) else None
        annotation = field.annotation if field is not None else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def _value_at(data: Any, loc: Sequence[str | int]) -> Any:
    for part in loc:
        if isinstance(data, Mapping):
            data = data.get(part)
        elif isinstance(data, (list, tuple)) and isinstance(part, int) and part < len(data):
            data = data[part]
        else:
            return None
    return data


def _words(value: Any) -> set[str]:
    if isinstance(value, str):
        return set(value.replace(",", " ").split())
    if isinstance(value, (list, tuple)):
        return {str(item) for item in value}
    return {str(value)}


def _guess_key(message: str, given: Mapping[str, Any]) -> str | None:
    """Which of the given keys a model-level error is about: one it names, else one holding the value it quotes."""
    for key in given:
        if re.search(rf"\b{re.escape(key)}\b", message):
            return key
    quoted = re.search(r"'([^']+)'", message)
    if quoted:
        for key, value in given.items():
            if quoted.group(1) in _words(value):
                return key
    return None


def _describe(error: ErrorDetails, model: type[BaseModel] | None, loc: tuple[str | int, ...]) -> str:
    kind, ctx = error["type"], error.get("ctx", {})
    got = f", got {show(error.get('input'))}"
    if kind == "extra_forbidden":
        keys_here = _model_at(model, loc[:-1])
        return unknown_key_message(loc[-1], list(keys_here.model_fields) if keys_here else [])
    if kind == "missing":
        return "is required"
    if kind in _COMPARISONS:
        operator, bound = _COMPARISONS[kind]
        limit = ctx[bound]
        return f"must be {operator} {int(limit) if float(limit).is_integer() else limit}{got}"
    if kind == "literal_error":
        allowed = re.findall(r"'([^']*)'", ctx.get("expected", ""))
        return f"must be one of {', '.join(allowed)}{got}{did_you_mean(error.get('input'), allowed)}"
    if kind in ("value_error", "assertion_error"):
        return re.sub(r"^(Value|Assertion) error, ", "", error["msg"])
    if kind in ("too_short", "too_long"):
        bound = ctx.get("min_length") if kind == "too_short" else ctx.get("max_length")
        return f"must have at {'least' if kind == 'too_short' else 'most'} {bound} item(s){got}"
    if kind == "string_too_short":
        shortest = ctx.get("min_length")
        return "must not be empty" if shortest == 1 else f"must be at least {shortest} characters"
    if kind == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters{got}"
    if kind in _PLAIN:
        return _PLAIN[kind] + got
    return error["msg"].replace("Input should be", "must be") + got


def validation_problems(error: ValidationError, model: type[BaseModel], given: Mapping[str, Any]) -> list[Problem]:
    """Each error of ``model.model_validate(given)``, worded plainly and placed at the key it is about.

    Errors raised by a model validator only know the model they came from; they are moved to the
    key they name, or whose value they quote, when one is there in ``given``.
    """
    problems = []
    for detail in error.errors(include_url=False):
        loc = tuple(part for part in detail["loc"] if part != "[key]")
        message = _describe(detail, model, loc)
        here = _value_at(given, loc)
        if detail["type"] == "value_error" and _model_at(model, loc) and isinstance(here, Mapping):
            key = _guess_key(message, here)
            loc = loc if key is None else (*loc, key)
        problems.append(Problem(loc, message))
    return problems


def format_problems(source: str, problems: Sequence[Problem], *, from_set: Collection[tuple[str, ...]] = ()) -> str:
    """One line per problem, ``<source>: <key.path>: <what is wrong>``; ``--set`` ones say so."""
    lines: list[str] = []
    for problem in problems:
        key = dotted(problem.loc)
        message = " ".join(problem.message.split())
        if any(problem.loc[: len(path)] == path for path in from_set):
            line = f"--set {key}: {message}"
        else:
            line = f"{source}: {key}: {message}" if key else f"{source}: {message}"
        if line not in lines:
            lines.append(line)
    if len(lines) > _MAX_LINES:
        lines[_MAX_LINES:] = [f"{source}: ... and {len(lines) - _MAX_LINES} more problems"]
    return "\n".join(lines)


def format_validation_error(
    source: str, error: ValidationError, model: type[BaseModel], given: Mapping[str, Any]
) -> str:
    """One line per problem of ``model.model_validate(given)``, each starting with ``source``."""
    return format_problems(source, validation_problems(error, model, given))


# ---- loading ----

_SECTIONS = ("model", "log", "defaults")


def _override_path(key: str, item: str) -> tuple[str, ...]:
    path = tuple(part.strip() for part in key.split("."))
    if not all(path):
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set defaults.iterations=10")
    if len(path) > 1 or path[0] in Config.model_fields:
        return path
    if path[0] in StyleParams.model_fields:
        return ("defaults", path[0])
    raise ConfigError(f"--set {key}: {unknown_key_message(key, [*Config.model_fields, *StyleParams.model_fields])}")


def _set_value(data: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = data
    for depth, part in enumerate(path[:-1], start=1):
        if node.get(part) is None:
            node[part] = {}
        if not isinstance(node[part], dict):
            raise ConfigError(f"--set {dotted(path)}: {dotted(path[:depth])} is not a section of the config")
        node = node[part]
    node[path[-1]] = value


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> tuple[dict[str, Any], list[tuple[str, ...]]]:
    """``data`` with each ``key.path=value`` applied (value read as YAML), and the paths that were set.

    A bare engine parameter (``iterations=10``) means ``defaults.iterations``.
    """
    result = copy.deepcopy(dict(data))
    paths = []
    for item in overrides:
        key, equals, text = item.partition("=")
        if not equals:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set defaults.iterations=10")
        path = _override_path(key.strip(), item)
        _set_value(result, path, parse_yaml(text, f"--set {dotted(path)}"))
        paths.append(path)
    return result, paths


def _misplaced_params(problems: list[Problem]) -> list[Problem]:
    """Engine parameters written at the top of a config belong under ``defaults:``; say so."""
    return [
        Problem(p.loc, f"unknown key; engine parameters go under `defaults:` (defaults.{p.loc[0]})")
        if len(p.loc) == 1 and p.loc[0] in StyleParams.model_fields and p.message.startswith("unknown key")
        else p
        for p in problems
    ]


def config_from_mapping(
    data: Mapping[str, Any], *, source: str, base_dir: Path, overrides: Sequence[str] = ()
) -> Config:
    """Validate config ``data`` read from ``source``; relative paths resolve against ``base_dir``."""
    merged, set_paths = apply_overrides(data, overrides)
    for section in _SECTIONS:  # a section whose lines are all commented out reads as null
        if section in merged and merged[section] is None:
            del merged[section]
    try:
        return Config.model_validate(merged, context={"base_dir": base_dir.absolute()})
    except ValidationError as error:
        problems = _misplaced_params(validation_problems(error, Config, merged))
        raise ConfigError(format_problems(source, problems, from_set=set_paths)) from None


def load_config(path: Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """The config in ``path`` (or the built-in defaults) with ``--set`` ``overrides`` applied."""
    if path is None:
        return config_from_mapping({}, source="built-in defaults", base_dir=Path.cwd(), overrides=overrides)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    return config_from_mapping(load_yaml(path), source=str(path), base_dir=path.parent, overrides=overrides)


def params_with_overrides(params: StyleParams, overrides: Mapping[str, Any], *, source: str) -> StyleParams:
    """``params`` with ``overrides`` (e.g. command-line flags) applied; problems name ``source`` and each key."""
    try:
        return params.with_overrides(overrides)
    except ValidationError as error:
        raise ConfigError(format_validation_error(source, error, StyleParams, overrides)) from None


def is_config(data: Mapping[str, Any]) -> bool:
    """Whether YAML ``data`` is a config rather than a sidecar (an empty file is a valid config)."""
    return not data or any(key in Config.model_fields for key in data)


def validate_file(path: Path, *, defaults: StyleParams | None = None) -> str:
    """Check a config or sidecar file; a one-line summary when valid, else ConfigError.

    A sidecar is checked against ``defaults`` (the config's, when the caller has one).
    """
    from .sidecar import sidecar_from_mapping  # sidecar builds on this module

    data = load_yaml(path)
    if is_config(data):
        return f"config ok: {config_from_mapping(data, source=str(path), base_dir=path.parent).summary()}"
    sidecar = sidecar_from_mapping(data, source=str(path), defaults=defaults or StyleParams())
    return f"sidecar ok: {sidecar.summary()}"
