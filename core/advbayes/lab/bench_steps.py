"""The runs of a bench as steps (per seed: train, twin, one per threat model), so that `advbayes bench --resume`
continues an interrupted bench: a finished step is read back from its run's checkpoint, an interrupted one resumed
from it, and only what never started runs anew. Hours of attacks are not lost to a closed laptop or a preempted job.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from advbayes.errors import RunError
from advbayes.lab.protocol import Protocol
from advbayes.results import RunResult

KEY_TAG = "advbayes.bench.key"  # what the bench is: entry, data set, protocol version and --set (a hash)
ID_TAG = "advbayes.bench.id"  # which bench: the runs of one bench and of the invocations that continued it
STEP_TAG = "advbayes.bench.step"  # which of its runs: "SEED/train", "SEED/twin" or "SEED/THREAT"
SECONDS_TAG = "advbayes.bench.seconds"  # the time the step took, summed over the processes that ran it


def bench_key(
    entry: str, protocol: Protocol, overrides: Sequence[tuple[str, Any]], changed: Mapping[str, Any] | None = None
) -> str:
    """The identity of a bench: its entry (or tracked run), data set, protocol version and settings, and the
    protocol's entries that registry files changed (lab.protocol.registry_changes), as they changed them."""
    what = [entry, protocol.dataset, protocol.version, [[key, value] for key, value in overrides]]
    what += [sorted(changed.items())] if changed else []  # absent when none: the keys of earlier benches stay
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


class BenchSteps:
    """The steps of one bench in a store: the earlier runs a resumed bench continues, and each step's time."""

    def __init__(self, experiment: str, key: str, label: str, uri: str | None, say: Callable[[str], None]) -> None:
        from advbayes.tracking.store import default_tracking_uri, normalize_uri

        self.experiment, self.key, self.label, self.say = experiment, key, label, say
        self.store: str = normalize_uri(uri or default_tracking_uri())
        self.bench_id = uuid.uuid4().hex[:12]
        self.earlier: dict[str, Any] = {}  # step -> the latest run of that step in the continued bench
        self.seconds = 0.0  # what earlier processes spent on the steps this bench reads back or resumes

    def start_new(self) -> None:
        """A new bench; a word when an earlier one of the same settings stopped before its card."""
        stopped = [r for r in self._runs() if r.info.status != "FINISHED"]
        if stopped:
            latest = max(stopped, key=lambda r: r.info.start_time)
            self.say(
                f"bench {self.label}: an earlier bench of these settings stopped before its card (run "
                f"{latest.info.run_id}, step {latest.data.tags.get(STEP_TAG)}, {latest.info.status}); --resume "
                "continues it. This one starts over."
            )

    def continue_earlier(self) -> None:
        """Take over the latest earlier bench of the same settings; refused in one line when there is none, or when
        its runs were made by other code than this process runs."""
        from advbayes.tracking.runs import code_differences, provenance

        runs = self._runs()
        if not runs:
            raise RunError(
                f"--resume: no earlier bench of {self.label} with these settings (data set, protocol, --set) in "
                f"store {self.store}: run it without --resume"
            )
        latest = max(runs, key=lambda r: r.info.start_time)
        self.bench_id = latest.data.tags[ID_TAG]
        mine, dirty = provenance(), None
        for found in (r for r in runs if r.data.tags[ID_TAG] == self.bench_id):
            differs = code_differences(found.data.tags, mine)
            if differs:  # the card names one commit: every number in it must come from that code
                k = differs[0]
                raise RunError(
                    f"--resume: run {found.info.run_id} (step {found.data.tags.get(STEP_TAG)}) has {k}="
                    f"{found.data.tags.get(k)!r}, this process {k}={mine.get(k)!r}: continue the bench from that "
                    "code, or bench again without --resume"
                )
            if found.data.tags.get("advbayes.git_dirty") == "true":
                dirty = found.info.run_id  # the commit is the same, but what was changed on top of it is not known
            step = found.data.tags.get(STEP_TAG, "")
            if step not in self.earlier or found.info.start_time > self.earlier[step].info.start_time:
                self.earlier[step] = found
        if dirty is not None:
            self.say(
                f"bench {self.label}: run {dirty} was made by a checkout with uncommitted changes, as this one is: "
                "that they are the same changes cannot be checked"
            )

    def run(self, seed: int, role: str, start: Callable[[], Any], common: Mapping[str, Any]) -> RunResult:
        """The step's result: read back when it finished earlier, resumed when it was interrupted after a
        checkpoint, otherwise `start`ed; its time is added to its run's SECONDS_TAG."""
        from advbayes.engine.lifecycle import replay, run
        from advbayes.tracking.runs import has_checkpoint

        found = self.earlier.get(f"{seed}/{role}")
        if found is not None and found.info.status == "FINISHED":
            run_id = found.info.run_id
            self.say(f"bench {self.label}: seed {seed}: {role}: run {run_id} finished earlier: read back")
            self.seconds += float(found.data.tags.get(SECONDS_TAG, 0.0))
            result = replay(run_id, **{k: common[k] for k in ("registry", "device", "tracking_uri")})
            result.store = self.store
            result.device = found.data.tags.get("advbayes.device", result.device)  # where it ran, for the card
            return result
        call, carried, earlier_seconds = start, None, 0.0
        if found is not None and has_checkpoint(self.client, found.info.run_id):
            carried, status = found.info.run_id, found.info.status
            self.say(f"bench {self.label}: seed {seed}: {role}: resuming run {carried} ({status})")
            earlier_seconds = float(found.data.tags.get(SECONDS_TAG, 0.0))
            call = functools.partial(run, resume=carried, **common)
        elif found is not None:  # stopped before its first checkpoint: nothing to continue from
            self.say(f"bench {self.label}: seed {seed}: {role}: run {found.info.run_id} kept no checkpoint: again")
        self.seconds += earlier_seconds
        began = time.perf_counter()
        try:
            result = call()
        except BaseException as exc:  # Ctrl-C or a failure: the time it ran counts when the step is resumed
            stopped = getattr(exc, "advbayes_run_id", None) or carried
            if stopped is not None:
                # a store that fails here must not hide the error that stopped the step, which is raised below
                with contextlib.suppress(Exception):
                    self._spent(stopped, earlier_seconds + time.perf_counter() - began)
            raise
        assert isinstance(result, RunResult)
        if result.run_id is not None:
            self._spent(result.run_id, earlier_seconds + time.perf_counter() - began)
        return result

    def _spent(self, run_id: str, seconds: float) -> None:
        """Record the step's time so far on its run."""
        self.client.set_tag(run_id, SECONDS_TAG, f"{seconds:.1f}")

    @functools.cached_property
    def client(self) -> Any:
        """The store's client, opened (and a sqlite store created) by the first step that writes."""
        from advbayes.tracking.store import client_for

        return client_for(self.store, write=True)

    def _runs(self) -> list[Any]:
        """The runs of benches with this key in the experiment (none when the store or the experiment is absent)."""
        from advbayes.tracking.store import sqlite_path

        database = sqlite_path(self.store)
        if database is not None and not database.exists():  # asking must not create a store
            return []
        found = self.client.get_experiment_by_name(self.experiment)
        if found is None:
            return []
        runs = self.client.search_runs([found.experiment_id], f"tags.`{KEY_TAG}` = '{self.key}'", max_results=5000)
        return [r for r in runs if ID_TAG in r.data.tags]
