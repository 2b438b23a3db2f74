"""registry.toml: named entries per kind, `extends`, references between entries, validation and overrides."""

from __future__ import annotations

import copy
import difflib
import importlib.resources
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from advbayes.errors import RegistryError
from advbayes.experiment import Experiment
from advbayes.params import KINDS, ParamError, entry_kind, is_entry_list, parameter_fields
from advbayes.plugins import PluginManager, get_plugin_manager

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ENTRY_KINDS = (*KINDS, "experiments")
PROVIDERS = "providers"
SWEEPS = "sweeps"  # [sweeps.NAME]: an experiment and a grid of overrides (advbayes sweep)
RESERVED = ("use", "extends", "name")
OVERRIDE_SOURCE = "--set"


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


def read_registry_file(path: Path) -> dict[str, Any]:
    """Parse one registry file; a syntax error names the file and line."""
    label = display_path(path)
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
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RegistryError(f"TOML syntax error: {exc}", file=file, key=key) from None
    except RecursionError:  # tomllib parses nested arrays and inline tables recursively
        raise RegistryError(f"values nested more than {MAX_NESTING} deep", file=file, key=key) from None
    except ValueError as exc:  # integers beyond Python's 4,300-digit conversion limit
        raise RegistryError(f"invalid value: {str(exc).split(';')[0]}", file=file, key=key) from None
    depth, where = nesting_depth(data)
    if depth > MAX_NESTING:
        raise RegistryError(f"values nested more than {MAX_NESTING} deep", file=file, key=key or where)
    return data


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


def _toml_value(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_toml_value(v) for v in value]
    if isinstance(value, list):
        return [_toml_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _toml_value(v) for k, v in value.items() if v is not None}
    return value


class Registry:
    """The merged entries of every registry file, resolved and validated against the registered components."""

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
        data = read_registry_file(path)
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
                _check_unquoted_dot(key, name, body, label)
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

    def resolve(self, kind: str, ref: Any, *, where: tuple[str, str, str]) -> dict[str, Any]:
        """Resolve a reference (entry name, component name or inline table) to a validated, complete table.

        `where` = (file, entry, key) of the place that refers to it, for error messages.
        """
        return self._resolve(kind, ref, where=where, chain=())

    def _resolve(self, kind: str, ref: Any, *, where: tuple[str, str, str], chain: tuple[str, ...]) -> dict[str, Any]:
        file, entry, key = where
        if isinstance(ref, str):
            raw = self.find(kind, ref)
            if raw is not None:
                body = self._merge_extends(raw, chain=())
                return self._complete(kind, ref, body, file=raw.file, chain=chain)
            if kind in KINDS and self.pm.components.get(kind, ref):
                return self._complete(kind, ref, {"use": ref}, file=file, chain=chain)
            if kind in KINDS and ref in self.providers:
                raise RegistryError(self._not_installed(kind, ref), file=file, entry=entry, key=key)
            hint = self._skipped_plugin_hint(kind, ref)
            raise RegistryError(
                f"unknown {kind[:-1]} '{ref}'{hint or suggest(ref, self._known(kind), 'known')}",
                file=file,
                entry=entry,
                key=key,
            )
        if isinstance(ref, dict):
            inline = RawEntry(kind, f"{entry}.{key}", ref, file)
            body = self._merge_extends(inline, chain=())
            name = body.get("name") or body.get("use") or ref.get("extends") or kind[:-1]
            return self._complete(kind, str(name), body, file=file, chain=chain, label=f"{entry}.{key}")
        raise RegistryError(
            f"expected the name of a {kind[:-1]} entry or an inline table, got {ref!r}", file=file, entry=entry, key=key
        )

    def _skipped_plugin_hint(self, kind: str, name: str) -> str:
        """'; plugin P has it, but VARIABLE leaves P out' when a left-out plugin's registry file holds the entry."""
        for plugin, variable, path in self.pm.skipped_registry_paths():
            try:
                data = read_registry_file(path)
            except RegistryError:  # a hint only; the error it would add to is raised anyway
                continue
            if isinstance(data.get(kind), dict) and name in data[kind]:
                return f"; the installed plugin '{plugin}' has it, but {variable} leaves that plugin out"
        return ""

    def _not_installed(self, kind: str, component: str) -> str:
        distribution = self.providers[component]
        claimed_by = self.untrusted_providers.get(component)
        if claimed_by is not None:
            return (
                f"{kind[:-1]} '{component}' is not installed; {claimed_by} says distribution '{distribution}' provides "
                "it (check that before installing anything)"
            )
        return (
            f"{kind[:-1]} '{component}' is not installed: it is provided by {distribution} (pip install {distribution})"
        )

    def _merge_extends(self, raw: RawEntry, chain: tuple[str, ...]) -> dict[str, Any]:
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
            merged.update({k: copy.deepcopy(v) for k, v in entry.body.items() if k != "extends"})
        return merged

    def component_class(self, kind: str, use: Any, *, file: str, entry: str) -> type:
        """The class an entry's `use` names; experiments are always Experiment."""
        if kind == "experiments":
            return Experiment
        if not isinstance(use, str):
            raise RegistryError(f"expected a component name, got {use!r}", file=file, entry=entry, key="use")
        registration = self.pm.components.get(kind, use)
        if registration is not None:
            return registration.cls
        if use in self.providers:
            raise RegistryError(self._not_installed(kind, use), file=file, entry=entry, key="use")
        failed = "; ".join(f"plugin '{f.name}' failed to load ({f.error})" for f in self.pm.failures)
        raise RegistryError(
            f"unknown {kind[:-1]} component '{use}'{suggest(use, self.pm.components.names(kind), 'registered')}"
            + (f" ({failed})" if failed else ""),
            file=file,
            entry=entry,
            key="use",
        )

    def _complete(
        self,
        kind: str,
        name: str,
        body: dict[str, Any],
        *,
        file: str,
        chain: tuple[str, ...],
        label: str | None = None,
    ) -> dict[str, Any]:
        """Validate a merged body against its component and return it with every parameter filled in."""
        entry = label or f"{kind}.{name}"
        if len(chain) > MAX_NESTING:
            raise RegistryError(
                f"entries refer to each other more than {MAX_NESTING} deep: {' -> '.join(chain[:3])} -> ...",
                file=file,
                entry=entry,
            )
        if entry in chain:
            raise RegistryError(f"entries refer to each other in a cycle: {' -> '.join((*chain, entry))}", file=file)
        if kind == "experiments" and "use" in body:
            raise RegistryError("experiments have no 'use'", file=file, entry=entry, key="use")
        use = body.get("use", name) if kind != "experiments" else None
        cls = self.component_class(kind, use, file=file, entry=entry)
        fields = parameter_fields(cls)
        params: dict[str, Any] = {}
        for key, value in body.items():
            if key in RESERVED:
                if key == "name":
                    if not isinstance(value, str):
                        raise RegistryError(f"expected a string, got {value!r}", file=file, entry=entry, key=key)
                    check_name(value, file=file, entry=entry, key=key)
                continue
            field = fields.get(key)
            if field is None:
                what = f"parameters of {kind[:-1]} '{use}'" if use else "experiment keys"
                raise RegistryError(f"unknown key{suggest(key, fields, what)}", file=file, entry=entry, key=key)
            params[key] = value
        instance = construct(cls, params, file=file, entry=entry)
        resolved: dict[str, Any] = {"name": name}
        if use is not None:
            resolved["use"] = use
        for key, field in fields.items():
            value = getattr(instance, key)
            target = entry_kind(field)
            if target is not None and value is not None:
                where = (file, entry, key)
                if is_entry_list(field):
                    value = [self._resolve(target, item, where=where, chain=(*chain, entry)) for item in value]
                    _check_unique_names(value, file=file, entry=entry, key=key)
                else:
                    value = self._resolve(target, value, where=where, chain=(*chain, entry))
            resolved[key] = _toml_value(value)
        return {k: v for k, v in resolved.items() if v is not None}

    # ---------------------------------------------------------------------------------------- experiments

    def resolve_experiment(self, name: str, overrides: Sequence[tuple[str, Any]] = ()) -> dict[str, Any]:
        """The fully resolved experiment `name` with dotted-key overrides applied and validated."""
        if name not in self.entries["experiments"]:
            hint = self._skipped_plugin_hint("experiments", name)
            raise RegistryError(
                f"unknown experiment '{name}'{hint or suggest(name, self.names('experiments'), 'experiments')}"
            )
        raw = self.entries["experiments"][name]
        resolved = self._resolve("experiments", name, where=(raw.file, f"experiments.{name}", ""), chain=())
        return self.with_overrides(resolved, overrides, source=OVERRIDE_SOURCE)

    def with_overrides(
        self, spec: dict[str, Any], overrides: Sequence[tuple[str, Any]], *, source: str
    ) -> dict[str, Any]:
        """A resolved experiment with dotted-key overrides applied in order, then validated. A key that reaches
        into an entry an earlier override replaced (`defense=gauss` then `defense.sigma=0.2`) finds it resolved."""
        if not overrides:
            return spec
        for key, value in overrides:
            for one, other in (("defense", "defenses"), ("defenses", "defense")):
                if key == one:  # `--set defenses=[a, b]` on an experiment of one defense replaces it (and back)
                    spec.pop(other, None)
            try:
                apply_override(spec, key, value)
            except RegistryError:
                spec = self.resolve_inline_experiment(spec, source=source)  # expand what earlier overrides set
                apply_override(spec, key, value)
        return self.resolve_inline_experiment(spec, source=source)

    def resolve_inline_experiment(self, table: dict[str, Any], source: str) -> dict[str, Any]:
        """Resolve an experiment given as a table (overridden, or stored with a tracked run)."""
        name = str(table.get("name", "experiment"))
        body = dict(table)
        return self._complete("experiments", name, body, file=source, chain=())

    def build(self, kind: str, resolved: Mapping[str, Any]) -> Any:
        """Construct the component (or Experiment) of a resolved table."""
        cls = (
            Experiment
            if kind == "experiments"
            else self.component_class(kind, resolved.get("use"), file="resolved", entry=str(resolved.get("name")))
        )
        params = {k: v for k, v in resolved.items() if k not in RESERVED}
        return construct(cls, params, file="resolved", entry=f"{kind}.{resolved.get('name')}")

    def build_attack(self, entry: Any, *, where: tuple[str, str, str], value_range: tuple[float, float]) -> Any:
        """An attack from an entry name or table (a resolved table is built as it is), clamping to `value_range`:
        how the engine and the Python API build the attacks a composite attack or a metric asks for."""
        resolved = entry if isinstance(entry, dict) and "use" in entry else self.resolve("attacks", entry, where=where)
        return attrs.evolve(self.build("attacks", resolved), value_range=value_range)


def _check_unquoted_dot(kind: str, name: str, body: dict[str, Any], file: str) -> None:
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


def _check_unique_names(items: list[dict[str, Any]], *, file: str, entry: str, key: str) -> None:
    seen: set[str] = set()
    for item in items:
        if item["name"] in seen:
            raise RegistryError(
                f"'{item['name']}' appears twice; give inline tables distinct `name`s", file=file, entry=entry, key=key
            )
        seen.add(item["name"])


def construct(cls: type, params: Mapping[str, Any], *, file: str, entry: str) -> Any:
    """Construct an attrs component from parameters, turning validator errors into one-line registry errors."""
    try:
        return cls(**params)
    except ParamError as exc:
        raise RegistryError(str(exc), file=file, entry=entry, key=exc.key) from None
    except (TypeError, ValueError) as exc:
        raise RegistryError(f"invalid parameters: {exc}", file=file, entry=entry) from None


def parse_override(text: str) -> tuple[str, Any]:
    """Parse 'dotted.key=value' with the value read as TOML (a bare word is a string)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise RegistryError(f"expected KEY=VALUE, got {text!r}", file=OVERRIDE_SOURCE)
    raw = raw.strip()
    try:
        tomllib.loads(f"value = {raw}")
    except tomllib.TOMLDecodeError:
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
    node[last] = value  # a whole entry may be replaced by a name or inline table; re-resolution validates


def load_registry(
    extra: Sequence[os.PathLike[str] | str] = (),
    *,
    pm: PluginManager | None = None,
    include_cwd: bool = True,
) -> Registry:
    """The default registry, plugin registry files, ./registry.toml and each extra file, later winning."""
    registry = Registry(pm)
    seen: set[Path] = set()
    sources = [(default_registry_path(), True)]
    sources += [(path, True) for _plugin, path in registry.pm.registry_paths()]
    if include_cwd:
        local = Path("registry.toml")
        if local.is_file():
            sources.append((local, False))
    for path, trusted in sources:
        real = path.resolve()
        if real in seen:
            continue
        seen.add(real)
        registry.add_file(path, trusted=trusted)
    for given in extra:
        path = Path(given)
        if not path.is_file():
            raise RegistryError("no such registry file", file=str(path))
        registry.add_file(path)
    return registry
