"""`nst-batch check FILE`: is a YAML file a valid config or a valid sidecar, and what it says."""

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..engine import StyleParams
from .config import Config, config_from_mapping
from .sidecar import sidecar_from_mapping
from .yamlfile import load_yaml


def is_config(data: Mapping[str, Any]) -> bool:
    """Whether YAML ``data`` is a config rather than a sidecar (an empty file is a valid config)."""
    return not data or any(key in Config.model_fields for key in data)


def validate_file(path: Path, *, defaults: StyleParams | None = None) -> str:
    """Check a config or sidecar file; a one-line summary when valid, else ConfigError.

    A sidecar is checked against ``defaults`` (the config's, when the caller has one).
    """
    data = load_yaml(path)
    if is_config(data):
        return f"config ok: {config_from_mapping(data, source=str(path), base_dir=path.parent).summary()}"
    sidecar = sidecar_from_mapping(data, source=str(path), defaults=defaults or StyleParams())
    return f"sidecar ok: {sidecar.summary()}"
