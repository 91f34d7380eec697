"""What is wrong with a config, a sidecar or a command line, in plain words: every pydantic error
becomes one line ``<file>: <key.path>: <what is wrong>``, with a guess at a misspelt key."""

import re
from collections.abc import Collection, Mapping, Sequence
from difflib import get_close_matches
from typing import Any, NamedTuple, get_args

from pydantic import BaseModel, SecretBytes, SecretStr, ValidationError
from pydantic_core import ErrorDetails


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


def _holds_secret(annotation: Any) -> bool:
    if isinstance(annotation, type) and issubclass(annotation, (SecretStr, SecretBytes)):
        return True
    return any(_holds_secret(arg) for arg in get_args(annotation))


def _secret_at(model: type[BaseModel] | None, loc: Sequence[str | int]) -> bool:
    """Whether the value at ``loc`` may hold a secret, so is never shown: it is, or is inside, a
    secret field (``SecretStr``, e.g. ``notify.urls``), or it stands for a section that has one
    (``notify: json://user:token@host``)."""
    for part in loc:
        field = model.model_fields.get(part) if model is not None and isinstance(part, str) else None
        if field is None:
            return False
        if _holds_secret(field.annotation):
            return True
        inner = [field.annotation, *get_args(field.annotation)]
        model = next((t for t in inner if isinstance(t, type) and issubclass(t, BaseModel)), None)
    return bool(loc) and model is not None and any(_holds_secret(f.annotation) for f in model.model_fields.values())


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
    secret = _secret_at(model, loc)
    got = " (the value is not shown: it may hold a secret)" if secret else f", got {show(error.get('input'))}"
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
        guess = "" if secret else did_you_mean(error.get("input"), allowed)
        return f"must be one of {', '.join(allowed)}{got}{guess}"
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
