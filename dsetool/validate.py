"""Typed conversion of plain YAML data into frozen dataclasses, and their JSON Schema.

The experiment schema is declared once, as dataclasses whose fields carry `spec(...)` metadata
(allowed range, choices, help text). This module turns untrusted YAML values into those dataclasses,
and every failure names the file, the dotted key, what was expected and what was found, so a user can
fix a config without reading code. The same declarations produce the JSON Schema that editors use.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, Field, dataclass, field
from typing import Any, Union, get_args, get_origin


class ConfigError(Exception):
    """A user error in an experiment file or an override; the CLI reports it in one line, exit code 2."""

    def __init__(self, source: str, key: str, reason: str) -> None:
        self.source, self.key, self.reason = source, key, reason
        where = f"{source}: {key}: " if key else f"{source}: "
        super().__init__(where + reason)


@dataclass(frozen=True)
class Spec:
    """Constraints on one config field beyond its Python type."""

    help: str = ""
    range: tuple[float, float] | None = None
    choices: tuple[str, ...] | None = None


def spec(default: Any = MISSING, *, help: str = "", range: tuple[float, float] | None = None,
         choices: tuple[str, ...] | None = None, factory: Any = MISSING) -> Any:
    """Declare a dataclass field with its constraints (used like `dataclasses.field`)."""
    meta = {"spec": Spec(help=help, range=range, choices=choices)}
    if factory is not MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def field_spec(f: Field[Any]) -> Spec:
    """Return the constraints declared on a dataclass field (empty when none)."""
    found = f.metadata.get("spec")
    return found if isinstance(found, Spec) else Spec()


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_optional(tp: Any) -> tuple[bool, Any]:
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(get_args(tp)) == 2:
            return True, args[0]
    return False, tp


def _range_text(rng: tuple[float, float] | None, integer: bool) -> str:
    if rng is None:
        return ""
    lo, hi = rng
    if integer:
        return f" in {int(lo)}..{int(hi)}"
    return f" in [{lo:g}, {hi:g}]"


class Converter:
    """Convert YAML values into typed dataclass instances, reporting errors against one source file."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, reason: str) -> ConfigError:
        """Build the error for `key` (raise it at the call site so tracebacks stay short)."""
        return ConfigError(self.source, key, reason)

    def dataclass_from(self, cls: type, data: Any, key: str) -> Any:
        """Build `cls` from a mapping, rejecting unknown keys with a did-you-mean."""
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise self.fail(key or "(top level)", f"expected a mapping, got {_describe(data)}")
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        hints = typing.get_type_hints(cls)
        for name in data:
            if not isinstance(name, str) or name not in fields:
                raise self.fail(_join(key, str(name)), "unknown key" + did_you_mean(str(name), fields))
        values = {}
        for name, f in fields.items():
            if name in data:
                values[name] = self.value(hints[name], field_spec(f), data[name], _join(key, name))
        return cls(**values)

    def value(self, tp: Any, sp: Spec, raw: Any, key: str) -> Any:
        """Convert one value to type `tp` under constraints `sp`."""
        optional, inner = _is_optional(tp)
        if inner is Any:
            return raw  # checked later, where the value lands (sweep axes)
        if raw is None:
            if optional:
                return None
            raise self.fail(key, f"expected {_expected(inner, sp)}, got null")
        if dataclasses.is_dataclass(inner):
            return self.dataclass_from(typing.cast(type, inner), raw, key)
        origin = get_origin(inner)
        if origin in (Union, types.UnionType):
            return self._first_fitting(get_args(inner), sp, raw, key)
        if origin in (Mapping, dict):
            return self._mapping(get_args(inner)[1], raw, key)
        if origin is tuple:
            return self._tuple(get_args(inner)[0], sp, raw, key)
        return self._scalar(inner, sp, raw, key)

    def _first_fitting(self, alternatives: tuple[Any, ...], sp: Spec, raw: Any, key: str) -> Any:
        """Convert to the first alternative of a union that accepts the value (e.g. `auto` or a count)."""
        lists = [a for a in alternatives if get_origin(a) is tuple]
        if isinstance(raw, list | tuple) and len(lists) == 1:
            return self.value(lists[0], sp, raw, key)   # its error names the item at fault
        for alternative in alternatives:
            try:
                return self.value(alternative, sp, raw, key)
            except ConfigError:
                continue
        expected = " or ".join(_expected_any(a, sp) for a in alternatives)
        raise self.fail(key, f"expected {expected}, got {_describe(raw)}")

    def _mapping(self, value_type: Any, raw: Any, key: str) -> dict[str, Any]:
        if not isinstance(raw, Mapping):
            raise self.fail(key, f"expected a mapping, got {_describe(raw)}")
        out = {}
        for name, item in raw.items():
            if not isinstance(name, str):
                raise self.fail(key, f"expected string keys, got {_describe(name)}")
            out[name] = self.value(value_type, Spec(), item, _join(key, name))
        return out

    def _tuple(self, item_type: Any, sp: Spec, raw: Any, key: str) -> tuple[Any, ...]:
        if not isinstance(raw, list | tuple):
            raise self.fail(key, f"expected a list of {_expected(item_type, sp)}, got {_describe(raw)}")
        if item_type is Any:
            return tuple(raw)
        return tuple(self._scalar(item_type, sp, item, f"{key}[{i}]") for i, item in enumerate(raw))

    def _scalar(self, tp: Any, sp: Spec, raw: Any, key: str) -> Any:
        if tp is bool:
            if isinstance(raw, bool):
                return raw
        elif tp is int:
            if isinstance(raw, int) and not isinstance(raw, bool):
                return self._in_range(raw, sp, key, integer=True)
        elif tp is float:
            if isinstance(raw, int | float) and not isinstance(raw, bool):
                return self._in_range(float(raw), sp, key, integer=False)
        elif tp is str:
            if isinstance(raw, str):
                return self._choice(raw, sp, key)
        else:  # pragma: no cover - a schema declaration error, not a user error
            raise TypeError(f"unsupported config type {tp!r} at {key}")
        raise self.fail(key, f"expected {_expected(tp, sp)}, got {_describe(raw)}")

    def _in_range(self, value: float, sp: Spec, key: str, integer: bool) -> Any:
        if sp.range is not None and not (sp.range[0] <= value <= sp.range[1]):
            kind = "an integer" if integer else "a number"
            raise self.fail(key, f"expected {kind}{_range_text(sp.range, integer)}, got {_describe(value)}")
        return value

    def _choice(self, value: str, sp: Spec, key: str) -> str:
        if sp.choices is not None and value not in sp.choices:
            hint = did_you_mean(value, sp.choices)
            raise self.fail(key, f"expected one of {', '.join(sp.choices)}, got {value!r}{hint}")
        return value


def _expected(tp: Any, sp: Spec) -> str:
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer" + _range_text(sp.range, True)
    if tp is float:
        return "a number" + _range_text(sp.range, False)
    if tp is str:
        return f"one of {', '.join(sp.choices)}" if sp.choices else "a string"
    return "a mapping"


def _expected_any(tp: Any, sp: Spec) -> str:
    if get_origin(tp) is tuple:
        item = get_args(tp)[0]
        return f"a list of {_expected(item, sp)}" if item is str else "a list of integers" + _range_text(sp.range, True)
    return _expected(tp, sp)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def did_you_mean(name: str, known: Any) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(sorted(known))})"


def resolve_field(cls: type, dotted: str) -> tuple[Any, Spec] | None:
    """Return (type, spec) of the field a dotted key names in the schema rooted at `cls`, or None.

    Keys below a `Mapping[str, X]` field accept any name (e.g. `quant.layers.conv1.weight_bits`).
    """
    tp: Any = cls
    sp = Spec()
    for part in dotted.split("."):
        _, tp = _is_optional(tp)
        if dataclasses.is_dataclass(tp):
            found = {f.name: f for f in dataclasses.fields(tp)}.get(part)
            if found is None:
                return None
            tp, sp = typing.get_type_hints(tp)[part], field_spec(found)
        elif get_origin(tp) in (Mapping, dict):
            tp, sp = get_args(tp)[1], Spec()
        else:
            return None
    return tp, sp


def suggest_key(cls: type, dotted: str) -> str:
    """Explain why `dotted` names no field, with a did-you-mean on the first part that fails."""
    parts = dotted.split(".")
    for depth in range(len(parts), 0, -1):
        parent = ".".join(parts[: depth - 1])
        resolved = resolve_field(cls, parent) if parent else (cls, Spec())
        if resolved is None:
            continue
        _, tp = _is_optional(resolved[0])
        if dataclasses.is_dataclass(tp):
            return "unknown key" + did_you_mean(parts[depth - 1], [f.name for f in dataclasses.fields(tp)])
    return "unknown key"


def json_schema(cls: type, title: str) -> dict[str, Any]:
    """Describe the dataclass schema rooted at `cls` as a JSON Schema (draft 2020-12)."""
    schema = _schema_of(cls, Spec())
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": title, **schema}


def _schema_of(tp: Any, sp: Spec) -> dict[str, Any]:
    optional, inner = _is_optional(tp)
    out = _schema_of_inner(inner, sp)
    if optional:
        out = {"anyOf": [out, {"type": "null"}]}
    if sp.help:
        out["description"] = sp.help
    return out


def _schema_of_inner(tp: Any, sp: Spec) -> dict[str, Any]:
    if tp is Any:
        return {}
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        props = {}
        for f in dataclasses.fields(tp):
            prop = _schema_of(hints[f.name], field_spec(f))
            default = _default_of(f)
            if default is not MISSING:
                prop["default"] = default
            props[f.name] = prop
        return {"type": "object", "properties": props, "additionalProperties": False}
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        return {"anyOf": [_schema_of_inner(a, sp) for a in get_args(tp)]}
    if origin in (Mapping, dict):
        return {"type": "object", "additionalProperties": _schema_of(get_args(tp)[1], Spec())}
    if origin is tuple:
        return {"type": "array", "items": _schema_of_inner(get_args(tp)[0], sp)}
    names = {bool: "boolean", int: "integer", float: "number", str: "string"}
    out: dict[str, Any] = {"type": names[tp]}
    if sp.choices:
        out["enum"] = list(sp.choices)
    if sp.range is not None:
        out["minimum"], out["maximum"] = sp.range
    return out


def _default_of(f: Field[Any]) -> Any:
    if f.default is not MISSING:
        value = f.default
    elif f.default_factory is not MISSING:
        value = f.default_factory()
    else:
        return MISSING
    return to_plain(value)


def to_plain(value: Any) -> Any:
    """Turn dataclasses, tuples and mappings into JSON-ready dicts and lists (for hashing and display)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    return value
