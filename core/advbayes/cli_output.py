"""What the command line prints and how it ends: one-line errors, advbayes's warnings, and the process exit."""

from __future__ import annotations

import atexit
import os
import shlex
import signal
import sys
import threading
import warnings
from collections.abc import Sequence
from typing import Any

import click

from advbayes.errors import EvaluationWarning, ProvenanceWarning

MAX_ERROR = 1000  # characters of an error line; a multi-megabyte key is not echoed whole


def one_line(text: str) -> str:
    """The message as exactly one printable line: control characters escaped (a key holding a newline cannot
    forge a second line), cut at MAX_ERROR characters."""
    escaped = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)
    return escaped if len(escaped) <= MAX_ERROR else escaped[: MAX_ERROR - 30] + f"... ({len(escaped)} characters)"


def interruption_lines(exc: BaseException, given: list[str]) -> list[str]:
    """What an interrupted command prints: how to go on with the run it was in (resume it, or start it again when it
    had no checkpoint yet) and, for an experiment of several runs, how to run those that had not started."""
    run_id = getattr(exc, "advbayes_run_id", None)
    if getattr(exc, "advbayes_sweep", None):  # a sweep: its runs are continued by its own --resume
        return [f"Interrupted: {exc.advbayes_sweep}"]  # type: ignore[attr-defined]
    if getattr(exc, "advbayes_bench", False):  # the bench, not its one run, is what the user goes on with
        again = shlex.join(["advbayes", *given, *([] if "--resume" in given else ["--resume"])])
        return [f"Interrupted: the bench's finished runs and checkpoints are kept; go on: {again}"]
    if run_id and getattr(exc, "advbayes_checkpointed", True):
        lines = [f"Interrupted: tracked run {run_id} is marked KILLED; resume it with --resume {run_id}"]
    elif run_id:  # nothing to resume from: say how to start it again
        lines = [
            f"Interrupted: tracked run {run_id} is marked KILLED before its first checkpoint, so there is nothing to "
            f"resume; run it again: {shlex.join(['advbayes', *given])}"
        ]
    else:
        lines = ["Interrupted: no tracked run was open"]
    not_started = getattr(exc, "advbayes_not_started", [])
    if not_started:
        lines.append(f"{len(not_started)} run(s) of the experiment had not started; run them with:")
        begun = getattr(exc, "advbayes_seed", None)
        lines += [f"  {shlex.join(['advbayes', *given, *more])}" for more in not_started_settings(not_started, begun)]
    return lines


def not_started_settings(variants: Sequence[tuple[int, str]], begun: int | None) -> list[list[str]]:
    """The --set arguments that run the (seed, defense) pairs of an experiment that had not started: one command per
    defense of seed `begun` (the interrupted run's), one for all the seeds none of whose runs had started."""
    commands = [
        ["--set", f"seeds=[{seed}]", "--set", f"defense={defense}"] for seed, defense in variants if seed == begun
    ]
    whole = list(dict.fromkeys(seed for seed, _ in variants if seed != begun))
    if whole:
        commands.append(["--set", f"seeds=[{', '.join(str(seed) for seed in whole)}]"])
    return commands


def show_warning(
    message: Any, category: type[Warning], filename: str, lineno: int, file: Any = None, line: Any = None
) -> None:
    """warnings.showwarning for commands: advbayes's own warnings as one `advbayes: warning:` line."""
    from advbayes.plugins import PluginLoadWarning

    if issubclass(category, (PluginLoadWarning, EvaluationWarning, ProvenanceWarning)):
        click.echo(f"advbayes: warning: {message}", err=True)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


_default_showwarning = warnings.showwarning


def exit_now(code: object) -> None:
    """End the process once the command is done, without Python's teardown of every module it imported: with torch,
    MLflow and matplotlib loaded that teardown alone took 1.6 CPU-s after the last line was printed. What an exit
    must do still happens: the atexit handlers run (MLflow's, logging's, temporary folders', Ray's) and stdout and
    stderr are flushed. While any non-daemon thread still runs, the process exits the ordinary way, which waits
    for it."""
    if isinstance(code, bool) or not isinstance(code, int):  # SystemExit's own rules: None is 0, text is printed
        if code is not None:
            print(code, file=sys.stderr)
        code = 0 if code is None else 1
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (advbayes list | head): nothing more can be written anyway
            pass
    os._exit(code & 0xFF)


class Terminated(KeyboardInterrupt):
    """SIGTERM, as a scheduler, `docker stop` or `kill` sends it, delivered as an interruption (exit status 143)."""

    received = False  # set by the handler: Ray's wait re-raises the interruption as a plain KeyboardInterrupt


def exit_status(exc: KeyboardInterrupt) -> int:
    """128 + the signal that interrupted the command, as shells report it: 143 for SIGTERM, 130 for Ctrl-C."""
    return 143 if isinstance(exc, Terminated) or Terminated.received else 130


def stop_on_sigterm() -> None:
    """End the command on SIGTERM as on Ctrl-C: its tracked run is marked KILLED, a bench keeps its time, and the
    way to go on is printed (Python's default would end the process at once, the run left RUNNING). A second
    SIGTERM ends it at once."""

    def terminate(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        Terminated.received = True
        raise Terminated()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, terminate)
