"""Progress without a terminal: a line at least every PROGRESS_SECONDS with what runs, the batch and the time left."""

from __future__ import annotations

import io
import re
import time

import pytest

import advbayes
import advbayes.progress
from advbayes.progress import LineProgress, clock_text


def test_clock_text_reads_as_minutes_and_hours() -> None:
    assert [clock_text(s) for s in (0, 59.6, 61, 3600 + 62)] == ["0:00", "1:00", "1:01", "1:01:02"]


def test_a_line_comes_every_period_even_while_one_batch_runs_and_none_after_close() -> None:
    out = io.StringIO()
    with LineProgress(total=100, unit="img", desc="quickstart/standard pgd-20 eps 0.1", every=0.05, stream=out) as bar:
        bar.update(25)  # one batch of 25 done; the second one runs for a while
        time.sleep(0.3)
    lines = out.getvalue().splitlines()
    assert len(lines) >= 3  # several lines while no batch finished: the timer reports, not the update
    pattern = r"^quickstart/standard pgd-20 eps 0.1: batch 2, 25/100 img \(25 %\) done, 0:00 elapsed, about 0:0\d left$"
    assert all(re.match(pattern, line) for line in lines), lines
    time.sleep(0.15)
    assert out.getvalue().splitlines() == lines  # closed: silent


def test_what_a_batch_is_doing_ends_each_line_until_it_is_cleared() -> None:
    bar = LineProgress(total=512, unit="img", desc="d", every=3600, stream=io.StringIO())
    try:
        bar.set_postfix_str("square (4/4) on the 187 of 256 examples still robust")
        assert bar.line() == (
            "d: batch 1, 0/512 img (0 %) done, 0:00 elapsed, time left unknown; square (4/4) on the 187 of 256 "
            "examples still robust"
        )
        bar.set_postfix_str("", refresh=False)
        assert bar.line().endswith("time left unknown")
    finally:
        bar.close()


def test_a_run_shows_which_sub_attack_of_a_worst_case_attack_is_running(monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine hands its bar to the attacks (EvalContext.status): autoattack's batches take minutes each."""
    shown: list[str] = []
    monkeypatch.setattr(advbayes.progress, "on_terminal", lambda: False)
    monkeypatch.setattr(LineProgress, "set_postfix_str", lambda self, s="", refresh=True: shown.append(s))
    subs = [{"use": "fgsm", "name": "fgsm"}, {"use": "pgd", "name": "pgd-3", "steps": 3}]
    advbayes.run(
        "moons",
        track=False,
        progress=True,
        epochs=1,
        attacks=[{"use": "worst-case", "name": "both", "attacks": subs, "eps": 0.3}],
        eps=[0.3],
        **{"dataset.test_size": 300},
    )
    said = [s for s in shown if s.endswith("examples still robust")]  # the training bar shows its loss
    assert said and re.fullmatch(r"fgsm \(1/2\) on the \d+ of 256 examples still robust", said[0]), shown
    assert re.fullmatch(r"pgd-3 \(2/2\) on the \d+ of 256 examples still robust", said[1]), shown
    assert shown[-1] == ""  # cleared when the batch ended


def test_the_time_left_is_the_rate_so_far_applied_to_what_remains(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(advbayes.progress.time, "monotonic", lambda: now[0])
    bar = LineProgress(total=1000, unit="img", desc="d", every=3600, stream=io.StringIO())
    try:
        assert bar.line().endswith("time left unknown")
        bar.update(250)
        now[0] += 60  # 250 images in a minute: 750 more take three
        assert bar.line() == "d: batch 2, 250/1000 img (25 %) done, 1:00 elapsed, about 3:00 left"
    finally:
        bar.close()


def test_without_a_terminal_a_run_reports_in_lines_and_with_progress_off_says_nothing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(advbayes.progress, "PROGRESS_SECONDS", 0.001)  # a line every ms: the evaluation is quick
    advbayes.run(
        "moons", track=False, progress=True, epochs=1, attacks=["fgsm"], eps=[0.1, 0.2], **{"dataset.test_size": 2000}
    )
    err = capsys.readouterr().err
    assert re.search(r"moons/standard seed 0 fgsm eps 0.\d: batch \d+, \d+/4000 img", err), err[-2000:]
    assert "moons/standard seed 0 epoch 1/1: loss" in err  # the epoch's summary line as well
    advbayes.run("moons", track=False, progress=False, epochs=1)
    assert "batch" not in capsys.readouterr().err
