"""Reading YAML that users drop in, safely.

Owns the one YAML loader of the project: plain data only (no tags that build objects, no
anchors or aliases, bounded size and depth, text keys), and every way a file can be unreadable
turned into a ``ConfigError`` that names the file and, where known, the line.
"""

import errno
import os
import re
import stat
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node

from ..util.errors import ConfigError

_PLAIN_TAGS = frozenset(
    f"tag:yaml.org,2002:{name}" for name in ("null", "bool", "int", "float", "str", "seq", "map")
)
_MAX_DEPTH = 64


class _PlainLoader(yaml.SafeLoader):
    """SafeLoader restricted to plain data.

    Aliases are refused while composing, before anything is expanded, which is what makes a
    billion-laughs document fail at once instead of eating memory.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise yaml.MarkedYAMLError(
                problem="anchors (&name) and aliases (*name) are not allowed", problem_mark=event.start_mark
            )
        self._depth += 1
        try:
            if self._depth > _MAX_DEPTH:
                raise yaml.MarkedYAMLError(
                    problem=f"nested more than {_MAX_DEPTH} levels deep", problem_mark=event.start_mark
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        if node.tag not in _PLAIN_TAGS:
            raise yaml.MarkedYAMLError(
                problem=f"the tag {node.tag.replace('tag:yaml.org,2002:', '!!')!r} is not allowed; "
                "only plain YAML is allowed",
                problem_mark=node.start_mark,
            )
        return super().construct_object(node, deep)

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                raise yaml.MarkedYAMLError(
                    problem=f"keys must be text, got {key!r}", problem_mark=key_node.start_mark
                )
            if key in seen:
                raise yaml.MarkedYAMLError(problem=f"key {key!r} appears twice", problem_mark=key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


# Dates stay text: nothing here wants a datetime, and `name: 2024-05-01` should be a name.
_PlainLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag in _PLAIN_TAGS]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
# YAML 1.1 reads `1e6` as text; people writing weights mean the number, as YAML 1.2 does.
_PlainLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+.0123456789"),
)


def _megabytes(n_bytes: int) -> str:
    return f"{n_bytes / 1e6:.1f} MB"


def _read_text(path: Path, max_bytes: int, untrusted: bool = False) -> str:
    # An untrusted file (dropped in the inbox by anyone) may have become a symbolic link or a named
    # pipe since it was looked at: neither is followed nor waited on (O_NONBLOCK: opening a pipe
    # would block until someone writes to it).
    flags = os.O_RDONLY | (os.O_NOFOLLOW | os.O_NONBLOCK if untrusted else 0)
    try:
        with open(os.open(path, flags), "rb") as file:
            info = os.fstat(file.fileno())  # of the file opened, whatever the name points to now
            if stat.S_ISDIR(info.st_mode):
                raise IsADirectoryError
            if untrusted and not stat.S_ISREG(info.st_mode):
                raise ConfigError(f"{path} is not a regular file (a named pipe, a socket or a device)")
            if info.st_size > max_bytes:
                raise ConfigError(
                    f"{path} is {_megabytes(info.st_size)}; sidecars and configs are limited to {_megabytes(max_bytes)}"
                )
            data = file.read(max_bytes + 1)
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"{path} is a folder, not a YAML file") from None
    except OSError as error:
        if untrusted and error.errno == errno.ELOOP:
            raise ConfigError(f"{path} is a symbolic link: copy the file itself") from None
        raise ConfigError(f"cannot read {path}: {error.strerror or error}") from None
    if len(data) > max_bytes:  # grew while we looked
        raise ConfigError(f"{path} is over {_megabytes(max_bytes)}; sidecars and configs are limited to that")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path} is not UTF-8 text (bad byte at offset {error.start}); save it as UTF-8") from None


def _describe_yaml_error(source: str, error: yaml.YAMLError) -> str:
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        problem = error.problem or error.context or "invalid YAML"
        return f"{source} line {mark.line + 1}, column {mark.column + 1}: {problem}"
    if isinstance(error, yaml.reader.ReaderError):
        return f"{source}: the control character #x{error.character:04x} at offset {error.position} is not allowed"
    return f"{source}: {error}"


def parse_yaml(text: str, source: str) -> Any:
    """Parse one YAML document of plain data; ``source`` names it in errors."""
    try:
        loader = _PlainLoader(text)
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as error:
        raise ConfigError(_describe_yaml_error(source, error)) from None


def load_yaml(path: Path, *, max_bytes: int = 1_000_000, untrusted: bool = False) -> dict[str, Any]:
    """The mapping in the YAML file at ``path``; an empty file gives ``{}``. ``untrusted``: only a
    regular file is read, never through a symbolic link."""
    data = parse_yaml(_read_text(path, max_bytes, untrusted), str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        kind = "a list" if isinstance(data, list) else f"the single value {data!r}"
        raise ConfigError(f"{path}: the top level must be a mapping of `key: value` lines, got {kind}")
    return data
