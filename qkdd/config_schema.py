"""Reads parsed TOML tables into frozen dataclasses: the dataclass fields are the schema.

Theory of operation: `build(cls, table, key)` walks the fields of `cls` (type hints resolved), takes each
value from `table`, checks its type, runs the field's check, and rejects any key the class does not
declare (with a "did you mean" hint). Nested dataclasses are TOML tables, `tuple[SomeDataclass, ...]`
is an array of tables, `X | None` is an optional key. Values that came from the environment arrive as
`FromEnv` strings and are converted to the field's type here, so a garbage environment variable fails
exactly like a garbage TOML value, and the error names the variable. Every failure is one ConfigError
carrying the dotted key and what is wrong.

Adding a setting is adding a field: `name: type = default` plus, where a range matters,
`field(default=..., metadata=meta(check=...))`. Classes owned elsewhere (e.g. HTTPLimits) get checks
through `register_checks`.
"""
from __future__ import annotations

import dataclasses
import difflib
import hmac
import ipaddress
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, Literal, Union

Check = Callable[[Any], "str | None"]         # returns what is wrong, or None when the value is fine


class ConfigError(Exception):
    """A configuration problem: `key` is the dotted key (or variable, or file), `problem` what is wrong."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


class Secret:
    """A string that never shows itself in repr, str, logs or tracebacks; `reveal()` gives the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(Secret)

    def __bool__(self) -> bool:
        return bool(self._value)


@dataclass(frozen=True)
class FromEnv:
    """A raw value taken from environment variable `variable`, converted to the field type on build."""

    text: str
    variable: str


def meta(*, check: Check | None = None, hints: dict[str, str] | None = None) -> dict[str, Any]:
    """Field metadata for the schema: a range/format check, and hints added to the error when a
    rejected value is one users are known to try (value -> advice). Secrets are typed `Secret`."""
    return {"check": check, "hints": hints or {}}


# Checks and parsers for types this module does not own.
_FIELD_CHECKS: dict[tuple[type, str], Check] = {}
_CLASS_VALIDATORS: dict[type, Callable[[Any, str], None]] = {}
_PARSERS: dict[type, Callable[[str], Any]] = {}


def register_checks(cls: type, **checks: Check) -> None:
    """Attach checks to fields of a dataclass defined elsewhere: register_checks(HTTPLimits, x=positive)."""
    hints = typing.get_type_hints(cls)
    for name, check in checks.items():
        if name not in hints:
            raise TypeError(f"{cls.__name__} has no field {name}")
        _FIELD_CHECKS[(cls, name)] = check


def register_validator(cls: type, validator: Callable[[Any, str], None]) -> None:
    """Attach a whole-object check `validator(obj, key)` that raises ConfigError (cross-field rules)."""
    _CLASS_VALIDATORS[cls] = validator


def register_parser(cls: type, parser: Callable[[str], Any]) -> None:
    """Values of type `cls` are written as strings; `parser` turns one into the value or raises
    ValueError whose message says what is wrong."""
    _PARSERS[cls] = parser


# ---- checks ------------------------------------------------------------------------------------

def in_range(low: float | None = None, high: float | None = None, *,
             low_open: bool = False, high_open: bool = False) -> Check:
    """A number in [low, high]; `low_open`/`high_open` exclude the bound."""
    def check(value: float) -> str | None:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        span = f"{left}{'-inf' if low is None else low}, {'inf' if high is None else high}{right}"
        if low is not None and (value < low or (low_open and value == low)):
            return f"must be in {span}, got {value!r}"
        if high is not None and (value > high or (high_open and value == high)):
            return f"must be in {span}, got {value!r}"
        return None
    return check


positive = in_range(0, None, low_open=True)
non_negative = in_range(0, None)


def one_of_hint(value: str, choices: typing.Iterable[str]) -> str:
    """' (did you mean "x"?)' when `value` is close to one of `choices`, else ''."""
    close = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


def parse_host_port(text: str, *, allow_port_zero: bool = False) -> tuple[str, int]:
    """Split `host:port` (IPv6 as `[addr]:port`); ValueError with a readable reason on anything else."""
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^\s:\[\]]+):(\d{1,5})", text.strip())
    if not match:
        raise ValueError(f"expected host:port (IPv6 as [addr]:port), got {text!r}")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    low = 0 if allow_port_zero else 1
    if not low <= port <= 65535:
        raise ValueError(f"port must be in [{low}, 65535], got {port}")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if match.group(1) or not re.fullmatch(r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,62}[A-Za-z0-9])?"
                                              r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}[A-Za-z0-9])?)*", host):
            raise ValueError(f"not an IP address or host name: {host!r}") from None
    return host, port


# ---- building ------------------------------------------------------------------------------------

def build(cls: type, table: Any, key: str) -> Any:
    """Build dataclass `cls` from `table` (a dict from TOML, possibly holding FromEnv values)."""
    if isinstance(table, FromEnv):
        raise ConfigError(_name(key, table), "must be a table")
    if not isinstance(table, dict):
        raise ConfigError(key or "(top level)", f"must be a table, got {_kind(table)}")
    if hasattr(cls, "expand_table"):    # a class whose tables name a preset fills in the preset's keys first
        table = cls.expand_table(table, key)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    for name in table:
        if name not in fields:
            raise ConfigError(_join(key, name), "unknown key" + one_of_hint(name, fields))
    values: dict[str, Any] = {}
    for name, spec in fields.items():
        field_key = _join(key, name)
        if name not in table:
            if spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
                raise ConfigError(field_key, "required key is missing")
            continue
        try:
            value = convert(hints[name], table[name], field_key)
        except ConfigError as exc:
            advice = spec.metadata.get("hints", {}).get(_raw_text(table[name]))
            if advice:
                raise ConfigError(exc.key, f"{exc.problem}; {advice}") from None
            raise
        check = spec.metadata.get("check") or _FIELD_CHECKS.get((cls, name))
        if check is not None and value is not None:
            problem = check(value)
            if problem:
                raise ConfigError(_name(field_key, table[name]), problem)
        values[name] = value
    try:
        obj = cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(key or "(top level)", str(exc)) from None
    if cls in _CLASS_VALIDATORS:
        _CLASS_VALIDATORS[cls](obj, key)
    elif hasattr(obj, "validate"):
        obj.validate(key)
    return obj


def convert(hint: Any, raw: Any, key: str) -> Any:
    """Check `raw` against type `hint` and return the value in that type."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        options = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if len(options) != 1:
            raise TypeError(f"unsupported union {hint}")
        return convert(options[0], raw, key)
    if origin is Literal:
        choices = [str(c) for c in typing.get_args(hint)]
        text = _text(raw, key)
        if text not in choices:
            raise ConfigError(_name(key, raw), f"must be one of {', '.join(choices)}; got {text!r}"
                              + one_of_hint(text, choices))
        return text
    if origin is tuple:
        item_type = typing.get_args(hint)[0]
        if isinstance(raw, FromEnv):
            raise ConfigError(_name(key, raw), "cannot be set from the environment")
        if not isinstance(raw, list):
            raise ConfigError(key, f"must be an array, got {_kind(raw)}")
        return tuple(convert(item_type, item, f"{key}[{index}]") for index, item in enumerate(raw))
    if dataclasses.is_dataclass(hint) and hint not in _PARSERS:
        return build(hint, raw, key)
    if hint in _PARSERS:
        text = _text(raw, key)
        try:
            return _PARSERS[hint](text)
        except ValueError as exc:
            raise ConfigError(_name(key, raw), str(exc)) from None
    if hint is Secret:
        if not isinstance(raw, (str, FromEnv)):
            raise ConfigError(key, "must be a string")      # the value itself is never echoed
        return Secret(_text(raw, key))
    if hint is bool:
        if isinstance(raw, FromEnv):
            lowered = raw.text.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ConfigError(_name(key, raw), f"must be true or false, got {raw.text!r}")
        if not isinstance(raw, bool):
            raise ConfigError(key, f"must be true or false, got {_kind(raw)}")
        return raw
    if hint is int:
        if isinstance(raw, FromEnv):
            try:
                return int(raw.text.strip(), 10)
            except ValueError:
                raise ConfigError(_name(key, raw), f"must be an integer, got {raw.text!r}") from None
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise ConfigError(key, f"must be an integer, got {_kind(raw)}")
        return raw
    if hint is float:
        if isinstance(raw, FromEnv):
            try:
                value = float(raw.text.strip())
            except ValueError:
                raise ConfigError(_name(key, raw), f"must be a number, got {raw.text!r}") from None
        elif isinstance(raw, bool) or not isinstance(raw, (int, float)):
            raise ConfigError(key, f"must be a number, got {_kind(raw)}")
        else:
            value = float(raw)
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(_name(key, raw), "must be a finite number")
        return value
    if hint is str:
        return _text(raw, key)
    raise TypeError(f"unsupported config type {hint!r} at {key}")


def to_plain(obj: Any, *, redact: bool = True) -> Any:
    """The dataclass tree as dicts/lists/scalars (for printing); secrets become "***" when `redact`."""
    if isinstance(obj, Secret):
        return "***" if redact else obj.reveal()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        if type(obj) in _PARSERS:
            return str(obj)
        return {f.name: to_plain(getattr(obj, f.name), redact=redact)
                for f in dataclasses.fields(obj) if f.init}
    if isinstance(obj, (tuple, list)):
        return [to_plain(item, redact=redact) for item in obj]
    return obj


def _text(raw: Any, key: str) -> str:
    if isinstance(raw, FromEnv):
        return raw.text
    if not isinstance(raw, str):
        raise ConfigError(key, f"must be a string, got {_kind(raw)}")
    return raw


def _raw_text(raw: Any) -> str | None:
    if isinstance(raw, FromEnv):
        return raw.text
    return raw if isinstance(raw, str) else None


def _name(key: str, raw: Any) -> str:
    """The key as the user wrote it: the environment variable when the value came from there."""
    return f"{raw.variable} ({key})" if isinstance(raw, FromEnv) else key


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def _kind(value: Any) -> str:
    kinds = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
             list: "an array", dict: "a table"}
    for python_type, kind in kinds.items():
        if type(value) is python_type:
            return f"{kind} ({value!r})" if python_type in (bool, int, float, str) else kind
    return type(value).__name__
