"""Bad input of every class the outside tester found: one line, exit status 2, before any work, no file written.

Explicit regression tests for each class first, then a property-based fuzz test over generated registries and
--set overrides (a fixed, bounded number of examples so that it runs in well under a minute).
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import advbayes.engine
from advbayes.cli import cli
from helpers import write

MOONS = (
    '[experiments.fz]\ndataset = { use = "half-moons", train_size = 64, test_size = 32 }\nmodel = "mlp"\nepochs = 1\n'
)


@pytest.fixture
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any input that reaches training fails the test loudly."""

    def refuse(self: object) -> None:
        raise AssertionError("WORK STARTED")

    monkeypatch.setattr(advbayes.engine.Run, "execute", refuse)


def invoke(*args: str) -> tuple[int, str]:
    """Run the CLI in-process with tracking on (the default store in the working directory)."""
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def assert_one_clear_line(code: int, output: str, cwd: Path, *fragments: str) -> None:
    """Exit 2, exactly one line starting 'Error: ', no traceback, no wrapped unexpected exception, nothing written."""
    lines = output.splitlines()
    assert code == 2, output[:2000]
    assert len(lines) == 1 and lines[0].startswith("Error: "), output[:2000]
    assert "Traceback" not in output and "WORK STARTED" not in output and "run failed:" not in output, output[:2000]
    assert len(lines[0]) <= 1000
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert sorted(p.name for p in cwd.iterdir()) == [], sorted(p.name for p in cwd.iterdir())


@pytest.fixture
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Registry files live outside the working directory, which must stay empty."""
    return tmp_path_factory.mktemp("registries")


# ------------------------------------------------------------------------------------------ registry files


def test_registry_bytes_that_are_not_utf8_name_file_and_line(isolated_cwd: Path, files: Path, no_work: None) -> None:
    path = files / "bad.toml"
    path.write_bytes(MOONS.encode() + b'description = "\xff\xfe"\n')
    code, output = invoke("run", "fz", "--registry", str(path))
    assert_one_clear_line(code, output, isolated_cwd, "bad.toml: not UTF-8 text: byte 0xff at line 5")


@pytest.mark.parametrize(
    "value",
    ["[" * 1000 + "]" * 1000, "{a=" * 1000 + "1" + "}" * 1000],
    ids=["arrays-1000-deep", "inline-tables-1000-deep"],
)
def test_values_nested_1000_deep_are_one_line(isolated_cwd: Path, files: Path, no_work: None, value: str) -> None:
    path = write(files / "deep.toml", MOONS + f"eps = {value}\n")
    code, output = invoke("run", "fz", "--registry", str(path))
    assert_one_clear_line(code, output, isolated_cwd, "deep.toml", "nested more than 32 deep")
    code, output = invoke("run", "fz", "--registry", str(files / "deep.toml"), "--set", f"eps={value}")
    assert_one_clear_line(code, output, isolated_cwd, "nested more than 32 deep")


def test_tables_nested_1000_deep_are_one_line(isolated_cwd: Path, files: Path, no_work: None) -> None:
    path = write(files / "dotted.toml", MOONS + "[" + ".".join(["a"] * 1000) + "]\nx = 1\n")
    code, output = invoke("show", "fz", "--registry", str(path))
    assert_one_clear_line(code, output, isolated_cwd, "dotted.toml", "nested more than 32 deep")


def test_an_extends_chain_of_1000_resolves_and_a_long_cycle_is_named(files: Path, isolated_cwd: Path) -> None:
    chain = '[models.m0]\nuse = "mlp"\nwidths = [7]\n' + "".join(
        f'[models.m{i}]\nextends = "m{i - 1}"\n' for i in range(1, 1000)
    )
    path = write(files / "chain.toml", chain)
    code, output = invoke("show", "models.m999", "--registry", str(path))
    assert code == 0, output
    assert "widths = [\n    7,\n]" in output or "widths = [ 7 ]" in output or "widths = [7]" in output
    cycle = write(files / "cycle.toml", chain + '[models.m0x]\nextends = "m0y"\n[models.m0y]\nextends = "m0x"\n')
    code, output = invoke("show", "models.m0x", "--registry", str(cycle))
    assert_one_clear_line(code, output, isolated_cwd, "cycle in extends: m0x -> m0y -> m0x")


def test_integers_beyond_4300_digits_are_one_line(isolated_cwd: Path, files: Path, no_work: None) -> None:
    path = write(files / "big.toml", MOONS.replace("epochs = 1", "epochs = " + "9" * 5000))
    code, output = invoke("run", "fz", "--registry", str(path))
    assert_one_clear_line(code, output, isolated_cwd, "big.toml: invalid value: Exceeds the limit (4300 digits)")
    code, output = invoke("run", "fz", "--registry", str(files / "big.toml"), "--set", "seed=" + "9" * 5000)
    assert_one_clear_line(code, output, isolated_cwd, "--set: key 'seed': invalid value")


# ------------------------------------------------------------------------------------------ values


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("seed=4294967296", "key 'seed': expected an integer >= 0 and <= 4294967295"),
        ("seeds=[0, 4294967296]", "key 'seeds': expected a list of integers >= 0 and <= 4294967295"),
        ("lr=inf", "key 'lr': expected a finite number > 0.0"),
        ("weight_decay=-inf", "key 'weight_decay': expected a finite number >= 0.0"),
        ("lr=nan", "key 'lr': expected a finite number"),
        ("lr=1e300", "key 'lr': expected a finite number > 0.0 and <= 1000000.0, got 1e+300"),
        ("epochs=1000000000000", "key 'epochs': expected an integer >= 0 and <= 10000000"),
        ("eval_batch_size=1000000000000", "key 'eval_batch_size': expected an integer >= 1 and <= 10000000"),
        ("attacks.none.samples=1000000000000", "key 'samples': expected an integer >= 1 and <= 10000000"),
        ("model.widths=[1000000000000]", "key 'widths': expected a list of integers >= 1 and <= 10000000"),
        ("eps=[" + ", ".join(["0.1"] * 10001) + "]", "key 'eps': expected at most 10000 items, got a list of 10001"),
    ],
)
def test_meaningless_numbers_are_refused_before_any_work(
    isolated_cwd: Path, no_work: None, override: str, expected: str
) -> None:
    code, output = invoke("run", "moons", "--set", override)
    assert_one_clear_line(code, output, isolated_cwd, expected)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["eps=[8]"], "attack 'fgsm' on data set 'mnist-5k': eps 8 is wider than the data's value range [0, 1]"),
        (["eps=[0.1, 8/255]"], "key 'eps': TOML has no arithmetic: write 8/255 as 0.03137255"),
        (  # no eps list: the attack's own eps is the radius
            ["eps=[]", 'attacks=[{use="fgsm", name="big", eps=2}]'],
            "attack 'big' on data set 'mnist-5k': eps 2 is wider",
        ),
    ],
)
def test_an_eps_in_the_wrong_units_is_refused_before_any_work(
    isolated_cwd: Path, no_work: None, overrides: list[str], expected: str
) -> None:
    code, output = invoke("run", "quickstart", *(f"--set={o}" for o in overrides), "--dry-run")
    assert_one_clear_line(code, output, isolated_cwd, expected)


@pytest.mark.parametrize("key", ["ep\nochs", "ep\u2028ochs", "ep\u200bochs", "ep ochs", "ep\x00ochs"])
def test_override_keys_with_line_breaks_spaces_or_control_characters_are_refused(
    isolated_cwd: Path, no_work: None, key: str
) -> None:
    code, output = invoke("run", "moons", "--set", f"{key}=1")
    assert_one_clear_line(code, output, isolated_cwd, "--set: a key holds no spaces, line breaks or control characters")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["list", "bogus"], "'bogus' is not one of 'datasets'"),
        (
            ["ui", "--port", "0"],
            "Invalid value for '--port': 0 is not in the range 1<=x<=65535. (see cli ui --help)",
        ),
        (["show", "--"], "Missing argument 'ENTRY'. (see cli show --help)"),
        (["run", "--nope"], "No such option '--nope'"),
        (["show", "x", "--registry", "."], "Invalid value for '--registry'"),
    ],
)
def test_usage_errors_are_one_line_naming_the_help_to_read(isolated_cwd: Path, args: list[str], expected: str) -> None:
    code, output = invoke(*args)
    assert_one_clear_line(code, output, isolated_cwd, expected)


def test_an_infinite_value_is_accepted_where_a_field_means_it() -> None:
    from advbayes.registry import load_registry

    hvi = load_registry().resolve("defenses", "hvi", where=("t", "t", "t"))
    assert hvi["nu"] == float("inf")


# ------------------------------------------------------------------------------------------ the run's parts


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ["model=mnist-cnn"],
            "model 'mnist-cnn' with defense 'standard' on data set 'half-moons' (inputs [2], 2 classes): the network cannot be built",
        ),
        (
            ["dataset=mnist-5k", 'model={use="mnist-cnn", channels=[8, 8]}'],
            "mnist-cnn has three conv layers, got channels [8, 8]",
        ),
        (
            ["dataset=mnist-5k", 'model={use="mnist-cnn", mean=[0.1, 0.2], std=[0.3]}'],
            "mean and std need 1 or 1 values, got 2 and 1",
        ),
        (["defense=mc-dropout-0.3", "model=mlp"], None),
        (['defense={use="mc-dropout"}', "model=mlp"], "mc-dropout: the network has no dropout layer"),
        (["model.widths=[9000000, 9000000]"], "of weights need"),
        (["eval_batch_size=9000000", 'attacks=["none"]', "model.widths=[4096, 4096]"], "needs an estimated"),
    ],
)
def test_a_network_that_cannot_work_is_refused_before_any_work(
    isolated_cwd: Path, no_work: None, overrides: list[str], expected: str | None
) -> None:
    args = ["run", "moons"] + [item for o in overrides for item in ("--set", o)]
    code, output = invoke(*args)
    if expected is None:  # the control: a sound combination passes every check and reaches the work
        assert "WORK STARTED" in output, output
        return
    assert_one_clear_line(code, output, isolated_cwd, expected)


def test_a_transfer_source_trained_after_its_attack_is_refused(isolated_cwd: Path, files: Path, no_work: None) -> None:
    path = write(
        files / "transfer.toml",
        MOONS + 'defenses = ["adversarial-training-moons", "standard"]\nattacks = ["none", "from-standard"]\n'
        '[attacks.from-standard]\nuse = "transfer"\nsource = "standard"\nattack = "fgsm"\n'
        '[defenses.adversarial-training-moons]\nuse = "standard"\ntrain_samples = 1\n',
    )
    code, output = invoke("run", "fz", "--registry", str(path))
    assert_one_clear_line(
        code,
        output,
        isolated_cwd,
        "attack 'from-standard' uses source 'standard', which is not a defense trained before "
        "'adversarial-training-moons' (trained before it: none)",
    )


@pytest.mark.parametrize(
    ("device", "expected"),
    [
        ("meta", "--device: expected auto, cpu, cuda or cuda:N, got 'meta'"),
        ("tpu", "got 'tpu'"),
        ("cpu:x", "got 'cpu:x'"),
    ],
)
def test_devices_other_than_cpu_and_cuda_are_refused(
    isolated_cwd: Path, no_work: None, device: str, expected: str
) -> None:
    code, output = invoke("run", "moons", "--device", device)
    assert_one_clear_line(code, output, isolated_cwd, expected)


# ------------------------------------------------------------------------------------------ tracking stores


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # closed once the socket is: nobody listens there


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("foo://bar", "tracking URI foo://bar: unknown scheme 'foo'"),
        (f"http://127.0.0.1:{closed_port()}", "is unreachable (127.0.0.1:"),
        (f"postgresql://user@127.0.0.1:{closed_port()}/db", "is unreachable (127.0.0.1:"),
        ("http://127.0.0.1:99999", "the port is not a number from 1 to 65535"),
    ],
    ids=["unknown-scheme", "http-closed-port", "postgresql-closed-port", "port-out-of-range"],  # stable: xdist
)
def test_a_store_that_cannot_work_fails_fast(isolated_cwd: Path, uri: str, expected: str) -> None:

    started = time.perf_counter()
    code, output = invoke("run", "moons", "--set", "epochs=0", "--tracking-uri", uri)
    assert time.perf_counter() - started < 20  # MLflow alone retries a closed port for minutes
    assert_one_clear_line(code, output, isolated_cwd, expected)


@pytest.mark.parametrize("command", [["compare", "moons"], ["report", "moons", "--out", "{out}"], ["runs"]])
@pytest.mark.parametrize("store", ["corrupt", "half-migrated"])
def test_compare_report_and_runs_on_a_broken_store_are_one_line(
    isolated_cwd: Path, files: Path, command: list[str], store: str
) -> None:
    import sqlite3

    database = files / f"{store}.db"
    if store == "corrupt":
        database.write_bytes(b"not a database " * 100)
    else:  # what a run killed during the store's first creation leaves: some tables, not all
        with sqlite3.connect(database) as connection:
            connection.execute("create table experiments (experiment_id integer primary key, name text)")
    args = [part.replace("{out}", str(files / "out")) for part in command]
    code, output = invoke(*args, "--tracking-uri", f"sqlite:///{database}")
    assert_one_clear_line(code, output, isolated_cwd, "cannot be opened", f"mv {database} {database}.broken")


def test_compare_and_resume_without_a_store_create_none(isolated_cwd: Path) -> None:
    for args in (["compare", "moons"], ["run", "--resume", "0123456789abcdef"], ["runs"]):
        code, output = invoke(*args)
        assert_one_clear_line(code, output, isolated_cwd, "no tracking store", "(nothing was tracked here)")


def test_a_read_only_working_directory_is_one_line(isolated_cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import advbayes.tracking.store

    monkeypatch.setattr(advbayes.tracking.store.os, "access", lambda path, mode: False)  # as for a user without rights
    code, output = invoke("run", "moons", "--set", "epochs=0")
    assert_one_clear_line(code, output, isolated_cwd, "cannot be created", "is read-only")


@pytest.mark.parametrize(("delay", "template"), [(0.0, False), (0.1, False), (0.0, True)])
def test_a_store_killed_while_being_created_leaves_nothing_half_made(
    isolated_cwd: Path, tmp_path_factory: pytest.TempPathFactory, delay: float, template: bool
) -> None:
    """Killed while MLflow migrates the new tables (an empty cache), or while it opens a copy of the cached
    template (tracking/store_template.py)."""
    import signal

    from advbayes.output_cache import CACHE_ENV
    from advbayes.tracking.store import client_for

    cache = tmp_path_factory.mktemp("cache")
    if template:
        client_for(f"sqlite:///{tmp_path_factory.mktemp('first') / 'mlflow.db'}")  # leaves the suite's template
        cache = Path(os.environ[CACHE_ENV])
    creator = subprocess.Popen(
        [sys.executable, "-c", "from advbayes.tracking import client_for; client_for(None)"],
        cwd=isolated_cwd,
        env={**os.environ, CACHE_ENV: str(cache)},
    )
    scratch = isolated_cwd / ".mlflow.db.creating"
    deadline = time.monotonic() + 60
    while creator.poll() is None and time.monotonic() < deadline:
        if scratch.exists() and scratch.stat().st_size > 0:  # MLflow is creating the tables: SIGKILL it now
            time.sleep(delay)
            creator.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    assert creator.wait(timeout=60) == -signal.SIGKILL, "the creation finished before it could be killed"
    assert not (isolated_cwd / "mlflow.db").exists()  # only the scratch file was half made
    code, output = invoke("run", "moons", "--set", "epochs=0", "--set", "dataset.test_size=20")
    assert code == 0 and "MLflow run" in output, output
    code, output = invoke("compare", "moons")
    assert code == 0 and "FINISHED" in output, output
    assert not scratch.exists()


def test_a_read_only_store_is_refused_for_runs_before_any_work(
    isolated_cwd: Path, files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import advbayes.tracking.store

    database = files / "mlflow.db"
    database.touch()
    monkeypatch.setattr(advbayes.tracking.store.os, "access", lambda path, mode: False)  # as for a user without rights
    code, output = invoke("run", "moons", "--set", "epochs=0", "--tracking-uri", f"sqlite:///{database}")
    assert_one_clear_line(code, output, isolated_cwd, f"tracking store {database} is read-only")


@pytest.mark.parametrize("name", ["x?q=1", "x#y", "x%20y"])
def test_url_syntax_in_the_directory_name_keeps_the_store_in_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    folder = tmp_path / name
    folder.mkdir()
    monkeypatch.chdir(folder)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    code, output = invoke("run", "moons", "--set", "epochs=0", "--set", "dataset.test_size=20")
    assert code == 0, output
    assert (folder / "mlflow.db").is_file() and (folder / "mlartifacts").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # nothing in the parent, no encoded twin
    code, output = invoke("compare", "moons")
    assert code == 0 and "FINISHED" in output, output
    code, output = invoke("report", "moons", "--out", "report")
    assert code == 0 and (folder / "report" / "report.md").is_file(), output


# ------------------------------------------------------------------------------------------ names and providers


@pytest.mark.parametrize("name", ["..", ".hidden", "a/b", "x\ny"])
def test_entry_names_must_be_safe_path_parts(isolated_cwd: Path, files: Path, name: str) -> None:
    quoted = name.replace("\n", "\\n")
    path = write(files / "names.toml", f'[experiments."{quoted}"]\ndataset = "half-moons"\nmodel = "mlp"\n')
    code, output = invoke("run", name, "--registry", str(path))
    assert_one_clear_line(code, output, isolated_cwd, "invalid name")


def test_a_local_registry_cannot_print_an_install_command(isolated_cwd: Path, files: Path) -> None:
    path = write(files / "p.toml", '[providers]\n"evil; curl x" = ["fancy"]\n')
    code, output = invoke("list", "--registry", str(path))
    assert_one_clear_line(code, output, isolated_cwd, "invalid distribution name")


# ------------------------------------------------------------------------------------------ fuzz

INT_KEYS = [
    "epochs",
    "seed",
    "batch_size",
    "eval_batch_size",
    "dataset.train_size",
    "dataset.seed",
    "attacks.none.attack_samples",
]
FLOAT_KEYS = ["lr", "weight_decay", "momentum", "dataset.noise", "model.dropout"]
LIST_KEYS = ["eps", "attack_samples", "inference_samples", "seeds", "model.widths"]
ENTRY_KEYS = ["dataset", "model", "defense", "attacks", "metrics"]
DEEP = "[" * 40 + "]" * 40
HUGE = "9" * 5000
BAD_NUMBERS = [
    "-1",
    "inf",
    "-inf",
    "nan",
    "1e300",
    "-1e300",
    "1000000000000",
    '"text"',
    "true",
    "[1]",
    "{a=1}",
    DEEP,
    HUGE,
    "9" * 4000,
]
BAD_FLOATS = BAD_NUMBERS + ["2.5e6"]
BAD_INTS = BAD_NUMBERS + ["1.5", "5000000000"]
BAD_LISTS = [
    "[-1]",
    "[inf]",
    "[nan]",
    "[1e300]",
    "[1000000000000]",
    "3",
    '"text"',
    "true",
    "{a=1}",
    DEEP,
    "[[1]]",
    f"[{HUGE}]",
]
UNFIT_ATTACKS = [  # attacks that cannot run on half-moons, or sources no store holds
    '["square"]',
    '["fab-t"]',
    '["autoattack"]',
    '[{use="transfer", name="t", source="run:0123456789abcdef0123456789abcdef", attack="fgsm"}]',
    '[{use="transfer", name="t", source="run:", attack="fgsm"}]',
]
BAD_ENTRIES = ['"no-such-entry-xyz"', "3", "true", '{use="no-such-xyz"}', "[3]", "[]", DEEP]


def bad_override() -> st.SearchStrategy[str]:
    """KEY=VALUE pairs each of which is invalid for its key (a known key with a bad value, or an unknown key)."""
    pairs = st.one_of(
        st.tuples(st.sampled_from(INT_KEYS), st.sampled_from(BAD_INTS)),
        st.tuples(st.sampled_from(FLOAT_KEYS), st.sampled_from(BAD_FLOATS)),
        st.tuples(st.sampled_from(LIST_KEYS), st.sampled_from(BAD_LISTS)),
        st.tuples(st.sampled_from(ENTRY_KEYS), st.sampled_from(BAD_ENTRIES)),
        st.tuples(st.just("attacks"), st.sampled_from(UNFIT_ATTACKS)),  # known before work: data shape, range, store
        st.tuples(
            st.text(
                st.characters(blacklist_characters="=", blacklist_categories=("Cs",)), min_size=1, max_size=30
            ).filter(
                lambda k: (
                    k.strip()
                    and k.strip() not in (*INT_KEYS, *FLOAT_KEYS, *LIST_KEYS, *ENTRY_KEYS, "description", "optimizer")
                    and not k.strip().startswith(("defense.", "dataset.", "model.", "attacks.", "metrics."))
                )
            ),
            st.sampled_from(["1", '"x"', "[1]", "{a=1}", "\nError: fake"]),
        ),
    )
    return pairs.map(lambda pair: f"{pair[0]}={pair[1]}")


def bad_registry() -> st.SearchStrategy[bytes]:
    """A registry file with one defect that makes experiment `fz` unusable."""
    value_defect = st.one_of(
        st.tuples(st.sampled_from([k for k in INT_KEYS if "." not in k]), st.sampled_from(BAD_INTS)),
        st.tuples(st.sampled_from([k for k in FLOAT_KEYS if "." not in k]), st.sampled_from(BAD_FLOATS)),
        st.tuples(st.sampled_from([k for k in LIST_KEYS if "." not in k]), st.sampled_from(BAD_LISTS)),
    ).map(lambda pair: (MOONS + f"{pair[0]} = {pair[1]}\n").encode())
    byte_defect = st.tuples(st.integers(0, len(MOONS)), st.sampled_from([b"\xff", b"\xc3\x28", b"\x80\x80"])).map(
        lambda cut: MOONS.encode()[: cut[0]] + cut[1] + MOONS.encode()[cut[0] :]
    )
    structure_defect = st.sampled_from(
        [
            MOONS + '[experimentz.x]\nmodel = "mlp"\n',
            MOONS + 'extends = "fz"\n',
            MOONS + 'extends = "nope"\n',
            MOONS.replace('model = "mlp"', 'model = "fz"') + "[models.fz]\nextends = 'fz'\n",
            MOONS.replace('model = "mlp"', "model = 3"),
            MOONS.replace('model = "mlp"', 'model = { use = "mlp", widths = "wide" }'),
            MOONS + "[attacks]\nx = 3\n",
            MOONS + "[providers]\nx = 3\n",
            MOONS + "unknown_key = 1\n",
            MOONS + "eps = [" + ", ".join(["0.1"] * 10001) + "]\n",
        ]
    ).map(str.encode)
    return st.one_of(value_defect, byte_defect, structure_defect)


FUZZ = settings(
    max_examples=1000,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@contextlib.contextmanager
def fresh_directory() -> Iterator[Path]:
    """A new empty working directory for one generated example (a fixture's would be shared by all of them)."""
    previous = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="advbayes-fuzz-") as folder:
        os.chdir(folder)
        try:
            yield Path(folder)
        finally:
            os.chdir(previous)


@FUZZ
@given(overrides=st.lists(bad_override(), min_size=1, max_size=3))
def test_fuzz_bad_overrides_are_one_clear_line_before_any_work(
    isolated_cwd: Path, no_work: None, overrides: list[str]
) -> None:
    args = ["run", "moons"] + [item for o in overrides for item in ("--set", o)]
    with fresh_directory() as cwd:
        code, output = invoke(*args)
        assert_one_clear_line(code, output, cwd)


def bad_store_uri() -> st.SearchStrategy[str]:
    """--tracking-uri values that cannot work, the scheme in any case: retired file stores, options, unknown schemes,
    sqlite files in missing directories, servers nobody listens on."""
    scheme = st.sampled_from(["file", "sqlite", "sqlite+pysqlite", "http", "postgresql", "gopher", "s3"])
    cased = st.tuples(scheme, st.lists(st.booleans(), min_size=20, max_size=20)).map(
        lambda pair: "".join(c.upper() if up else c for c, up in zip(pair[0], pair[1]))
    )
    rest = st.sampled_from(["///no/such/dir/x.db", "://127.0.0.1:1/db", "://127.0.0.1:99999", "///"])
    return st.one_of(
        st.tuples(cased, rest).map("".join),
        st.sampled_from(["--host=0.0.0.0", "-x", "./some/dir", "no-such-dir/store", "databricks"]),
    )


@settings(FUZZ, max_examples=150)  # 7 schemes x 20 casings x 4 tails: a few hundred distinct, each a store check
@given(uri=bad_store_uri())
def test_fuzz_bad_store_uris_are_one_clear_line_before_any_work(isolated_cwd: Path, no_work: None, uri: str) -> None:
    with fresh_directory() as cwd:
        code, output = invoke("run", "moons", "--tracking-uri", uri)
        assert_one_clear_line(code, output, cwd)


@FUZZ
@given(content=bad_registry())
def test_fuzz_bad_registries_are_one_clear_line_before_any_work(
    isolated_cwd: Path, files: Path, no_work: None, content: bytes
) -> None:
    path = files / "fuzz.toml"
    path.write_bytes(content)
    with fresh_directory() as cwd:
        code, output = invoke("run", "fz", "--registry", str(path))
        assert_one_clear_line(code, output, cwd)


# ------------------------------------------------------------------------------------------ killed runs


def endless_run(cwd: Path, until: str) -> tuple[subprocess.Popen, list[str]]:
    """`advbayes run moons` for 100,000 epochs in a fresh process, returned once a stderr line contains `until`
    (or after 120 s), with the stderr lines read so far."""
    runner = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "advbayes.cli",
            "run",
            "moons",
            "--set",
            "epochs=100000",
            "--set",
            "dataset.train_size=64",
        ],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert runner.stderr is not None
    seen: list[str] = []
    deadline = time.monotonic() + 120
    for line in runner.stderr:  # one line per epoch
        seen.append(line)
        if until in line or time.monotonic() > deadline:
            break
    return runner, seen


@pytest.mark.slow  # a fresh process that imports torch and trains or lists: seconds
def test_a_sigkilled_run_is_found_as_stale_and_resumed(isolated_cwd: Path) -> None:
    import signal

    from mlflow import MlflowClient

    runner, _ = endless_run(isolated_cwd, until="epoch 4/")  # the checkpoint of epoch 3 is logged before epoch 4
    runner.send_signal(signal.SIGKILL)
    runner.wait(timeout=60)
    code, output = invoke("runs", "--stale")
    assert code == 0, output
    (row,) = [line for line in output.splitlines() if "RUNNING (stale)" in line]
    run_id = row.split()[0]
    assert f"advbayes run --resume {run_id}" in row
    assert re.search(r" epoch [34]/\d+ ", row), row  # where it stopped: the last epoch it logged, of how many
    code, output = invoke("compare", "moons")
    assert "RUNNING (stale)" in output
    code, output = invoke("run", "--resume", run_id, "--set", "epochs=5")  # changed settings: a new run from it
    assert code == 0, output
    client = MlflowClient(f"sqlite:///{isolated_cwd / 'mlflow.db'}")
    assert client.get_run(run_id).info.status == "RUNNING"  # still findable, still resumable as it was
    code, output = invoke("runs", "--stale")
    assert run_id in output


@pytest.mark.slow  # a fresh process that imports torch and trains: seconds
def test_a_sigtermed_run_ends_as_on_ctrl_c_marked_killed_with_the_way_to_resume_it(isolated_cwd: Path) -> None:
    """SIGTERM is how schedulers, `docker stop` and `kill` stop a job: the run is not left RUNNING."""
    import signal

    from mlflow import MlflowClient

    runner, _ = endless_run(isolated_cwd, until="epoch 4/")
    runner.send_signal(signal.SIGTERM)
    _, err = runner.communicate(timeout=60)
    assert runner.returncode == 143, err[-2000:]
    (line,) = [line for line in err.splitlines() if line.startswith("Interrupted: ")]
    found = re.fullmatch(r"Interrupted: tracked run (\w+) is marked KILLED; resume it with --resume \1", line)
    assert found, line
    client = MlflowClient(f"sqlite:///{isolated_cwd / 'mlflow.db'}")
    assert client.get_run(found.group(1)).info.status == "KILLED"
    assert "Traceback" not in err


def test_sqlite_busy_errors_are_retried_and_others_are_not(monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlalchemy.exc

    import advbayes.tracking.store as tracking

    monkeypatch.setattr(tracking.time, "sleep", lambda seconds: None)
    calls: list[str] = []

    class Flaky:
        tracking_uri = "sqlite:///x.db"

        def log_batch(self, run_id: str) -> str:
            calls.append(run_id)
            if len(calls) < 3:  # how MLflow surfaces it: an MlflowException raised from SQLAlchemy's error
                raise RuntimeError("write failed") from sqlalchemy.exc.OperationalError(
                    "INSERT", {}, Exception("database is locked")
                )
            return "written"

        def create_run(self) -> None:
            calls.append("create")
            raise ValueError("no such experiment")

    client = tracking.BusyRetryingClient(Flaky())
    assert client.tracking_uri == "sqlite:///x.db"
    assert client.log_batch("r") == "written" and calls == ["r", "r", "r"]
    calls.clear()
    with pytest.raises(ValueError, match="no such experiment"):
        client.create_run()
    assert calls == ["create"]


@contextlib.contextmanager
def silent_server() -> Iterator[int]:
    """A port on 127.0.0.1 that accepts connections and never answers (a hung server): yields the port."""
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted: list[socket.socket] = []
    done = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not done.is_set():
            with contextlib.suppress(OSError):
                accepted.append(listener.accept()[0])  # held open, never read or answered

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        done.set()
        thread.join(timeout=2)
        for connection in accepted:
            connection.close()
        listener.close()


def test_a_tracking_server_that_accepts_and_never_answers_is_one_line_within_seconds(
    isolated_cwd: Path, no_work: None
) -> None:

    with silent_server() as port:
        started = time.monotonic()
        code, output = invoke("run", "moons", "--tracking-uri", f"http://127.0.0.1:{port}")
        elapsed = time.monotonic() - started
    assert_one_clear_line(code, output, isolated_cwd, "accepts connections but gave no HTTP answer within 3 s")
    assert elapsed < 15, elapsed


@contextlib.contextmanager
def health_only_server() -> Iterator[int]:
    """A port on 127.0.0.1 whose /health answers and whose every other request hangs (a half-hung MLflow server)."""
    import http.server
    import threading

    release = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            if self.path.startswith("/health"):
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"OK")
                return
            release.wait(120)  # never answers while the test runs

        do_POST = do_GET  # noqa: N815

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        release.set()
        server.shutdown()
        server.server_close()


def test_every_request_to_a_half_hung_tracking_server_is_bounded_and_one_line(
    isolated_cwd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the health check, MLflow's own requests carry a read timeout and few retries (the CLI sets them; small
    here to keep the test short): listing runs and resuming one end in one line, not a quarter-hour wait."""
    import advbayes.cli as cli_module

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    assert cli_module.HTTP_TIMEOUT * (cli_module.HTTP_RETRIES + 1) <= 120  # the defaults are bounded too
    with health_only_server() as port:
        for args in (["runs"], ["run", "--resume", "0123456789abcdef0123456789abcdef"], ["compare", "moons"]):
            started = time.monotonic()
            code, output = invoke(*args, "--tracking-uri", f"http://127.0.0.1:{port}")
            elapsed = time.monotonic() - started
            lines = output.splitlines()
            assert code != 0 and len(lines) == 1 and lines[0].startswith("Error: "), output[-2000:]
            assert "Traceback" not in output and "timed out" in lines[0].lower(), lines[0]
            assert elapsed < 30, (args, elapsed)


# ------------------------------------------------------------------------------------------ limits the machine sets


def test_the_memory_check_reads_the_cgroup_limit_v2_and_v1(tmp_path: Path) -> None:
    """The free memory a container allows: limit - usage of the process's cgroup and every parent, the least."""
    from advbayes.preflight import cgroup_memory

    v2 = tmp_path / "v2"
    (v2 / "box" / "job").mkdir(parents=True)
    (v2 / "memory.max").write_text("max\n")
    (v2 / "box" / "memory.max").write_text(str(8 * 2**30))
    (v2 / "box" / "memory.current").write_text(str(7 * 2**30))  # the parent has 1 GiB left: it binds
    (v2 / "box" / "job" / "memory.max").write_text(str(4 * 2**30))
    (v2 / "box" / "job" / "memory.current").write_text(str(2**30))
    membership = tmp_path / "cgroup"
    membership.write_text("0::/box/job\n")
    assert cgroup_memory(v2, membership) == 2**30
    v1 = tmp_path / "v1"
    (v1 / "memory" / "job").mkdir(parents=True)
    (v1 / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1's "no limit"
    (v1 / "memory" / "memory.usage_in_bytes").write_text("123\n")
    (v1 / "memory" / "job" / "memory.limit_in_bytes").write_text(str(3 * 2**30))
    (v1 / "memory" / "job" / "memory.usage_in_bytes").write_text(str(2**30))
    membership.write_text("5:cpu,cpuacct:/\n4:memory:/job\n0::/\n")
    assert cgroup_memory(v1, membership) == 2 * 2**30
    membership.write_text("4:memory:/\n")  # the root cgroup without a limit: none
    assert cgroup_memory(v1, membership) is None
    assert cgroup_memory(v1, tmp_path / "missing") is None


@pytest.mark.slow  # a fresh interpreter under ulimit -v
def test_the_memory_check_reads_the_address_space_limit() -> None:

    script = (
        "import resource\n"
        "size = next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('VmSize:'))\n"
        "resource.setrlimit(resource.RLIMIT_AS, (size + 2**32, resource.getrlimit(resource.RLIMIT_AS)[1]))\n"
        "from advbayes.preflight import address_space_memory, available_memory\n"
        "import torch\n"
        "print(address_space_memory() <= 2**32, available_memory(torch.device('cpu')) <= 2**32)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.stdout.split() == ["True", "True"], done.stderr[-2000:]


@pytest.mark.parametrize(
    ("uri", "normal"),
    [
        ("SQLITE:////tmp/x.db", "sqlite:////tmp/x.db"),
        ("sqlite+pysqlite:////tmp/x.db", "sqlite:////tmp/x.db"),
        ("Sqlite+PySqlite:///rel.db", "sqlite:///rel.db"),
        ("HTTP://127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("postgresql+psycopg2://u@h/db", "postgresql+psycopg2://u@h/db"),
        ("/plain/path", "/plain/path"),
        ("C:/windows/path", "C:/windows/path"),
    ],
)
def test_store_uris_have_one_spelling(uri: str, normal: str) -> None:
    from advbayes.tracking.store import normalize_uri, sqlite_path

    assert normalize_uri(uri) == normal
    assert (sqlite_path(uri) is not None) == normal.startswith("sqlite:///")


def test_every_sqlite_spelling_gets_the_store_lock_and_retries(isolated_cwd: Path) -> None:
    from advbayes.tracking.store import BusyRetryingClient, client_for

    for spelling in ("SQLITE", "sqlite+pysqlite"):
        client = client_for(f"{spelling}:///{isolated_cwd / 'x.db'}")
        assert isinstance(client, BusyRetryingClient) and client.tracking_uri == f"sqlite:///{isolated_cwd / 'x.db'}"
    assert (isolated_cwd / "x.db.lock").exists()


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["ui", "--tracking-uri=--host=0.0.0.0"], "looks like an option"),
        (["ui", "--tracking-uri", "file:///tmp/nowhere"], "MLflow's file store is in maintenance mode"),
        (["run", "moons", "--tracking-uri", "file:///tmp/nowhere"], "MLflow's file store is in maintenance mode"),
        (["runs", "--tracking-uri", "./a-directory"], "MLflow's file store is in maintenance mode"),
        (["run", "moons", "--tracking-uri", "databricks://nobody"], "no Databricks credentials for profile nobody"),
    ],
)
def test_store_uris_that_cannot_work_are_one_line(isolated_cwd: Path, args: list[str], fragment: str) -> None:
    code, output = invoke(*args)
    assert_one_clear_line(code, output, isolated_cwd, fragment)


def test_mlflows_logged_busy_errors_are_hidden_and_other_errors_are_not(
    store: str, caplog: pytest.LogCaptureFixture
) -> None:
    """MLflow logs each "database is locked" with a traceback before raising it; the retry makes that noise."""
    import logging
    import sqlite3

    import sqlalchemy.exc

    from advbayes.tracking.store import client_for

    client_for(store)
    logger = logging.getLogger("mlflow.store.db.utils")
    busy = sqlalchemy.exc.OperationalError("INSERT", {}, sqlite3.OperationalError("database is locked"))
    other = sqlalchemy.exc.OperationalError("INSERT", {}, sqlite3.OperationalError("disk I/O error"))
    with caplog.at_level(logging.ERROR, logger="mlflow.store.db.utils"):
        for error in (busy, other):
            try:
                raise error
            except sqlalchemy.exc.OperationalError as exc:
                logger.exception("SQLAlchemy database error. The following exception is caught.\n%s", exc)
    assert [r.getMessage().count("disk I/O error") for r in caplog.records] == [1]


# ------------------------------------------------------------------------------------------ faults during a run


def error_lines(stderr: str) -> list[str]:
    """The lines a failure printed that are not the run's own progress lines."""
    return [line for line in stderr.splitlines() if " epoch " not in line and line.strip()]


@pytest.mark.slow  # a fresh process that imports torch and trains
def test_a_full_disk_mid_run_is_one_line_and_leaves_the_store_intact(isolated_cwd: Path) -> None:
    """Writes past a size fail as on a full disk (RLIMIT_FSIZE; Python ignores SIGXFSZ, so they raise EFBIG)."""
    import sqlite3

    from advbayes.tracking.store import client_for

    database = isolated_cwd / "mlflow.db"
    client_for(f"sqlite:///{database}")  # made here: the limited process can only grow it a little
    limit = database.stat().st_size + 64 * 1024
    script = (
        "import resource, sys\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))\n"
        "from advbayes.cli import cli\n"
        "cli(['run', 'moons', '--set', 'epochs=400', '--set', 'dataset.train_size=64'])\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=isolated_cwd, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0, done.stderr[-2000:]
    lines = error_lines(done.stderr)
    assert len(lines) == 1 and lines[0].startswith("Error: "), done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert any(cause in lines[0] for cause in ("File too large", "disk I/O error", "database or disk is full")), lines
    with sqlite3.connect(database) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        statuses = [status for (status,) in db.execute("SELECT status FROM runs")]
    assert "FINISHED" not in statuses and "RUNNING" not in statuses, statuses


@pytest.mark.slow  # a fresh process that imports torch and trains
def test_a_store_deleted_mid_run_stops_the_run_in_one_line(isolated_cwd: Path) -> None:
    runner, seen = endless_run(isolated_cwd, until="epoch 3/")
    (isolated_cwd / "mlflow.db").unlink()
    try:
        _, rest = runner.communicate(timeout=120)  # it stops by itself: no hang, no run into the void
    finally:
        runner.kill()
    lines = error_lines("".join(seen) + rest)
    assert runner.returncode not in (0, None) and len(lines) == 2, lines  # the store's creation line, the error
    assert lines[0].startswith("advbayes: created the MLflow store"), lines
    assert lines[1].startswith("Error: ") and "was deleted or replaced during the run" in lines[1], lines
