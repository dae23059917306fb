"""Checking tool arguments against the input schema each tool publishes.

The SDK validates arguments with a lax pydantic model (unknown keys ignored, strings
parsed as numbers) and reports failures as ``"Error executing tool ..."``.  Tinytown
promises more: arguments that do not match the published JSON schema (wrong types,
unknown keys, out of bounds, text that is not valid UTF-8) are refused before anything
runs, with an ``invalid:`` sentence a model can act on.  The schema a client reads is the
schema enforced here: both come from the same ``Tool.parameters``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from jsonschema import Draft202012Validator  # type: ignore[import-untyped]
from jsonschema.exceptions import ValidationError, best_match  # type: ignore[import-untyped]

from tinytown.errors import Invalid, NotFound, TinytownError

_JSON_TYPES = {
    dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "an integer",
    float: "a number", type(None): "null",
}
_MAX_SHOWN = 3


class ArgumentGate:
    """Validators for a fixed set of tools, built once from their input schemas."""

    def __init__(self, schemas: Mapping[str, dict[str, Any]]) -> None:
        self._validators = {name: Draft202012Validator(schema) for name, schema in schemas.items()}
        self._properties = {name: list(schema.get("properties", {})) for name, schema in schemas.items()}

    def check(self, tool: str, arguments: Any) -> TinytownError | None:
        """The error to answer with, or ``None`` when the call may proceed."""
        validator = self._validators.get(tool)
        if validator is None:
            names = ", ".join(sorted(self._validators))
            return NotFound(f"there is no tool named {tool!r}; the tools are: {names}")
        if not isinstance(arguments, dict):
            return Invalid(f"{tool}: the arguments must be a JSON object, not {_kind(arguments)}")
        bad_text = _first_unencodable(arguments, "")
        if bad_text is not None:
            return Invalid(f"{tool}: {bad_text} is not valid UTF-8 text (it contains a lone surrogate)")
        errors = list(validator.iter_errors(arguments))
        if not errors:
            return None
        takes = ", ".join(self._properties[tool]) or "no arguments"
        sentences = [_describe(error, takes) for error in sorted(errors, key=_order)[:_MAX_SHOWN]]
        return Invalid(f"{tool}: " + "; ".join(dict.fromkeys(sentences)))


def _order(error: ValidationError) -> tuple[int, str]:
    # unknown and missing arguments first: they usually explain the rest
    first = 0 if error.validator in ("additionalProperties", "required") else 1
    return first, ".".join(str(p) for p in error.absolute_path)


def _kind(value: Any) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _first_unencodable(value: Any, where: str) -> str | None:
    """The path of the first string that cannot be encoded as UTF-8 (a lone surrogate)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return where or "an argument"
        return None
    items: Iterable[tuple[Any, Any]]
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        path = f"{where}.{key}" if where else str(key)
        if isinstance(key, str) and _first_unencodable(key, "") is not None:
            return "an argument name"
        found = _first_unencodable(item, path)
        if found is not None:
            return found
    return None


def _describe(error: ValidationError, takes: str) -> str:
    """One sentence per schema violation, naming the argument, without echoing big values."""
    where = ".".join(str(p) for p in error.absolute_path) or "arguments"
    rule, value = error.validator, error.validator_value
    if rule == "additionalProperties":
        given = error.instance if isinstance(error.instance, dict) else {}
        allowed = set(error.schema.get("properties", {}))
        unknown = ", ".join(repr(k) for k in given if k not in allowed)
        return f"unknown argument {unknown}; it takes {takes}"
    if rule == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        return f"the argument {missing!r} is required"
    if rule == "type":
        return f"{where} must be {_type_words(value)}, not {_kind(error.instance)}"
    if rule == "enum":
        return f"{where} must be one of {', '.join(str(v) for v in value)}"
    if rule == "anyOf":
        # an optional argument (T or null): when the value has a right type, say what is
        # wrong with it there; otherwise list the types it may have
        wrong_type = {e.schema_path[0] for e in error.context or [] if e.validator == "type"}
        near = [e for e in error.context or [] if e.schema_path[0] not in wrong_type]
        if near:
            return _describe(best_match(near), takes)
        options = [_type_words(s.get("type")) for s in value if "type" in s]
        return f"{where} must be {' or '.join(options)}, not {_kind(error.instance)}"
    bounds = {
        "minimum": "at least {}", "maximum": "at most {}",
        "exclusiveMinimum": "more than {}", "exclusiveMaximum": "less than {}",
        "minLength": "at least {} characters long", "maxLength": "at most {} characters long",
        "minItems": "a list of at least {} items", "maxItems": "a list of at most {} items",
    }
    if rule in bounds:
        return f"{where} must be {bounds[rule].format(f'{value:g}')}"
    message = error.message
    return f"{where}: {message[:200] + '...' if len(message) > 200 else message}"


def _type_words(json_type: Any) -> str:
    words = {"object": "an object", "array": "an array", "string": "a string", "boolean": "a boolean",
             "integer": "an integer", "number": "a number", "null": "null"}
    if isinstance(json_type, list):
        return " or ".join(words.get(t, str(t)) for t in json_type)
    return words.get(str(json_type), str(json_type))
