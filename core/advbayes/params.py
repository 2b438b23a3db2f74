"""Typed, validated attrs fields for component parameters, with errors that name the expected and given value."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

_NOTHING = attrs.NOTHING
ENTRY_KIND = "advbayes_entry_kind"
HELP = "advbayes_help"
EXPECTED = "advbayes_expected"  # what a value must be, as errors and `advbayes show` say it
ENTRY_LIST = "advbayes_entry_list"
# Bounds every parameter has unless it declares its own upper bound: a value beyond them is a typo or an attack
# on the run (a width of 10**12 allocates until the machine dies), and it is refused before any work.
INT_LIMIT = 10_000_000
FLOAT_LIMIT = 1e6
LIST_LIMIT = 10_000  # items of a list parameter
SEED_LIMIT = 2**32 - 1  # numpy's seeds are 32-bit
KINDS = ("datasets", "models", "defenses", "attacks", "metrics")  # the registry's component kinds


class ParamError(ValueError):
    """A parameter value failed validation; `key` is the field name."""

    def __init__(self, key: str, expected: str, value: Any, given: str | None = None) -> None:
        self.key = key
        self.expected = expected
        self.value = value
        super().__init__(f"expected {expected}, got {given or describe(value)}")


def describe(value: Any) -> str:
    """Render a given value with its type, as error messages show it."""
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def _type_name(kind: type) -> str:
    return {float: "a number", int: "an integer", str: "a string", bool: "true or false"}[kind]


def _bounds_text(ge: float | None, gt: float | None, le: float | None, lt: float | None) -> str:
    parts = []
    if ge is not None:
        parts.append(f">= {ge}")
    if gt is not None:
        parts.append(f"> {gt}")
    if le is not None:
        parts.append(f"<= {le}")
    if lt is not None:
        parts.append(f"< {lt}")
    return " and ".join(parts)


def _check_scalar(
    key: str,
    value: Any,
    kind: type,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: Sequence[str] | None = None,
    what: str | None = None,
    infinite: bool = False,
) -> None:
    expected = what or _expected_scalar(kind, ge=ge, gt=gt, le=le, lt=lt, choices=choices, infinite=infinite)
    ok_type = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
    if kind is float and isinstance(value, float) and not math.isfinite(value):
        ok_type = infinite and not math.isnan(value)  # nan or +-inf is meaningful only where a field says so
    if not ok_type:
        raise ParamError(key, expected, value)
    if choices is not None and value not in choices:
        raise ParamError(key, expected, value)
    if (
        (ge is not None and value < ge)
        or (gt is not None and value <= gt)
        or (le is not None and value > le)
        or (lt is not None and value >= lt)
    ):
        raise ParamError(key, expected, value)


def _expected_scalar(
    kind: type,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: Sequence[str] | None = None,
    infinite: bool = False,
) -> str:
    if choices is not None:
        return "one of " + ", ".join(repr(c) for c in choices)
    bounds = _bounds_text(ge, gt, le, lt)
    finite = " finite" if kind is float and not infinite else ""
    return _type_name(kind).replace("a number", f"a{finite} number") + (f" {bounds}" if bounds else "")


def _default_upper(kind: type, le: float | None, lt: float | None) -> float | None:
    if le is not None or lt is not None:
        return le
    return {int: INT_LIMIT, float: FLOAT_LIMIT}.get(kind)


def _to_float(value: Any) -> Any:
    # TOML writes 0 for 0.0; accept integers where a float is asked for, never booleans.
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:  # beyond any float: left an int, which the validator refuses in one line
            return value
    return value


def _scalar_validator(kind: type, optional: bool, **checks: Any) -> Callable[[Any, attrs.Attribute, Any], None]:
    def validate(_instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if value is None and optional:
            return
        _check_scalar(attribute.name, value, kind, **checks)

    return validate


def param(
    default: Any = _NOTHING,
    *,
    kind: type = float,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: Sequence[str] | None = None,
    optional: bool = False,
    infinite: bool = False,
    help: str = "",
) -> Any:
    """A scalar parameter (float, int, str or bool) with bounds or choices; None allowed when optional.

    A number without an upper bound gets INT_LIMIT or FLOAT_LIMIT; floats must be finite unless `infinite` (then
    +-inf pass the bounds like any number and no upper limit is added).
    """
    le = le if infinite else _default_upper(kind, le, lt)
    converter = _to_float if kind is float else None
    return attrs.field(
        default=default,
        converter=converter,
        validator=_scalar_validator(kind, optional, ge=ge, gt=gt, le=le, lt=lt, choices=choices, infinite=infinite),
        metadata={
            HELP: help,
            EXPECTED: _expected_scalar(kind, ge=ge, gt=gt, le=le, lt=lt, choices=choices, infinite=infinite)
            + (" or none" if optional else ""),
        },
        kw_only=True,
    )


def list_param(
    default: Sequence[Any] = (),
    *,
    kind: type = float,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    nonempty: bool = False,
    help: str = "",
) -> Any:
    """A list parameter whose items are scalars of one kind with optional bounds; stored as a tuple of at most
    LIST_LIMIT items (numbers bounded like param's)."""
    le = _default_upper(kind, le, lt)
    bounds = _bounds_text(ge, gt, le, lt)
    item_text = (
        ("finite " if kind is float else "")
        + _type_name(kind).replace("a ", "").replace("an ", "")
        + "s"
        + (f" {bounds}" if bounds else "")
    )

    def convert(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return tuple(_to_float(v) if kind is float else v for v in value)
        return value

    expected = f"a {'non-empty ' if nonempty else ''}list of {item_text}"

    def validate(_instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if not isinstance(value, tuple) or (nonempty and not value):
            raise ParamError(attribute.name, expected, value)
        if len(value) > LIST_LIMIT:
            raise ParamError(attribute.name, f"at most {LIST_LIMIT} items", value, f"a list of {len(value)}")
        for item in value:
            try:
                _check_scalar(attribute.name, item, kind, ge=ge, gt=gt, le=le, lt=lt)
            except ParamError:
                raise ParamError(attribute.name, expected, list(value)) from None

    return attrs.field(
        factory=lambda: tuple(default),
        converter=convert,
        validator=validate,
        metadata={HELP: help, EXPECTED: expected},
        kw_only=True,
    )


def entry_param(kind: str, default: Any = None, *, optional: bool = True, help: str = "") -> Any:
    """A reference to a registry entry of `kind` (name or inline table), resolved by the registry to a table."""

    def validate(_instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if value is None and optional:
            return
        if not isinstance(value, (str, dict)) or (isinstance(value, str) and not value):
            raise ParamError(attribute.name, f"the name of a {kind[:-1]} entry or an inline table", value)

    return attrs.field(
        default=default,
        validator=validate,
        metadata={HELP: help, ENTRY_KIND: kind, EXPECTED: f"the name of a {kind[:-1]} entry or an inline table"},
        kw_only=True,
    )


def entry_list_param(kind: str, default: Sequence[str] = (), *, nonempty: bool = False, help: str = "") -> Any:
    """A list of references to registry entries of `kind` (names or inline tables)."""

    def convert(value: Any) -> Any:
        return list(value) if isinstance(value, tuple) else value

    expected = f"a {'non-empty ' if nonempty else ''}list of {kind[:-1]} entry names or inline tables"

    def validate(_instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if not isinstance(value, list) or (nonempty and not value):
            raise ParamError(attribute.name, expected, value)
        if len(value) > LIST_LIMIT:
            raise ParamError(attribute.name, f"at most {LIST_LIMIT} entries", value, f"a list of {len(value)}")
        if any(not isinstance(item, (str, dict)) or item == "" for item in value):
            raise ParamError(attribute.name, expected, value)

    return attrs.field(
        factory=lambda: list(default),
        converter=convert,
        validator=validate,
        metadata={HELP: help, ENTRY_KIND: kind, ENTRY_LIST: True, EXPECTED: expected},
        kw_only=True,
    )


def entry_kind(attribute: attrs.Attribute) -> str | None:
    """The registry kind an entry-reference field points to, or None for a plain parameter."""
    return attribute.metadata.get(ENTRY_KIND)


def is_entry_list(attribute: attrs.Attribute) -> bool:
    """True when the field holds a list of entry references."""
    return bool(attribute.metadata.get(ENTRY_LIST))


def parameter_fields(cls: type) -> dict[str, attrs.Attribute]:
    """The fields of a component class that a registry entry may set."""
    return {a.name: a for a in attrs.fields(cls) if not a.metadata.get("internal")}


# Keys renamed so that each quantity has one name everywhere (CHANGELOG.md): S_A is attack_samples, R is
# verdict_repeats. The old key keeps working, with a DeprecationWarning, for one release.
RENAMED_KEYS = {"samples": "attack_samples", "repeats": "verdict_repeats"}


def old_names(fields: Mapping[str, Any]) -> dict[str, str]:
    """old -> current name of the renamed keys a component with these fields still accepts."""
    return {old: new for old, new in RENAMED_KEYS.items() if new in fields and old not in fields}


def with_current_names(cls: type, params: dict[str, Any], *, where: str) -> tuple[dict[str, Any], dict[str, str]]:
    """`params` with renamed keys under their current names (warning once for each), and current -> old name for
    the keys that were renamed, so that an error names the key as it was written."""
    current, written = dict(params), {}
    for old, new in old_names(parameter_fields(cls)).items():
        if old in current:
            if new in current:
                raise ParamError(old, f"one of '{old}' (the old name) and '{new}', not both", current[old])
            warnings.warn(
                f"{where}: key '{old}' is now '{new}'; the old name goes in the next release",
                DeprecationWarning,
                stacklevel=3,
            )
            current[new] = current.pop(old)
            written[new] = old
    return current, written


def toml_text(value: Any) -> str:
    """A default as a registry file would write it (true, [1, 2], "text"); none for a missing value."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_text(item) for item in value) + "]"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def parameter_help(cls: type) -> list[str]:
    """One line per parameter of a component: name, what a value must be, its default or "required", its help."""
    lines = []
    for name, field in parameter_fields(cls).items():
        default: Any = field.default
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]  # attrs types Factory loosely
            default = default.factory()
        given = "required" if default is _NOTHING else f"default {toml_text(default)}"
        text = field.metadata.get(HELP, "")
        lines.append(f"{name}: {field.metadata.get(EXPECTED, 'any value')}; {given}" + (f". {text}" if text else ""))
    return lines
