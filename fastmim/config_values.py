"""Values for configuration fields, checked against the field's declared type: what `--set`, `--config` and
config.yaml give (YAML scalars, lists, mappings) becomes the int, float, bool, str, tuple, dict or None the
dataclass declares, or a `ConfigValueError` naming the field, its type and the value. Choices are types too:
`Literal["smooth_l1", "l2"]` takes one of its values, `Annotated[str, Matches(...)]` a string of a pattern, and
`Annotated[tuple, Floats(3)]` exactly three numbers. Light on purpose: the command line imports it before
anything heavy."""
from __future__ import annotations

import dataclasses
import functools
import re
import types
import typing


class ConfigValueError(ValueError):
    """A configuration value that does not fit its field."""


@dataclasses.dataclass(frozen=True)
class Matches:
    """`Annotated[str, Matches(pattern, described)]`: a string matching the whole of `pattern`."""
    pattern: str
    described: str

    def check(self, value):
        if not isinstance(value, str) or re.fullmatch(self.pattern, value) is None:
            raise ValueError("no match")
        return value


@dataclasses.dataclass(frozen=True)
class Items:
    """`Annotated[tuple, Items(kind, count)]`: a list of `count` values (any number, at least one, when None) of
    `kind` (float or str), checked element by element."""
    kind: type
    count: int | None = None

    @property
    def described(self) -> str:
        what = {float: "numbers", str: "strings"}[self.kind]
        return f"{self.count} {what}" if self.count else f"a list of {what}"

    def check(self, value):
        if len(value) != (self.count or len(value)) or not value:
            raise ValueError("wrong length")
        if self.kind is float:
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
                raise ValueError("not numbers")
            return tuple(float(v) for v in value)
        if not all(isinstance(v, str) and v for v in value):
            raise ValueError("not strings")
        return tuple(value)


def Floats(count: int | None = None) -> Items:  # noqa: N802  (reads as a type in annotations)
    return Items(float, count)


def Strings(count: int | None = None) -> Items:  # noqa: N802
    return Items(str, count)


@functools.cache
def field_types(cls) -> dict[str, object]:
    """The declared types of a dataclass's fields (resolving `from __future__ import annotations` strings)."""
    return typing.get_type_hints(cls, include_extras=True)


def choices(annotation) -> tuple | None:
    """The values a `Literal` field (or an optional one) allows, else None."""
    members, _ = optional_parts(annotation)
    for member in members:
        if typing.get_origin(member) is typing.Literal:
            return typing.get_args(member)
    return None


def matches_description(annotation) -> str | None:
    """What an `Annotated[str, Matches(...)]` field takes, in words, else None."""
    if typing.get_origin(annotation) is typing.Annotated:
        return next((e.described for e in typing.get_args(annotation)[1:] if isinstance(e, Matches)), None)
    return None


def type_name(annotation) -> str:
    if annotation is type(None):
        return "None"
    if typing.get_origin(annotation) is typing.Literal:
        return "one of " + ", ".join(str(v) for v in typing.get_args(annotation))
    if typing.get_origin(annotation) is typing.Annotated:
        base, *extras = typing.get_args(annotation)
        return " and ".join(e.described for e in extras) or type_name(base)
    members, nullable = optional_parts(annotation)
    if len(members) > 1 or nullable:
        return " or ".join(type_name(m) for m in members) + (" or null" if nullable else "")
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def optional_parts(annotation) -> tuple[list, bool]:
    """(the non-None members of a union, whether None is allowed)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = list(typing.get_args(annotation))
        return [m for m in members if m is not type(None)], type(None) in members
    return [annotation], False


def coerce(value, annotation, where: str):
    """`value` as `annotation` (the field `where`'s type), or ConfigValueError."""
    members, nullable = optional_parts(annotation)
    if value is None:
        if nullable or annotation is object:
            return None
        raise ConfigValueError(f"{where} is {type_name(annotation)} and cannot be null")
    for member in members:
        try:
            return coerce_one(value, member)
        except (TypeError, ValueError):
            continue
    raise ConfigValueError(f"{where} must be {type_name(annotation)}, got {value!r}")


def coerce_one(value, kind):
    origin = typing.get_origin(kind) or kind
    if kind is object or kind is typing.Any:
        return value
    if origin is typing.Literal:
        allowed = typing.get_args(kind)
        if value in allowed and not isinstance(value, bool):
            return value
        raise ValueError("not one of the choices")
    if origin is typing.Annotated:
        base, *checks = typing.get_args(kind)
        value = coerce_one(value, base)
        for check in checks:
            value = check.check(value)
        return value
    if origin is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off", "1", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise TypeError("not a bool")
    if origin is int:
        if isinstance(value, bool):
            raise TypeError("a bool is not an int")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            return int(value.strip())
        raise TypeError("not an int")
    if origin is float:
        if isinstance(value, bool):
            raise TypeError("a bool is not a float")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            return float(value.strip())
        raise TypeError("not a float")
    if origin is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise TypeError("not a string")
    if origin is tuple:
        if isinstance(value, (list, tuple)):
            return tuple(plain_number(v) for v in value)
        if isinstance(value, str) and value:  # `--teacher a,b`-style shorthand for a one-item tuple
            return (value,)
        raise TypeError("not a list")
    if origin is dict:
        if isinstance(value, dict):
            return {str(k): plain_number(v) for k, v in value.items()}
        raise TypeError("not a mapping")
    if isinstance(origin, type) and not isinstance(value, origin):
        raise TypeError(f"not a {origin.__name__}")
    return value


def plain_number(value):
    """Inside tuples and dicts the element type is not declared: numbers YAML left as strings (1e-4) become
    floats, everything else stays."""
    if isinstance(value, str):
        try:
            return float(value) if any(c in value for c in ".eE") and value.strip()[:1] in "+-.0123456789" else value
        except ValueError:
            return value
    return value


def declared_type(target, name: str):
    """The declared type of field `name` of the dataclass instance `target`."""
    return field_types(type(target)).get(name, object) if dataclasses.is_dataclass(target) else object


def check_fields(instance, prefix: str) -> None:
    """Every field of the dataclass `instance` against its declared type (ConfigValueError naming the first that
    does not fit): for configurations built in code rather than read through `--set` or a file."""
    for name, annotation in field_types(type(instance)).items():
        if typing.get_origin(annotation) is typing.ClassVar or annotation is typing.ClassVar:
            continue
        coerce(getattr(instance, name), annotation, f"{prefix}.{name}")
