"""The plugin manager: built-in and entry-point plugins, and the index of the components they register."""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import attrs
import pluggy

from advbayes import hookspecs
from advbayes.errors import PluginError
from advbayes.params import KINDS

if TYPE_CHECKING:
    from advbayes.components import Component

ENTRY_POINT_GROUP = "advbayes"
BUILTIN_PLUGINS = ("advbayes.builtins", "advbayes.tracking")
LOAD_ENV = "ADVBAYES_LOAD_PLUGINS"
DISABLE_ENV = "ADVBAYES_DISABLE_PLUGINS"


class PluginLoadWarning(UserWarning):
    """A plugin failed to import and was skipped."""


@attrs.frozen
class PluginInfo:
    """Where a plugin comes from: its name, distribution and version."""

    name: str
    distribution: str
    version: str
    builtin: bool


@attrs.frozen
class PluginFailure:
    """A plugin that could not be loaded, with the error it raised."""

    name: str
    distribution: str
    error: str


@attrs.frozen
class Registration:
    """One registered component: kind, name, class and the plugin that registered it."""

    kind: str
    name: str
    cls: type[Component]
    plugin: str


class ComponentIndex:
    """All components registered by the loaded plugins, by kind and name."""

    def __init__(self) -> None:
        self._by_kind: dict[str, dict[str, Registration]] = {kind: {} for kind in KINDS}

    def add(self, registration: Registration) -> None:
        """Add a registration; a second plugin registering the same kind and name is an error naming both."""
        existing = self._by_kind[registration.kind].get(registration.name)
        if existing is not None and existing.cls is not registration.cls:
            raise PluginError(
                f"{registration.kind[:-1]} '{registration.name}' is registered by two plugins: "
                f"'{existing.plugin}' and '{registration.plugin}'; disable one with {DISABLE_ENV}"
            )
        self._by_kind[registration.kind][registration.name] = registration

    def get(self, kind: str, name: str) -> Registration | None:
        """The registration of `name` in `kind`, or None."""
        return self._by_kind[kind].get(name)

    def names(self, kind: str) -> list[str]:
        """Sorted names registered in `kind`."""
        return sorted(self._by_kind[kind])

    def drop_plugin(self, plugin: str) -> None:
        """Forget every component `plugin` registered."""
        for regs in self._by_kind.values():
            for name in [n for n, r in regs.items() if r.plugin == plugin]:
                del regs[name]

    def of_plugin(self, plugin: str) -> dict[str, list[str]]:
        """Component names that `plugin` registered, by kind (kinds with none left out)."""
        found: dict[str, list[str]] = {}
        for kind, regs in self._by_kind.items():
            names = sorted(n for n, r in regs.items() if r.plugin == plugin)
            if names:
                found[kind] = names
        return found


class PluginManager(pluggy.PluginManager):
    """pluggy's manager plus what advbayes knows of each plugin: origin, load failures, components."""

    def __init__(self) -> None:
        super().__init__("advbayes")
        self.add_hookspecs(hookspecs)
        self.info: dict[str, PluginInfo] = {}
        self.failures: list[PluginFailure] = []
        self.skipped: list[tuple[importlib.metadata.EntryPoint, str]] = []  # left out, with the variable that did
        self._index: ComponentIndex | None = None

    def register_plugin(self, plugin: Any, info: PluginInfo) -> None:
        """Register a plugin object with its origin."""
        self.register(plugin, name=info.name)
        self.info[info.name] = info
        self._index = None

    def unregister_plugin(self, name: str) -> None:
        """Unregister a plugin by name."""
        self.unregister(name=name)
        self.info.pop(name, None)
        self._index = None

    @property
    def components(self) -> ComponentIndex:
        """The component index, collected from the register_* hooks on first use."""
        if self._index is None:
            self._index = collect_components(self)
        return self._index

    def registry_paths(self) -> list[tuple[str, Path]]:
        """(plugin name, path) of every registry file the plugins contribute, in registration order."""
        paths: list[tuple[str, Path]] = []
        for impl in self.hook.registry_files.get_hookimpls():
            returned: Any = impl.function()
            for path in [returned] if isinstance(returned, (str, Path)) else returned or []:
                paths.append((impl.plugin_name, Path(path)))
        return paths

    def skipped_registry_paths(self) -> list[tuple[str, str, Path]]:
        """(plugin, the variable that left it out, path) of the registry files of installed plugins that
        ADVBAYES_DISABLE_PLUGINS or ADVBAYES_LOAD_PLUGINS left out, for error messages only."""
        found = []
        for entry_point, variable in self.skipped:
            try:  # plugin modules are cheap to import; one that fails to is simply not searched
                returned = getattr(entry_point.load(), "registry_files", lambda: None)()
            except Exception:  # noqa: BLE001 - this only adds a hint to an error that is raised anyway
                continue
            for path in [returned] if isinstance(returned, (str, Path)) else returned or []:
                found.append((entry_point.name, variable, Path(path)))
        return found

    def hooks_of(self, name: str) -> list[str]:
        """Names of the hooks that plugin `name` implements."""
        plugin = self.get_plugin(name)
        return sorted(caller.name for caller in self.get_hookcallers(plugin) or [])


def _call_register(pm: PluginManager, kind: str, index: ComponentIndex, failed: set[str]) -> None:
    from advbayes.components import BASES  # torch: only when components are asked for

    base = BASES[kind]
    hook = getattr(pm.hook, f"register_{kind}")
    # Call each implementation alone so every registration is attributed to its plugin.
    for impl in hook.get_hookimpls():
        plugin_name = impl.plugin_name
        if plugin_name in failed:
            continue

        def register(cls: Any, _plugin: str = plugin_name) -> None:
            if not (isinstance(cls, type) and issubclass(cls, base) and attrs.has(cls)):
                raise PluginError(
                    f"plugin '{_plugin}': register_{kind} expected an attrs subclass of "
                    f"advbayes.{base.__name__}, got {cls!r}"
                )
            if "__attrs_attrs__" not in vars(cls):  # attrs.has() is true through an attrs base class
                raise PluginError(
                    f"plugin '{_plugin}': {cls.__name__} is not an attrs class itself (decorate it with "
                    "@attrs.frozen(kw_only=True)); its fields would silently not be registry parameters"
                )
            component = cast("type[Component]", cls)
            if not isinstance(component.name, str) or not component.name:
                raise PluginError(f"plugin '{_plugin}': {cls.__name__} has no `name` to register it under")
            index.add(Registration(kind=kind, name=component.name, cls=component, plugin=_plugin))

        try:
            impl.function(register=register)
        except PluginError:
            raise
        except Exception as exc:  # plugins import their components here: a missing dependency shows up now
            info = pm.info.get(plugin_name)
            _record_failure(pm, plugin_name, info.distribution if info else "?", exc)
            failed.add(plugin_name)


def collect_components(pm: PluginManager) -> ComponentIndex:
    """Call every register_* hook and index what the plugins register; a plugin whose hook raises is reported
    as failed to load and none of its components is kept."""
    index = ComponentIndex()
    failed: set[str] = set()
    for kind in KINDS:
        _call_register(pm, kind, index, failed)
    for plugin in failed:
        index.drop_plugin(plugin)
    return index


def _record_failure(pm: PluginManager, name: str, distribution: str, exc: BaseException) -> None:
    failure = PluginFailure(name, distribution, f"{type(exc).__name__}: {exc}")
    pm.failures.append(failure)
    warnings.warn(
        f"plugin '{failure.name}' ({failure.distribution}) failed to load and was skipped: {failure.error}",
        PluginLoadWarning,
        stacklevel=3,
    )


def _split_env(value: str | None) -> set[str] | None:
    if value is None:
        return None
    return {part.strip() for part in value.split(",") if part.strip()}


def _selected(names: Iterable[str], load: set[str] | None, disable: set[str]) -> bool:
    names = set(names)
    if names & disable:
        return False
    return load is None or bool(names & load)


def load_builtin_plugins(pm: PluginManager, disable: set[str]) -> None:
    """Register the plugins that ship inside the core."""
    from advbayes.version import __version__

    for module_name in BUILTIN_PLUGINS:
        if module_name in disable:
            continue
        module = importlib.import_module(module_name)
        pm.register_plugin(module, PluginInfo(module_name, "advbayes", __version__, builtin=True))


def load_entry_point_plugins(pm: PluginManager, load: set[str] | None, disable: set[str]) -> None:
    """Import and register every plugin of the entry-point group; record failures and go on with the rest."""
    seen: set[str] = set()
    known: set[str] = set(BUILTIN_PLUGINS)
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry_point.name in seen:  # the same distribution can be on sys.path twice
            continue
        seen.add(entry_point.name)
        dist = entry_point.dist
        dist_name = dist.metadata["Name"] if dist is not None else "?"
        known |= {entry_point.name, dist_name}
        version = dist.version if dist is not None else "?"
        if not _selected((entry_point.name, dist_name), load, disable):
            pm.skipped.append((entry_point, DISABLE_ENV if {entry_point.name, dist_name} & disable else LOAD_ENV))
            continue
        try:
            plugin = entry_point.load()
        except Exception as exc:  # a broken plugin must not take the others down; it is reported by name
            _record_failure(pm, entry_point.name, dist_name, exc)
            continue
        if pm.is_registered(plugin):
            continue
        pm.register_plugin(plugin, PluginInfo(entry_point.name, dist_name, version, builtin=False))
    for variable, names in ((LOAD_ENV, load or set()), (DISABLE_ENV, disable)):
        unknown = sorted(names - known)
        if unknown:  # a misspelled name would silently select nothing
            warnings.warn(
                f"{variable} names no installed plugin: {', '.join(unknown)} (installed: {', '.join(sorted(known))})",
                PluginLoadWarning,
                stacklevel=2,
            )


def create_plugin_manager(entry_points: bool = True) -> PluginManager:
    """A new plugin manager with the built-ins and (unless disabled) the installed plugins."""
    pm = PluginManager()
    load = _split_env(os.environ.get(LOAD_ENV))
    disable = _split_env(os.environ.get(DISABLE_ENV)) or set()
    load_builtin_plugins(pm, disable)
    if entry_points:
        load_entry_point_plugins(pm, load, disable)
    return pm


_PM: PluginManager | None = None


def get_plugin_manager() -> PluginManager:
    """The process-wide plugin manager, created on first use."""
    global _PM
    if _PM is None:
        _PM = create_plugin_manager()
    return _PM


def reset_plugin_manager() -> None:
    """Forget the process-wide plugin manager, so the next use reloads plugins (for tests and the API)."""
    global _PM
    _PM = None
