"""docs/findings.md is what `make findings` writes from the shipped run records (docs/records): regenerated here
with the Makefile's own arguments, with no store and no network, it must be the committed file byte for byte."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner
from matplotlib.figure import Figure

from advbayes.cli import cli
from advbayes.lab.records import read_records

ROOT = Path(__file__).resolve().parents[1]


def make_variable(name: str) -> list[str]:
    """A Makefile variable's words (continuation lines joined)."""
    text = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    match = re.search(rf"^{name} := (.*)$", text, re.MULTILINE)
    assert match, f"Makefile has no {name}"
    return shlex.split(match.group(1))


@pytest.mark.slow
def test_make_findings_regenerates_the_committed_findings_from_the_shipped_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The figures are built but not rendered (savefig writes an empty file): rendering the 29 figures to PNG and
    PDF was 55 of this test's 65 s, and what is checked here is the file's bytes and the figures' names; drawing
    figures from records is test_report's and test_trend_figures'."""
    monkeypatch.chdir(ROOT)  # the report names its records folder as given: docs/records, as `make findings` does
    monkeypatch.setattr(Figure, "savefig", lambda self, path, **options: Path(path).touch())
    experiments = make_variable("FINDINGS_EXPERIMENTS")
    assert set(read_records(Path("docs/records"))) == set(experiments)  # every shipped record is reported
    args = ["report", *experiments, "--records", "docs/records", "--claims", "docs/claims.toml"]
    args += ["--preamble", "docs/findings-preamble.md", "--out", str(tmp_path), "--file", "findings.md"]
    for metric in make_variable("FINDINGS_METRICS"):
        args += ["--metric", metric]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "findings.md").read_text() == (ROOT / "docs" / "findings.md").read_text()
    shipped = {p.relative_to(ROOT / "docs") for p in (ROOT / "docs" / "findings_figures").rglob("*.png")}
    drawn = {p.relative_to(tmp_path) for p in (tmp_path / "findings_figures").rglob("*.png")}
    assert drawn == shipped  # no stale figure of an earlier version is left in docs/
