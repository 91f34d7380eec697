"""Settings of the daemon: typed, frozen, validated once where they come in.

Owns the ``Config`` models and reading a config file with ``--set`` overrides; the wording of
what is wrong with one is ``problems``'.
"""

import copy
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from loguru import logger
from pydantic import (
    BaseModel,
    ByteSize,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ..engine import Network, WeightsInfo, load_network
from ..engine.params import StyleParams
from ..util.errors import ConfigError
from .problems import (
    Problem,
    dotted,
    format_problems,
    format_validation_error,
    unknown_key_message,
    validation_problems,
)
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

    def load(self, backbone: str, device: torch.device) -> tuple[Network, WeightsInfo]:
        """The network of ``backbone`` with these weights, on ``device``; a loud warning when the
        weights are random (shared by `nst-batch run` and the daemon)."""
        network, info = load_network(backbone, self.weights, self.weights_format)
        if not info.pretrained:
            logger.warning("model weights are RANDOM: results are meaningless (weights: random is for tests only)")
        return network.to(device), info


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
    too_big: Literal["auto", "tile", "lbfgs_history", "adam", "downscale", "fail"] = Field(
        "auto",
        description="a run that cannot fit alone: auto (tile, else a shorter L-BFGS history or Adam with tiles, "
        "else downscale) | tile (the largest tile that fits: the same result) | lbfgs_history | adam | downscale | fail",
    )
    calibrate: bool = Field(True, description="measure the device with two short probe runs at start-up")

    def budget(self, free_bytes: int) -> int:
        """The memory runs may use, given what the device has free now."""
        return int(self.memory_budget) if self.memory_budget is not None else max(0, free_bytes - self.reserve)


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


NOTIFY_EVENTS = ("failed", "done", "drained")


class NotifyConfig(BaseModel):
    """Who hears from the daemon, through apprise URLs: a job failed, a job done, the queue drained."""

    model_config = FROZEN

    # SecretStr: a URL may hold a token; it prints as ********** in any repr or log line.
    urls: tuple[SecretStr, ...] = Field((), description="apprise URLs, e.g. ntfy://topic, json://host:port/path")
    urls_file: Path | None = Field(None, description="a file of apprise URLs, one a line (# comments), read at start")
    events: tuple[Literal["failed", "done", "drained"], ...] = Field(
        ("failed", "drained"), description="failed (a job failed) | done (a job done) | drained (the morning summary)"
    )
    attempts: int = Field(3, ge=1, le=10, description="tries of each notification before it is dropped")
    retry_seconds: float = Field(30.0, gt=0, le=3600, description="pause before the second try; doubled each try")

    @field_validator("urls_file")
    @classmethod
    def _resolve_urls_file(cls, path: Path | None, info: ValidationInfo) -> Path | None:
        return None if path is None else _absolute(path, _base_dir(info))

    @property
    def enabled(self) -> bool:
        return bool(self.urls or self.urls_file) and bool(self.events)


class MetricsConfig(BaseModel):
    """Metrics for monitoring (Prometheus' text format)."""

    model_config = FROZEN

    textfile: Path | None = Field(
        None, description="a .prom file in node_exporter's textfile directory, rewritten atomically; null = none"
    )
    port: int | None = Field(
        None, ge=1, le=65535, description="also serve /metrics on 127.0.0.1:PORT (needs the networked unit); null = none"
    )
    every_seconds: float = Field(15.0, ge=1, le=3600, description="seconds between two writes of the textfile")

    @field_validator("textfile")
    @classmethod
    def _resolve_textfile(cls, path: Path | None, info: ValidationInfo) -> Path | None:
        return None if path is None else _absolute(path, _base_dir(info))


RAY_OBJECT_STORE_MINIMUM = 75 * 2**20  # Ray refuses a smaller object store (ray_constants.OBJECT_STORE_MINIMUM_MEMORY_BYTES)
_RAY_ADDRESS = re.compile(r"(?P<host>[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\]):(?P<port>[0-9]{1,5})")


class RayConfig(BaseModel):
    """The ray executor (``executor: ray``): where Ray runs, how many devices it lends, its object store."""

    model_config = FROZEN

    address: str | None = Field(
        None,
        description="null = a Ray of this machine's own, started by the daemon on 127.0.0.1 | auto = the cluster "
        "this machine joined with `ray start` | HOST:PORT = a running cluster's head (its network must be trusted)",
    )
    devices: int | None = Field(
        None, ge=1, le=1024, description="devices to use, one actor each; null = every GPU Ray has (device: cpu: required)"
    )
    object_store_memory: ByteSize | None = Field(
        None,
        description="object store of the Ray the daemon starts (address: null), e.g. 2GiB, at least 75 MiB; "
        "null = Ray's default; a cluster's nodes set their own at `ray start`",
    )

    @field_validator("address")
    @classmethod
    def _known_address(cls, address: str | None) -> str | None:
        if address is None or address == "auto":
            return address
        if address.startswith("ray://"):
            raise ValueError("ray:// is Ray Client, which the minimal ray package has not: give the head's HOST:PORT")
        match = _RAY_ADDRESS.fullmatch(address)
        if match is None or not 1 <= int(match["port"]) <= 65535:
            raise ValueError(f"must be null, auto or HOST:PORT (the head's GCS port, 6379 by default), got {address!r}")
        return address

    @field_validator("object_store_memory")
    @classmethod
    def _ray_minimum(cls, size: ByteSize | None) -> ByteSize | None:
        if size is not None and size < RAY_OBJECT_STORE_MINIMUM:
            raise ValueError(f"must be at least 75MiB (Ray's minimum), got {size.human_readable()}")
        return size


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
    device: str = Field(
        "auto", description="auto | cpu | cuda | cuda:N; with executor: ray, each actor's kind: auto | cuda | cpu"
    )
    executor: Literal["threads", "ray"] = Field(
        "threads", description="threads (one device, in this process) | ray (an actor per device, via nst-batch[ray])"
    )
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
    notify: NotifyConfig = Field(default_factory=NotifyConfig, description="notifications (apprise)")
    metrics: MetricsConfig = Field(default_factory=MetricsConfig, description="metrics for monitoring")
    ray: RayConfig = Field(default_factory=RayConfig, description="the ray executor (executor: ray)")
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
    def _ray_devices(self) -> "Config":
        if self.executor != "ray":
            return self  # the ray section is read only by the ray executor
        if self.device.startswith("cuda:"):
            raise ValueError(
                f"{self.device} is one GPU of this process, but under executor: ray Ray gives each actor its GPU: "
                "use device: cuda (or auto), and ray.devices for how many"
            )
        if self.device == "cpu" and self.ray.devices is None:
            raise ValueError("CPU actors (device: cpu under executor: ray) need ray.devices: how many")
        return self

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
        executor = "" if self.executor == "threads" else f", executor=ray ({self.ray.address or 'local'})"
        return f"inbox={self.inbox}, outbox={self.outbox}, device={self.device}{executor}, weights={self.model.weights}"


_SECTIONS = ("model", "log", "defaults", "notify", "metrics", "ray")


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
