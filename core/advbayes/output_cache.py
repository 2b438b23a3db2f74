"""The cached answers of the read-only commands `list` and `show`.

Both validate every registry entry against the registered components, which imports torch and every
plugin's modules (about 4 s on a laptop-class CPU). Their answer changes only when code, a registry file, the
installed packages or the plugin selection change, so it is kept, keyed on all of those (files by the hash of
their contents, never by mtime or by how an argument spells them), and printed again in milliseconds. A command
that failed or wrote to stderr (a warning) is never kept.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import io
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

CACHED_COMMANDS = ("list", "show")
CACHE_ENV = "ADVBAYES_CACHE_DIR"
NO_CACHE_ENV = "ADVBAYES_NO_CACHE"
MAX_ENTRIES = 200  # answers kept; the oldest go first
_CODE_SUFFIXES = (".py", ".toml", ".pth")


SITE_DIRECTORIES = ("site-packages", "dist-packages")


def cache_dir() -> Path:
    """ADVBAYES_CACHE_DIR, else $XDG_CACHE_HOME/advbayes, else ~/.cache/advbayes."""
    given = os.environ.get(CACHE_ENV)
    if given:
        return Path(given)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "advbayes"


def _stat_line(path: Path) -> str:
    """A directory's identity: its mtime changes when a distribution is installed into it or removed from it."""
    try:
        st = path.stat()
    except OSError:
        return f"{path} absent"
    return f"{path} {st.st_mtime_ns} {st.st_size}"


def _content_line(path: Path) -> str:
    """A file's identity by its contents: an edit that keeps size and mtime (cp -p, touch -r) still changes it."""
    try:
        return f"{path} {hashlib.sha256(path.read_bytes()).hexdigest()}"
    except OSError:  # absent, a directory, a name too long for the system: nothing to read
        return f"{path} absent"


def _named_files(args: Sequence[str]) -> list[Path]:
    """Every argument that names a file, in either spelling (`--registry x.toml`, `--registry=x.toml`)."""
    found = []
    for arg in args:
        for candidate in {arg, arg.partition("=")[2]} - {""}:
            try:
                if Path(candidate).is_file():
                    found.append(Path(candidate).resolve())
            except (OSError, ValueError):  # ENAMETOOLONG, a NUL byte: not a file
                continue
    return found


def _package_files(module: str) -> Iterator[Path]:
    """Every code or registry file of the top-level package `module`, found without importing it."""
    spec = importlib.util.find_spec(module.split(".")[0])
    if spec is None:
        return
    roots = list(spec.submodule_search_locations or []) or ([spec.origin] if spec.origin else [])
    for root in map(Path, roots):
        if root.is_file():
            yield root
            continue
        for path in sorted(root.rglob("*")):
            if path.suffix in _CODE_SUFFIXES and "__pycache__" not in path.parts:
                yield path


def cache_key(args: Sequence[str]) -> str | None:
    """The key of the answer to `advbayes ARGS`, or None when that command's answer is not cached."""
    if not args or args[0] not in CACHED_COMMANDS or os.environ.get(NO_CACHE_ENV):
        return None
    if any(a in ("--help", "-h", "--debug") for a in args) or "_ADVBAYES_COMPLETE" in os.environ:
        return None
    from advbayes.plugins import ENTRY_POINT_GROUP, get_plugin_manager
    from advbayes.version import __version__

    lines = [sys.executable, __version__, repr(list(args)), os.getcwd()]
    lines += sorted(f"{k}={v}" for k, v in os.environ.items() if k.startswith("ADVBAYES_"))
    # A site directory's mtime changes when a distribution is installed into it or removed from it. Other path
    # entries (an editable install's source folder) are left out: their modules are hashed below, and their mtime
    # moves with any file written beside them, which made the key change between two identical calls.
    lines += [_stat_line(Path(entry)) for entry in sys.path if Path(entry).name in SITE_DIRECTORIES]
    modules = ["advbayes"]
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        version = entry_point.dist.version if entry_point.dist is not None else "?"
        lines.append(f"{entry_point.name}={entry_point.value} {version}")
        modules.append(entry_point.module)
    for module in sorted(set(modules)):
        lines += [_content_line(path) for path in _package_files(module)]
    # Registry files: the plugins' (loading plugins is cheap: they import their components only when asked),
    # ./registry.toml, and every argument that names a file (--registry).
    lines += [_content_line(path.resolve()) for _plugin, path in get_plugin_manager().registry_paths()]
    lines.append(_content_line(Path("registry.toml").resolve()))
    lines += [_content_line(path) for path in _named_files(args)]
    return hashlib.sha256("\n".join(lines).encode("utf-8", "surrogateescape")).hexdigest()


def read(key: str) -> str | None:
    """The kept answer for `key`, or None."""
    try:
        return (cache_dir() / f"{key}.out").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def write(key: str, text: str) -> None:
    """Keep `text` as the answer for `key` (atomically; a cache that cannot be written is skipped silently,
    since the command's answer has been printed already and the cache only saves time)."""
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, scratch = tempfile.mkstemp(dir=folder, prefix=".writing-")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(scratch, folder / f"{key}.out")
        kept = sorted(folder.glob("*.out"), key=lambda p: p.stat().st_mtime)
        for old in kept[:-MAX_ENTRIES]:
            old.unlink(missing_ok=True)
    except OSError:
        return


class _WatchedStream(io.TextIOBase):
    """Passes writes on to `target` and remembers whether anything was written."""

    def __init__(self, target: TextIO) -> None:
        self.target = target
        self.written = False

    def write(self, text: str) -> int:
        self.written = self.written or bool(text)
        return self.target.write(text)

    def flush(self) -> None:
        self.target.flush()

    def isatty(self) -> bool:
        return self.target.isatty()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.target, "encoding", "utf-8")


@contextlib.contextmanager
def recording(key: str) -> Iterator[None]:
    """Run the command inside: its stdout is printed when it ends and kept when it exits 0 with a silent stderr."""
    captured = io.StringIO()
    stdout, stderr = sys.stdout, _WatchedStream(sys.stderr)
    code: Any = 1
    try:
        with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(stderr):
            yield
        code = 0
    except SystemExit as exc:  # click's standalone mode always ends with sys.exit
        code = exc.code
        raise
    finally:
        text = captured.getvalue()
        stdout.write(text)
        stdout.flush()
        if code in (0, None) and not stderr.written:
            write(key, text)
