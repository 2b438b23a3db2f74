"""registry.toml: named entries per kind, `extends`, references between entries, validation and overrides.

files: reading a file and the tables of raw entries; overrides: `--set KEY=VALUE`; resolution: the Registry that
resolves and builds entries, and load_registry.
"""

from advbayes.registry.files import (
    DISTRIBUTION,
    ENTRY_KINDS,
    MAX_NESTING,
    NAME,
    PROVIDERS,
    SWEEPS,
    EntryTables,
    RawEntry,
    check_name,
    default_registry_path,
    display_path,
    nesting_depth,
    parse_toml,
    read_registry_file,
    suggest,
    tomllib,
)
from advbayes.registry.overrides import OVERRIDE_SOURCE, apply_override, parse_override, split_key
from advbayes.registry.resolution import RESERVED, Registry, construct, load_registry

__all__ = [
    "DISTRIBUTION",
    "ENTRY_KINDS",
    "MAX_NESTING",
    "NAME",
    "OVERRIDE_SOURCE",
    "PROVIDERS",
    "RESERVED",
    "SWEEPS",
    "EntryTables",
    "RawEntry",
    "Registry",
    "apply_override",
    "check_name",
    "construct",
    "default_registry_path",
    "display_path",
    "load_registry",
    "nesting_depth",
    "parse_override",
    "parse_toml",
    "read_registry_file",
    "split_key",
    "suggest",
    "tomllib",
]
