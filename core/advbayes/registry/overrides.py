"""`--set dotted.key=value`: values read as TOML, keys that may quote entry names, applied inside a resolved
experiment."""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from advbayes.errors import RegistryError
from advbayes.params import RENAMED_KEYS
from advbayes.registry.files import parse_toml, suggest, tomllib

OVERRIDE_SOURCE = "--set"


ARITHMETIC = re.compile(r"(?P<a>\d+(?:\.\d*)?)\s*(?P<op>[/*])\s*(?P<b>\d+(?:\.\d*)?)")  # 8/255, 2*0.1
NUMBERS_ONLY = re.compile(r"^[\[\]\s\d.eE+\-*/,()]+$")  # a value of numbers and operators, not a path like a/2020/1


def parse_override(text: str) -> tuple[str, Any]:
    """Parse 'dotted.key=value' with the value read as TOML (a bare word is a string)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise RegistryError(f"expected KEY=VALUE, got {text!r}", file=OVERRIDE_SOURCE)
    odd = next((ch for ch in key if unicodedata.category(ch)[0] in "CZ"), None)  # control, format, separators
    if odd is not None:
        raise RegistryError(
            f"a key holds no spaces, line breaks or control characters, got {key!r} (U+{ord(odd):04X})",
            file=OVERRIDE_SOURCE,
        )
    raw = raw.strip()
    try:
        tomllib.loads(f"value = {raw}")
    except tomllib.TOMLDecodeError:
        arithmetic = ARITHMETIC.search(raw) if NUMBERS_ONLY.match(raw) else None
        if arithmetic:
            divisor = float(arithmetic["b"])
            number = float(arithmetic["a"]) / divisor if arithmetic["op"] == "/" and divisor else None
            hint = f"write {arithmetic[0]} as {number:.7g}" if number is not None else "write the value as a decimal"
            raise RegistryError(
                f"TOML has no arithmetic: {hint}, got {raw!r}",
                file=OVERRIDE_SOURCE,
                key=key,
            ) from None
        return key, raw  # a bare word is a string
    except (RecursionError, ValueError):
        pass  # parse_toml below names the problem in one line
    return key, parse_toml(f"value = {raw}", file=OVERRIDE_SOURCE, key=key)["value"]


def split_key(dotted: str) -> list[str]:
    """The parts of a dotted override key; a part may be quoted as in TOML (`defenses."mc-dropout-0.3".p`)."""
    if '"' not in dotted and "'" not in dotted:
        return dotted.split(".")
    try:
        node: Any = tomllib.loads(f"{dotted} = 0")
    except (tomllib.TOMLDecodeError, RecursionError, ValueError):
        raise RegistryError(
            "expected a dotted key whose parts are bare or quoted as in TOML", file=OVERRIDE_SOURCE, key=dotted
        ) from None
    parts = []
    while isinstance(node, dict):
        (part, node), *_ = node.items()
        parts.append(part)
    return parts


def _child_key(node: Any, parts: list[str], start: int) -> int:
    """How many parts from `start` name one child of `node`: an entry name with dots (`mc-dropout-0.3`) spans
    several parts of an unquoted key. The longest match wins; 1 when none matches (the caller reports it)."""
    for stop in range(len(parts), start, -1):
        candidate = ".".join(parts[start:stop])
        if isinstance(node, list) and any(isinstance(i, dict) and i.get("name") == candidate for i in node):
            return stop - start
        if isinstance(node, dict) and candidate in node and stop < len(parts):
            return stop - start
    return 1


def apply_override(table: dict[str, Any], dotted: str, value: Any) -> None:
    """Set a dotted key inside a resolved experiment; list items are addressed by entry name."""
    parts = split_key(dotted)
    node: Any = table
    index = 0
    while True:
        span = _child_key(node, parts, index) if index < len(parts) - 1 else 1
        if index + span >= len(parts):
            break
        part = ".".join(parts[index : index + span])
        here = ".".join(parts[: index + span])
        index += span
        if isinstance(node, list):
            matches = [item for item in node if isinstance(item, dict) and item.get("name") == part]
            if not matches:
                names = [str(item.get("name")) for item in node if isinstance(item, dict)]
                raise RegistryError(
                    f"no entry '{part}' in this list{suggest(part, names, 'entries')}",
                    file=OVERRIDE_SOURCE,
                    key=here,
                )
            node = matches[0]
            continue
        if not isinstance(node, dict) or part not in node:
            keys = list(node) if isinstance(node, dict) else []
            raise RegistryError(f"unknown key{suggest(part, keys, 'keys')}", file=OVERRIDE_SOURCE, key=here)
        child = node[part]
        if not isinstance(child, (dict, list)):
            raise RegistryError(f"'{here}' is a value, not a table", file=OVERRIDE_SOURCE, key=here)
        node = child
    last = ".".join(parts[index:])
    if isinstance(node, list):
        raise RegistryError("address a list item by its entry name", file=OVERRIDE_SOURCE, key=dotted)
    if last == "use" or last == "name":
        raise RegistryError(
            f"'{last}' cannot be overridden; set the whole entry instead (e.g. --set defense=NAME)",
            file=OVERRIDE_SOURCE,
            key=dotted,
        )
    if last in RENAMED_KEYS:  # the old name of a key replaces the value under its current name (with a warning)
        node.pop(RENAMED_KEYS[last], None)
    node[last] = value  # a whole entry may be replaced by a name or inline table; re-resolution validates
