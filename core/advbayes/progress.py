"""Progress on long work: a tqdm bar on a terminal, and without one (a log file, a batch job, CI) a plain line at
least every PROGRESS_SECONDS saying what runs, which batch, and the time left."""

from __future__ import annotations

import sys
import threading
import time
from typing import Any, TextIO

PROGRESS_SECONDS = 30.0  # the longest a job without a terminal stays silent


def clock_text(seconds: float) -> str:
    """Seconds as h:mm:ss or m:ss."""
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class LineProgress:
    """tqdm's interface (update, set_description, set_postfix_str, close) as one line every `every` seconds from a
    timer thread, so a batch that takes minutes still reports; nothing is printed for work shorter than that."""

    def __init__(
        self, total: int, unit: str, desc: str, every: float | None = None, stream: TextIO | None = None
    ) -> None:
        self.total, self.unit, self.desc = total, unit, desc
        self.every = PROGRESS_SECONDS if every is None else every
        self.stream = stream if stream is not None else sys.stderr
        self.n = 0
        self.batches = 0
        self.postfix = ""  # what the running batch is doing (a worst-case attack's sub-attack), when it says
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._timer = threading.Thread(target=self._report_until_closed, name="advbayes-progress", daemon=True)
        self._timer.start()

    def line(self) -> str:
        """What runs, the batch in progress, the items done and the time left at the rate so far."""
        elapsed = time.monotonic() - self.started
        left = f"about {clock_text(elapsed / self.n * (self.total - self.n))} left" if self.n else "time left unknown"
        share = f" ({100 * self.n / self.total:.0f} %)" if self.total else ""
        return (
            f"{self.desc}: batch {self.batches + 1}, {self.n}/{self.total} {self.unit}{share} done, "
            f"{clock_text(elapsed)} elapsed, {left}" + (f"; {self.postfix}" if self.postfix else "")
        )

    def _report_until_closed(self) -> None:
        while not self._stop.wait(self.every):
            print(self.line(), file=self.stream, flush=True)

    def update(self, n: int = 1) -> None:
        """n more items done (one batch)."""
        self.n += n
        self.batches += 1

    def set_description(self, desc: str, refresh: bool = True) -> None:
        """What runs now (the eps, the epoch)."""
        self.desc = desc

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        """What the running batch is doing, shown at the end of each line until it is cleared."""
        self.postfix = s

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the timer; no final line (the caller prints its own summary)."""
        self._stop.set()
        self._timer.join(timeout=self.every)


def on_terminal() -> bool:
    """Whether stderr is a terminal (a bar redraws in place there; anywhere else it would fill the log)."""
    return sys.stderr.isatty()


def progress_bar(total: int, unit: str, desc: str, *, enabled: bool, leave: bool = True) -> Any:
    """A tqdm bar on a terminal, LineProgress when stderr is not one, a silent bar when progress is off."""
    from tqdm.auto import tqdm

    if enabled and not on_terminal():
        return LineProgress(total, unit, desc)
    return tqdm(total=total, unit=unit, desc=desc, disable=not enabled, leave=leave, dynamic_ncols=True)
