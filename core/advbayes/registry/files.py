"""Registry files: reading TOML safely, entry names, and the tables of raw entries every file adds to."""

from __future__ import annotations

import copy
import datetime
import difflib
import functools
import importlib.resources
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs

from advbayes.errors import RegistryError
from advbayes.params import KINDS, RENAMED_KEYS
from advbayes.plugins import PluginManager, get_plugin_manager

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ENTRY_KINDS = (*KINDS, "experiments")
PROVIDERS = "providers"
SWEEPS = "sweeps"  # [sweeps.NAME]: an experiment and a grid of overrides (advbayes sweep)


@attrs.frozen
class RawEntry:
    """An entry as written in one registry file, before `extends` and references are resolved."""

    kind: str
    name: str
    body: Mapping[str, Any]
    file: str


def display_path(path: Path) -> str:
    """A path as error messages show it: relative to the working directory when below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def default_registry_path() -> Path:
    """The project's default registry, shipped inside the advbayes package."""
    return Path(str(importlib.resources.files("advbayes") / "registry.toml"))


MAX_NESTING = 32  # tables and arrays inside each other; deeper is not a registry an advbayes run can use


def read_registry_file(path: Path, *, label: str | None = None) -> dict[str, Any]:
    """Parse one registry file; a syntax error names the file (as `label`, else its display path) and line."""
    label = label or display_path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RegistryError(f"cannot read registry file: {exc.strerror}", file=label) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise RegistryError(
            f"not UTF-8 text: byte 0x{data[exc.start]:02x} at line {line} cannot be decoded (TOML files are UTF-8)",
            file=label,
        ) from None
    return parse_toml(text, file=label)


def parse_toml(text: str, *, file: str, key: str | None = None) -> dict[str, Any]:
    """TOML text as a table; syntax errors, huge integers and absurd nesting are one-line registry errors."""
    try:
        data, (depth, where) = parsed_table(text)
    except tomllib.TOMLDecodeError as exc:
        raise RegistryError(f"TOML syntax error: {exc}", file=file, key=key) from None
    except RecursionError:  # tomllib parses nested arrays and inline tables recursively
        raise RegistryError(f"values nested more than {MAX_NESTING} deep", file=file, key=key) from None
    except ValueError as exc:  # integers beyond Python's 4,300-digit conversion limit
        raise RegistryError(f"invalid value: {str(exc).split(';')[0]}", file=file, key=key) from None
    if depth > MAX_NESTING:
        raise RegistryError(f"values nested more than {MAX_NESTING} deep", file=file, key=key or where)
    return copied(data)  # the cached table stays as parsed whatever the caller does with its copy


# Every run, --set check and registry command reads all eight shipped registry files again, and parsing them was
# 12 of a --set check's 21 ms in-process; the same text always parses to the same table, so a table is kept per text
# (a failed parse raises every time: lru_cache keeps no exception).
@functools.lru_cache(maxsize=64)
def parsed_table(text: str) -> tuple[dict[str, Any], tuple[int, str]]:
    """tomllib's table of `text` and its nesting depth (nesting_depth), cached per text; callers copy the table."""
    data = tomllib.loads(text)
    return data, nesting_depth(data)


IMMUTABLE_LEAVES = (str, int, float, bool, type(None), datetime.date, datetime.time)  # TOML's (datetime a date)


def copied(value: Any) -> Any:
    """What copy.deepcopy gives for a registry value in half its time (0.47 vs 1.00 ms for the shipped files):
    tables and arrays copied, immutable leaves (every TOML leaf) shared, anything else (an API caller's) deep-copied."""
    if isinstance(value, dict):
        return {key: copied(item) for key, item in value.items()}
    if isinstance(value, list):
        return [copied(item) for item in value]
    return value if isinstance(value, IMMUTABLE_LEAVES) else copy.deepcopy(value)


def nesting_depth(value: Any) -> tuple[int, str]:
    """How deep tables and arrays nest in `value`, and the dotted key of the deepest place (iterative: no recursion)."""
    deepest, where = 0, ""
    stack: list[tuple[Any, int, str]] = [(value, 0, "")]
    while stack:
        node, depth, path = stack.pop()
        if depth > deepest:
            deepest, where = depth, path
        if depth > MAX_NESTING:
            continue  # deep enough to refuse; walking further only costs time
        if isinstance(node, dict):
            stack.extend((v, depth + 1, f"{path}.{k}" if path else str(k)) for k, v in node.items())
        elif isinstance(node, list):
            stack.extend((v, depth + 1, path) for v in node)
    return deepest, where


DISTRIBUTION = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,98}[A-Za-z0-9])?")  # PEP 508 names
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,199}")  # names become MLflow run names, metric keys and folders


def check_name(name: str, *, file: str, entry: str, key: str | None = None) -> None:
    """Entry names are safe path parts and metric-key parts: letters, digits, `_ . + -`, not starting with `.`."""
    if not NAME.fullmatch(name):
        shown = name if len(name) <= 60 else name[:57] + "..."
        raise RegistryError(
            f"invalid name {shown!r}: expected letters, digits and _ . + - (starting with a letter or digit, at most "
            "200 characters)",
            file=file,
            entry=None if key is None else entry,
            key=key,
        )


def suggest(name: str, candidates: Iterable[str], what: str) -> str:
    """'did you mean ...?' plus the list of what exists."""
    candidates = sorted(set(candidates))
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    listing = ", ".join(candidates) if candidates else "none"
    return f"{hint} {what}: {listing}"


def check_unquoted_dot(kind: str, name: str, body: dict[str, Any], file: str) -> None:
    """`[defenses.gauss-noise-0.1]` is TOML for an entry `gauss-noise-0` holding a table `1`, not an entry
    `gauss-noise-0.1`. No parameter name starts with a digit, so such a table is always this mistake."""
    for key, value in body.items():
        if key[:1].isdigit() and isinstance(value, dict):
            raise RegistryError(
                f"[{kind}.{name}.{key}] is an entry '{name}' with a table '{key}'; a name that holds a dot is quoted: "
                f'[{kind}."{name}.{key}"]',
                file=file,
                entry=f"{kind}.{name}",
            )


class EntryTables:
    """The raw entries of every registry file loaded so far, by kind and name, and who provides which component."""

    def __init__(self, pm: PluginManager | None = None) -> None:
        self.pm = pm or get_plugin_manager()
        self.entries: dict[str, dict[str, RawEntry]] = {kind: {} for kind in ENTRY_KINDS}
        self.providers: dict[str, str] = {}
        self.untrusted_providers: dict[str, str] = {}  # component -> the local file that named its distribution
        self.sweeps: dict[str, RawEntry] = {}  # checked when a sweep is planned (advbayes.sweep)
        self.files: list[str] = []

    # ---------------------------------------------------------------------------------------- loading

    def add_file(self, path: Path, *, trusted: bool = False) -> None:
        """Merge one registry file over what is loaded (a later entry of the same kind and name wins).

        `trusted` files (the default registry, installed plugins') may name distributions to `pip install`; a local
        file's [providers] are shown as its claim, never as an install command.
        """
        label = display_path(path)
        data = read_registry_file(path, label=label)
        self.files.append(label)
        for key, table in data.items():
            if key == PROVIDERS:
                self._add_providers(table, label, trusted)
                continue
            if key not in ENTRY_KINDS and key != SWEEPS:
                raise RegistryError(
                    f"unknown table [{key}]{suggest(key, (*ENTRY_KINDS, PROVIDERS, SWEEPS), 'tables are')}",
                    file=label,
                    key=key,
                )
            if not isinstance(table, dict):
                raise RegistryError(f"[{key}] must be a table of named entries", file=label, key=key)
            for name, body in table.items():
                check_name(name, file=label, entry=f"{key}.{name}")
                if not isinstance(body, dict):
                    raise RegistryError(
                        f"expected a table of parameters, got {body!r}", file=label, entry=f"{key}.{name}"
                    )
                check_unquoted_dot(key, name, body, label)
                if key == SWEEPS:
                    self.sweeps[name] = RawEntry(key, name, body, label)
                else:
                    self.entries[key][name] = RawEntry(key, name, body, label)

    def _add_providers(self, table: Any, label: str, trusted: bool) -> None:
        if not isinstance(table, dict):
            raise RegistryError("[providers] maps a distribution to the component names it provides", file=label)
        for distribution, names in table.items():
            if not DISTRIBUTION.fullmatch(distribution):
                raise RegistryError(
                    f"invalid distribution name {distribution[:60]!r} (letters, digits, . _ -)",
                    file=label,
                    key="providers",
                )
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise RegistryError("expected a list of component names", file=label, key=f"providers.{distribution}")
            for name in names:
                self.providers[name] = distribution
                if trusted:
                    self.untrusted_providers.pop(name, None)
                else:
                    self.untrusted_providers[name] = label

    # ---------------------------------------------------------------------------------------- lookup

    def find(self, kind: str, name: str) -> RawEntry | None:
        """The raw entry `name` of `kind`, or None."""
        return self.entries[kind].get(name)

    def names(self, kind: str) -> list[str]:
        """Entry names of `kind`, sorted."""
        return sorted(self.entries[kind])

    def locate(self, ref: str) -> tuple[str, str]:
        """Find (kind, name) for 'kind.name' or a bare name (experiments first, then entries, then components)."""
        if "." in ref:
            kind, _, name = ref.partition(".")
            if kind in ENTRY_KINDS:
                if name in self.entries[kind] or (kind in KINDS and self.pm.components.get(kind, name)):
                    return kind, name
                raise RegistryError(f"unknown {kind[:-1]} '{name}'{suggest(name, self._known(kind), 'known')}")
        hits = [kind for kind in ENTRY_KINDS if ref in self.entries[kind]]
        hits += [k for k in KINDS if k not in hits and self.pm.components.get(k, ref)]
        if not hits:
            everything = [n for kind in ENTRY_KINDS for n in self._known(kind)]
            raise RegistryError(f"unknown entry '{ref}'{suggest(ref, everything, 'known entries')}")
        if len(hits) > 1 and "experiments" not in hits:
            options = ", ".join(f"{k}.{ref}" for k in hits)
            raise RegistryError(f"'{ref}' names entries of several kinds; say which: {options}")
        return hits[0], ref

    def _known(self, kind: str) -> list[str]:
        names = set(self.entries[kind])
        if kind in KINDS:
            names |= set(self.pm.components.names(kind))
        return sorted(names)

    # ---------------------------------------------------------------------------------------- resolution

    def merged_body(self, raw: RawEntry, chain: tuple[str, ...]) -> dict[str, Any]:
        """The entry's body with its `extends` chain merged under it (the entry's own keys win).

        Walked as a loop, not by recursion: a chain of any length resolves or names its cycle.
        """
        lineage: list[RawEntry] = []
        seen: list[str] = list(chain)
        current = raw
        while True:
            label = f"{current.kind}.{current.name}"
            if current.name in seen:
                cycle = " -> ".join((*seen, current.name))
                raise RegistryError(f"cycle in extends: {cycle}", file=current.file, entry=label, key="extends")
            seen.append(current.name)
            lineage.append(current)
            parent_name = current.body.get("extends")
            if parent_name is None:
                break
            if not isinstance(parent_name, str):
                raise RegistryError(
                    f"expected the name of a {current.kind[:-1]} entry, got {parent_name!r}",
                    file=current.file,
                    entry=label,
                    key="extends",
                )
            parent = self.find(current.kind, parent_name)
            if parent is None:
                raise RegistryError(
                    f"extends unknown {current.kind[:-1]} entry '{parent_name}'"
                    f"{suggest(parent_name, self.names(current.kind), 'entries')}",
                    file=current.file,
                    entry=label,
                    key="extends",
                )
            current = parent
        merged: dict[str, Any] = {}
        for entry in reversed(lineage):  # the root first, so each child's own keys win
            for old, new in RENAMED_KEYS.items():  # under either of a renamed key's names
                if old in entry.body or new in entry.body:
                    merged.pop(old, None)
                    merged.pop(new, None)
            merged.update({k: copied(v) for k, v in entry.body.items() if k != "extends"})
        return merged
