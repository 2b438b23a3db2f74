"""A store's password never lands where others read it: result cards, reports, printed lines (shown_uri)."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlparse

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from servers import postgres_server

from advbayes.cli import cli
from advbayes.tracking.store import shown_uri
from helpers import SMALL_ATTACKS

WORD = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=8)
SECRET = st.text("abcdefghijklmnopqrstuvwxyz0123456789:@!$&'()*+,;=~-._", min_size=1, max_size=12).map(
    lambda text: "PW" + text  # "PW": never a piece of the other parts, whose alphabet has no capitals
)


@given(
    scheme=st.sampled_from(["postgresql", "postgresql+psycopg2", "mysql", "http", "https"]),
    user=WORD,
    secret=SECRET,
    host=WORD,
    port=st.integers(1, 65535),
    database=WORD,
    in_query=st.booleans(),
)
def test_a_password_is_never_shown_and_everything_else_is(
    scheme: str, user: str, secret: str, host: str, port: int, database: str, in_query: bool
) -> None:
    uri = (
        f"{scheme}://{user}@{host}:{port}/{database}?sslmode=require&password={secret}"
        if in_query
        else f"{scheme}://{user}:{secret}@{host}:{port}/{database}?sslmode=require"
    )
    shown = shown_uri(uri)
    assert "PW" not in shown and "***" in shown
    parsed = urlparse(shown)
    assert (parsed.scheme, parsed.username, parsed.hostname, parsed.port) == (scheme, user, host, port)
    assert parsed.path == f"/{database}" and "sslmode=require" in parsed.query


@pytest.mark.parametrize(
    "uri",
    ["sqlite:///mlflow.db", "sqlite:////abs/path.db", "postgresql://u@h:5432/db", "http://127.0.0.1:5000", "mlruns"],
)
def test_a_uri_without_a_password_is_shown_as_it_is(uri: str) -> None:
    assert shown_uri(uri) == uri


@pytest.mark.slow
def test_a_bench_on_a_password_store_keeps_the_password_out_of_its_card_report_and_output(
    isolated_cwd: Path,
) -> None:
    """PostgreSQL here trusts 127.0.0.1, so it accepts the URI's password and ignores it."""
    with postgres_server() as database:
        store = database.replace("postgres@", "postgres:PWs3cret@", 1)
        runner = CliRunner()
        settings = ["--set", "epochs=2", "--set", "until_converged=false", "--set", "dataset.n_test=40"]
        settings += ["--registry", str(SMALL_ATTACKS)]  # the protocol's sub-attacks at small budgets
        bench = runner.invoke(
            cli, ["bench", "bnn", "--dataset", "digits", "--seeds", "0", *settings, "--tracking-uri", store]
        )
        assert bench.exit_code == 0, bench.output
        card = json.loads((isolated_cwd / "cards" / "digits--bnn.json").read_text())
        assert f"{SMALL_ATTACKS} changes the protocol's attack 'autoattack-rand'" in card["deviations"]
        assert card["runs"]["store"] == database.replace("postgres@", "postgres:***@", 1)
        run = runner.invoke(cli, ["run", "moons", "--set", "epochs=1", "--tracking-uri", store])
        report = runner.invoke(cli, ["report", "moons", "--out", "report", "--tracking-uri", store])
        assert run.exit_code == 0 and report.exit_code == 0, run.output + report.output
        assert (
            "postgres:***@127.0.0.1" in run.stdout
            and "postgres:***@127.0.0.1" in (isolated_cwd / "report" / "report.md").read_text()
        )
        refused = runner.invoke(cli, ["export", "--cards", "cards", "--out", "records"])
        assert refused.exit_code == 2 and "is written without its password: give it with --tracking-uri" in (
            refused.stderr
        )
        exported = runner.invoke(cli, ["export", "--cards", "cards", "--out", "records", "--tracking-uri", store])
        assert exported.exit_code == 0, exported.output
        written = [bench.output, run.output, report.output, exported.output]
        written += [p.read_text() for p in [*isolated_cwd.rglob("*.json"), *isolated_cwd.rglob("*.md")]]
        assert not any("PWs3cret" in text for text in written)
