"""Resolution: `extends` chains merged, references between entries followed, every parameter validated against
its component; building components from resolved tables; load_registry, which reads every file in order."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from advbayes.errors import RegistryError
from advbayes.experiment import Experiment
from advbayes.params import (
    KINDS,
    ParamError,
    entry_kind,
    is_entry_list,
    old_names,
    parameter_fields,
    with_current_names,
)
from advbayes.plugins import PluginManager
from advbayes.registry.files import (
    MAX_NESTING,
    EntryTables,
    RawEntry,
    check_name,
    default_registry_path,
    read_registry_file,
    suggest,
)
from advbayes.registry.overrides import OVERRIDE_SOURCE, apply_override

RESERVED = ("use", "extends", "name")


def _toml_value(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_toml_value(v) for v in value]
    if isinstance(value, list):
        return [_toml_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _toml_value(v) for k, v in value.items() if v is not None}
    return value


class Registry(EntryTables):
    """The merged entries of every registry file, resolved and validated against the registered components."""

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
                body = self.merged_body(raw, chain=())
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
            body = self.merged_body(inline, chain=())
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
        renamed = old_names(fields)  # accepted here; construct renames them, with a warning
        params: dict[str, Any] = {}
        for key, value in body.items():
            if key in RESERVED:
                if key == "name":
                    if not isinstance(value, str):
                        raise RegistryError(f"expected a string, got {value!r}", file=file, entry=entry, key=key)
                    check_name(value, file=file, entry=entry, key=key)
                continue
            field = fields.get(key)
            if field is None and key not in renamed:
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
            value = own_defenses(spec, key, value)
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


def _check_unique_names(items: list[dict[str, Any]], *, file: str, entry: str, key: str) -> None:
    seen: set[str] = set()
    for item in items:
        if item["name"] in seen:
            raise RegistryError(
                f"'{item['name']}' appears twice; give inline tables distinct `name`s", file=file, entry=entry, key=key
            )
        seen.add(item["name"])


def construct(cls: type, params: Mapping[str, Any], *, file: str, entry: str) -> Any:
    """Construct an attrs component from parameters (renamed keys under their current names), turning validator
    errors into one-line registry errors that name the key as it was written."""
    written: dict[str, str] = {}
    try:
        current, written = with_current_names(cls, dict(params), where=f"{file}: {entry}")
        return cls(**current)
    except ParamError as exc:
        raise RegistryError(str(exc), file=file, entry=entry, key=written.get(exc.key, exc.key)) from None
    except (TypeError, ValueError) as exc:
        raise RegistryError(f"invalid parameters: {exc}", file=file, entry=entry) from None


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


def own_defenses(spec: Mapping[str, Any], key: str, value: Any) -> Any:
    """`defense=NAME` (or `defenses=[...]`) naming one of the experiment's own defenses picks that entry as the
    experiment configures it, not the registry entry of the same name: `--grid defense=adv-hvi` on
    hvi-vs-advbnn-mnist-5k had run the registry's adv-hvi, whose init_variance 0.1 the experiment overrides."""
    if key not in ("defense", "defenses"):
        return value
    own = {d["name"]: d for d in spec.get("defenses") or [] if isinstance(d, dict) and "name" in d}
    single = spec.get("defense")
    if isinstance(single, dict) and "name" in single:
        own.setdefault(single["name"], single)
    if isinstance(value, str):
        return dict(own[value]) if value in own else value
    if isinstance(value, list):
        return [dict(own[v]) if isinstance(v, str) and v in own else v for v in value]
    return value
