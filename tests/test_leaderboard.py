"""The leaderboard: the protocol's attacks, result cards (per-example worst case, checks, schema validated on read),
their ranking, the static page, and `advbayes bench` end to end on a third-party plugin's defense."""

from __future__ import annotations

import copy
import json
import random
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from servers import rendered_dom

from advbayes.checks import Finding
from advbayes.cli import cli
from advbayes.errors import RunError
from advbayes.intervals import wilson_interval
from advbayes.lab.cards import (
    CARD_VERSION,
    check_outcomes,
    ranked,
    read_card,
    stat_problem,
    summary,
    worst_case,
    write_card,
)
from advbayes.lab.leaderboard import write_leaderboard
from advbayes.lab.protocol import CHECKS, CONVERGED, PROTOCOLS, ThreatModel
from advbayes.results import EvalRecord, pack_outcomes
from helpers import SMALL_ATTACKS, install_fixture_plugin


def record(attack: str, eps: float, outcomes: list[int]) -> EvalRecord:
    return EvalRecord(
        attack_label=attack,
        entry=attack,
        eps=eps,
        metrics={"accuracy": sum(outcomes) / len(outcomes)},
        attack_samples=20,
        inference_samples=10,
        mean_l2=0.0,
        max_linf=eps,
        examples=len(outcomes),
        per_example={"accuracy": pack_outcomes(outcomes)},
    )


def test_the_protocol_picks_autoattack_rand_for_a_stochastic_network_and_transfers_from_the_twin() -> None:
    protocol = PROTOCOLS["mnist-5k"]
    l2 = protocol.threat_model("L2")
    stochastic = protocol.attacks(l2, stochastic=True, twin_run="abc")
    assert stochastic[0] == {"extends": "autoattack-rand", "name": "autoattack-rand-l2", "norm": "2"}
    assert [a.get("attack_samples") for a in stochastic[1:3]] == [20, 20]  # EOT over S_A draws
    assert [a["steps"] for a in stochastic[1:3]] == [10, 40]  # the steps-monotonicity pair
    assert stochastic[3]["source"] == "run:abc" and stochastic[3]["attack"]["norm"] == "2"
    deterministic = protocol.attacks(l2, stochastic=False, twin_run=None)
    assert deterministic[0]["extends"] == "autoattack" and len(deterministic) == 3  # no twin, no transfer
    assert all("attack_samples" not in a for a in deterministic)
    with pytest.raises(RunError, match="no threat model 'L1'"):
        protocol.threat_model("L1")
    with pytest.raises(ValueError, match="headline radius 0.3 is not one of"):
        ThreatModel(name="Linf", norm="inf", radii=(0.1,), headline=0.3)


def test_an_example_is_robust_only_when_it_survives_every_attack() -> None:
    rng = random.Random(0)
    attacks = {name: [rng.randint(0, 1) for _ in range(50)] for name in ("a", "b", "c")}
    records = [record(name, 0.1, outcomes) for name, outcomes in attacks.items()]
    records.append(record("none", 0.1, [1] * 50))  # the clean row is not an attack
    survived, by_attack = worst_case(records, 0.1)
    assert survived == [int(all(attacks[n][i] for n in attacks)) for i in range(50)]
    assert by_attack == {n: sum(v) / 50 for n, v in attacks.items()}
    with pytest.raises(RunError, match="no attack was evaluated at eps 0.2"):
        worst_case(records, 0.2)


def test_a_summary_pools_the_seeds_verdicts_for_its_interval_and_keeps_their_spread() -> None:
    seeds = [[1] * 30 + [0] * 10, [1] * 20 + [0] * 20]
    stat = summary(seeds)
    assert stat["value"] == pytest.approx(0.625) and stat["seed_values"] == [0.75, 0.5] and stat["n"] == 40
    assert stat["seed_sd"] == pytest.approx(0.1767767, rel=1e-6)  # sample sd of 0.75 and 0.5
    assert stat["interval"] == list(wilson_interval(50, 80))


def test_each_finding_fails_its_check_and_a_network_without_a_posterior_is_not_judged_on_one() -> None:
    findings = [
        Finding(kind="rises-with-steps", attack="eot-pgd-40-linf", eps=0.1, message="40 steps leave more"),
        Finding(kind="black-box-stronger", attack="transfer", eps=0.2, message="transfer beats white box"),
    ]
    outcomes = {c["name"]: c for c in check_outcomes(findings, [None, None])}
    assert set(outcomes) == {*CHECKS, CONVERGED}
    assert (
        outcomes["monotonic-in-steps"]["status"] == "failed" and "40 steps" in outcomes["monotonic-in-steps"]["detail"]
    )
    assert outcomes["black-box-below-white-box"]["status"] == "failed"
    assert outcomes["randomness"]["status"] == "passed" and outcomes[CONVERGED]["status"] == "n/a"
    posterior = {c["name"]: c for c in check_outcomes([], [1.0, 0.0, 1.0])}[CONVERGED]
    assert posterior["status"] == "failed" and posterior["detail"] == "posterior/converged on 2 of 3 seeds"


def make_card(entry: str, robust: float, passed: bool = True, conforms: bool = True) -> dict[str, Any]:
    """A valid card of the digits protocol (as bench writes them) with a given headline robust accuracy."""
    protocol = PROTOCOLS["digits"]

    def stat(value: float) -> dict[str, Any]:  # the same count of the 360 digits on each of the 3 seeds
        correct = round(value * 360)
        low, high = wilson_interval(3 * correct, 3 * 360)
        return {
            "value": correct / 360,
            "interval": [low, high],
            "seed_sd": 0.0,
            "seed_values": [correct / 360] * 3,
            "n": 360,
        }

    def radius(value: float) -> dict[str, Any]:  # two attacks, the worst case equal to the stronger one
        section = stat(value)
        return {**section, "by_attack": {"x": section["value"], "y": min(1.0, section["value"] + 0.1)}}

    threats = {
        t.name: {
            "norm": t.norm,
            "headline": f"{t.headline:g}",
            "radii": {f"{e:g}": radius(robust / (1 + i)) for i, e in enumerate(t.radii)},
        }
        for t in protocol.threat_models
    }
    checks = [{"name": name, "status": "passed", "detail": "no finding"} for name in CHECKS]
    if not passed:
        checks[1] = {"name": CHECKS[1], "status": "failed", "detail": "zero gradients"}
    return {
        "advbayes_card": CARD_VERSION,
        "protocol": protocol.describe(),
        "defense": {"entry": entry, "params": {"name": entry, "use": entry}, "settings": []},
        "model": "mlp-small",
        "stochastic": True,
        "conforms": conforms,
        "deviations": [] if conforms else ["1 seed(s), the protocol asks for 3"],
        "passed": passed,
        "checks": checks,
        "clean": stat(0.95),
        "threat_models": threats,
        "runs": {
            "store": "sqlite:///mlflow.db",
            "experiment_id": "1",
            "seeds": {str(seed): {"train": f"r{seed or ''}{entry}"} for seed in protocol.seeds},
        },
        "provenance": {"advbayes.git_commit": "abc"},
        "device": "cpu",
        "seconds": 12.5,
    }


def test_a_card_with_a_failed_check_or_off_the_protocol_is_never_ranked_above_a_passing_one() -> None:
    cards = [
        make_card("masked", 0.99, passed=False),
        make_card("short", 0.95, conforms=False),
        make_card("low", 0.40),
        make_card("high", 0.60),
    ]
    assert [c["defense"]["entry"] for c in ranked(cards, "Linf")] == ["high", "low", "short", "masked"]


def test_a_written_card_reads_back_and_a_wrong_one_is_one_line_naming_file_and_key(tmp_path: Path) -> None:
    card = make_card("bnn", 0.5)
    path = write_card(card, tmp_path / "bnn.json")
    assert read_card(path) == card
    broken = copy.deepcopy(card)
    broken["threat_models"]["L2"]["radii"]["0.25"]["interval"][1] = "high"
    path.write_text(json.dumps(broken))
    with pytest.raises(RunError) as raised:
        read_card(path)
    assert str(raised.value) == f'{path}.threat_models.L2.radii.0.25.interval[1]: expected number, got "high"'
    broken = copy.deepcopy(card)
    broken["passed"] = False
    path.write_text(json.dumps(broken))
    with pytest.raises(RunError, match="'passed' is False but its checks say otherwise"):
        read_card(path)
    for change, message in [  # a card edited to claim the protocol, or to drop what it deviates in
        ({"deviations": ["2 seed(s), the protocol asks for 3"]}, "'conforms' is True but its deviations are ['2 seed"),
        ({"conforms": False}, "'conforms' is False but its deviations are []"),
        ({"runs": {**card["runs"], "seeds": {"0": {"train": "r"}}}}, "has 1 seed(s) of 360 test examples; its pro"),
        ({"clean": {**card["clean"], "n": 90}}, "'conforms' is true but it has 3 seed(s) of 90 test examples; its"),
    ]:
        path.write_text(json.dumps({**card, **change}))
        with pytest.raises(RunError, match=re.escape(message)):
            read_card(path)
    path.write_text(json.dumps({**card, "advbayes_card": 99}))
    with pytest.raises(RunError, match=r"expected a result card of schema 1 \(advbayes_card\), got 99"):
        read_card(path)
    with pytest.raises(RunError, match=r"bad\.json: key 'clean' is missing"):
        write_card({k: v for k, v in card.items() if k != "clean"}, tmp_path / "bad.json")
    assert not (tmp_path / "bad.json").exists()  # nothing invalid is written


def _set(path: str, value: Any) -> Any:
    """An edit of the card: the value at a dotted path (a radius's key, as '0.05', is one step)."""

    def edit(card: dict[str, Any]) -> None:
        *parents, last = re.split(r"(?<![0-9])\.|\.(?![0-9])", path)  # a dot between digits is in a radius
        node = card
        for key in parents:
            node = node[key]
        node[last] = value

    return edit


LINF = "threat_models.Linf.radii.0.05"
EXPECTED_LINF = (
    "threat_models.Linf: expected norm, headline and radii ('inf', '0.05', ['0.05', '0.1']) (its protocol's)"
)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            _set("clean.value", 1.5),
            "clean: expected value and seed_sd 0.950000 and 0.000000 (its seed_values' mean and sd), got 1.500000 and",
        ),
        (_set("clean.seed_sd", 0.02), "clean: expected value and seed_sd 0.950000 and 0.000000"),
        (_set("clean.seed_values", [0.95, 0.95]), "clean.seed_values: expected one per seed (3), got 2"),
        (_set("clean.seed_values", [0.95, 0.95, 0.9501]), "clean.seed_values: expected accuracies of 360 examples"),
        (_set("clean.seed_values", [0.95, 0.95, 1.05]), "clean.seed_values: expected accuracies of 360 examples"),
        (_set("clean.interval", [0.96, 0.99]), "clean.interval: expected [low, high] in [0, 1] around its value 0.95"),
        (_set("clean.interval", [0.9, 1.2]), "clean.interval: expected [low, high] in [0, 1] around its value 0.95"),
        (_set("clean.interval", [0.9]), "clean.interval: expected [low, high] in [0, 1] around its value 0.95"),
        (_set(f"{LINF}.n", 0), f"{LINF}.n: expected at least 1 test example, got 0"),
        (
            _set(f"{LINF}.by_attack", {"x": 0.4, "y": 0.6}),
            f"{LINF}: the worst case over its attacks (0.5) is above x's (0.4)",
        ),
        (_set(f"{LINF}.by_attack", {"x": 1.2}), f"{LINF}.by_attack: expected accuracies in [0, 1], got {{'x': 1.2}}"),
        (
            _set("threat_models.Linf.headline", "0.3"),
            f"{EXPECTED_LINF}, got ('inf', '0.3'",
        ),
        (
            _set("threat_models.Linf.radii", {}),
            f"{EXPECTED_LINF}, got ('inf', '0.05', [])",
        ),
        (_set("threat_models.Linf.norm", "2"), "threat_models.Linf: expected norm, headline and radii ('inf'"),
        (
            lambda card: card["threat_models"].pop("L2"),
            "threat_models: expected ['L2', 'Linf'] (its protocol's), got ['Linf']",
        ),
        (
            lambda card: card.update(runs={**card["runs"], "seeds": {}}, conforms=False, deviations=["d"]),
            "runs.seeds: expected the runs of at least one seed, got none",
        ),
    ],
)
def test_an_accuracy_or_threat_model_that_contradicts_itself_or_its_protocol_is_refused_in_one_line(
    tmp_path: Path, edit: Any, message: str
) -> None:
    """Before this check a card whose headline radius was not among its radii crashed the page (KeyError), and one
    stating an accuracy of 1.5 or an interval that missed its value was ranked and drawn as given."""
    card = make_card("bnn", 0.5)
    edit(card)
    path = tmp_path / "bnn.json"
    path.write_text(json.dumps(card))
    with pytest.raises(RunError) as raised:
        read_card(path)
    assert str(raised.value).startswith(f"{path}: {message}") and "\n" not in str(raised.value)
    with pytest.raises(RunError, match=re.escape(message[:40])):
        write_card(card, tmp_path / "written.json")
    assert not (tmp_path / "written.json").exists()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.integers(0, 1), min_size=1, max_size=60), min_size=1, max_size=5), st.data())
def test_every_accuracy_bench_computes_passes_the_readers_check(per_seed: list[list[int]], data: Any) -> None:
    """summary() (the writer) and stat_problem() (the reader) agree on every count, seed number and n."""
    n = len(per_seed[0])
    per_seed = [(verdicts * n)[:n] for verdicts in per_seed]  # the same n on every seed, as a card has
    stat = summary(per_seed)
    assert stat_problem(stat, len(per_seed)) is None
    shift = data.draw(st.sampled_from([1e-6, -1e-6, 0.5 / n]))
    assert stat_problem({**stat, "value": stat["value"] + shift}, len(per_seed)) is not None


LEAVES = st.sampled_from(["text", 7, 0.5, None, True, [1], {"a": 1}])


@settings(max_examples=60, deadline=None)
@given(st.randoms(use_true_random=False), LEAVES)
def test_fuzz_any_value_of_the_wrong_kind_is_refused_in_one_line_naming_its_key(rng: random.Random, bad: Any) -> None:
    card = make_card("bnn", 0.5)
    node, path = card, []
    while isinstance(node, dict) and node:  # walk down to a random leaf
        key = rng.choice(sorted(node))
        if not isinstance(node[key], (dict, list)) or not node[key] or key == "params":
            break
        path.append(key)
        node = node[key]
    if isinstance(node, list) or key == "params" or type(node[key]) is type(bad) or isinstance(node[key], (list, dict)):
        return  # a list, the defense's free-form parameters, or a replacement of the same kind: nothing to refuse
    if isinstance(node[key], float) and type(bad) is int and not isinstance(bad, bool):
        return  # an integer is a number
    node[key] = bad
    where = ".".join(["card.json", *path, key])
    with pytest.raises(RunError) as raised:
        read_card_from(card)
    message = str(raised.value)
    assert "\n" not in message and message.startswith("card.json") and key in message, message
    assert message.startswith(where) or key in ("advbayes_card", "passed", "status"), message  # checked as a whole


def read_card_from(card: dict[str, Any]) -> dict[str, Any]:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "card.json"
        path.write_text(json.dumps(card))
        try:
            return read_card(path)
        except RunError as exc:
            raise RunError(str(exc).replace(str(path), "card.json")) from None


def test_the_page_ranks_each_threat_model_and_the_same_cards_give_the_same_bytes(tmp_path: Path) -> None:
    cards = [make_card("masked", 0.99, passed=False), make_card("low", 0.40), make_card("high", 0.60)]
    index = write_leaderboard(cards, tmp_path / "a")
    write_leaderboard(list(reversed(cards)), tmp_path / "b")
    for page in ("index.html", "digits--high.html", "digits--masked.html"):
        assert (tmp_path / "a" / page).read_bytes() == (tmp_path / "b" / page).read_bytes()
    text = index.read_text()
    rows = [text.index(f'href="digits--{name}.html"') for name in ("high", "low", "masked")]
    assert rows == sorted(rows)  # within each threat model: high, low, then the card with a failed check
    assert text.count('data-threat="Linf"') == 3 and text.count('data-threat="L2"') == 3
    assert "failed: gradient-masking" in text and "class=failed" in text
    detail = (tmp_path / "a" / "digits--high.html").read_text()
    assert (
        "<svg" in detail and "eps (inf norm; 0: clean accuracy)" in detail and "rhigh" in detail
    )  # figure, run id unlinked
    linked = write_leaderboard(cards, tmp_path / "c", ui="http://127.0.0.1:5000").parent / "digits--high.html"
    assert 'href="http://127.0.0.1:5000/#/experiments/1/runs/rhigh"' in linked.read_text()
    dom = rendered_dom(index.as_uri())
    if dom is None:
        pytest.skip("no chromium here: the page's HTML was checked, its rendering was not")
    visible = dom.split("<tbody>")[1]
    assert visible.count("hidden") == 3  # the filters show one threat model of the two (L2, first by name)


@pytest.mark.slow
def test_bench_places_a_third_party_plugins_defense_on_the_page_in_one_command(isolated_cwd: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(
        cli,
        ["bench", "rse", "--dataset", "digits", "--seeds", "0", "--set", "epochs=3", "--set", "dataset.n_test=120"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.stderr
    card = read_card(isolated_cwd / "cards" / "digits--rse.json")
    assert card["stochastic"] and card["defense"]["params"]["use"] == "rse"
    assert card["deviations"] == [
        "1 seed(s), the protocol asks for 3",
        "120 test examples, the protocol asks for the full split of 360",
        "--set dataset.n_test=120",
    ]
    assert not card["conforms"] and card["clean"]["n"] == 120
    assert card["defense"]["settings"] == ["epochs=3", "dataset.n_test=120"]  # epochs: the defense's configuration
    assert set(card["runs"]["seeds"]["0"]) == {"twin", "train", "Linf", "L2"}
    linf = card["threat_models"]["Linf"]["radii"]["0.05"]
    assert set(linf["by_attack"]) == {
        "autoattack-rand-linf", "eot-pgd-10-linf", "eot-pgd-40-linf", "transfer-pgd-40-linf"
    }  # fmt: skip
    assert linf["value"] <= min(linf["by_attack"].values()) <= card["clean"]["value"]  # the worst case per example
    assert "Linf eps 0.05:" in result.stdout and "off the protocol: 1 seed(s)" in result.stdout
    from_store = runner.invoke(cli, ["leaderboard", "--out", "board"], catch_exceptions=False)
    from_cards = runner.invoke(cli, ["leaderboard", "--cards", "cards", "--out", "board2"], catch_exceptions=False)
    assert from_store.exit_code == 0 and from_cards.exit_code == 0, from_store.stderr + from_cards.stderr
    for page in ("index.html", "digits--rse.html"):
        assert (isolated_cwd / "board" / page).read_bytes() == (isolated_cwd / "board2" / page).read_bytes()
    exported = runner.invoke(cli, ["export", "--cards", "cards", "--out", "records"], catch_exceptions=False)
    assert exported.exit_code == 0 and exported.stdout.startswith("4 run records"), exported.output
    assert sorted(p.name.split("-")[0] for p in (isolated_cwd / "records" / "digits--rse").iterdir()) == [
        "L2", "Linf", "train", "twin"
    ]  # fmt: skip
    checked = runner.invoke(cli, ["leaderboard", "--cards", "cards", "--records", "records", "--out", "board3"])
    assert checked.exit_code == 0 and "1 card(s) re-derived" in checked.stderr, checked.output
    empty = runner.invoke(cli, ["leaderboard", "--cards", "board", "--out", "x"])
    assert empty.exit_code == 2 and "no result cards in board: advbayes bench ENTRY makes one" in empty.stderr


def test_make_leaderboard_regenerates_the_committed_pages_from_the_shipped_cards(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    cards = root / "docs" / "leaderboard" / "cards"
    records = root / "docs" / "leaderboard" / "records"  # as make leaderboard: each card re-derived from its runs
    result = CliRunner().invoke(
        cli, ["leaderboard", "--cards", str(cards), "--records", str(records), "--out", str(tmp_path)]
    )
    assert result.exit_code == 0 and "9 card(s) re-derived" in result.stderr, result.output
    shipped = sorted(p.name for p in (root / "docs" / "leaderboard").glob("*.html"))
    assert shipped == sorted(p.name for p in tmp_path.glob("*.html"))  # no stale page of an earlier card
    for name in shipped:
        assert (tmp_path / name).read_bytes() == (root / "docs" / "leaderboard" / name).read_bytes(), name


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (
            ["bnnn"],
            "Error: ENTRY 'bnnn': no such defense entry or component; did you mean 'bnn' or 'd3-bnn'? (advbayes list defenses",
        ),
        (
            ["bnn", "--dataset", "cifar"],
            "Error: --dataset 'cifar': no leaderboard protocol for it (there are: mnist-5k,",
        ),
        (["bnn", "--seeds", "0,x"], "Error: --seeds: expected integers separated by commas, e.g. 0,1,2, got '0,x'"),
        (["bnn", "--seeds", "1,1"], "Error: --seeds: expected distinct seeds, got [1, 1]"),
    ],
)
def test_a_bad_bench_is_one_line_before_any_work(isolated_cwd: Path, args: list[str], error: str) -> None:
    result = CliRunner().invoke(cli, ["bench", *args])
    assert result.exit_code == 2 and result.stderr.startswith(error), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (isolated_cwd / "mlflow.db").exists()


BROKEN_DEFENSE_PLUGIN = """
from typing import ClassVar
import attrs
from advbayes import Defense, hookimpl

@attrs.frozen(kw_only=True)
class Broken(Defense):
    name: ClassVar[str] = "broken-loss"

    def loss(self, model, batch, context):
        raise ValueError("the plugin's loss is wrong")

@hookimpl
def register_defenses(register):
    register(Broken)
"""


def test_a_defense_that_fails_in_training_stops_the_bench_before_its_twin_is_trained(
    isolated_cwd: Path, plugin_site: Path
) -> None:
    """The defense trains before its twin: a third-party defense's bug costs its first step, not a twin's training."""
    install_fixture_plugin(plugin_site, "advbayes-fixture-broken-loss", BROKEN_DEFENSE_PLUGIN)
    result = CliRunner().invoke(cli, ["bench", "broken-loss", "--dataset", "digits", "--seeds", "0"])
    assert result.exit_code == 1 and "the plugin's loss is wrong" in result.stderr, result.stderr
    assert "training the deterministic twin" not in result.output and "seed 0: training" in result.output
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{isolated_cwd / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.data.tags["advbayes.defense"] for r in runs] == ["broken-loss"]  # no twin run
    assert runs[0].info.status == "FAILED"


@pytest.mark.slow
def test_bench_of_a_tracked_run_attacks_its_trained_model_beside_a_twin_trained_on_its_settings(
    isolated_cwd: Path,
) -> None:
    import advbayes

    store = f"sqlite:///{isolated_cwd / 'mlflow.db'}"
    settings = {"defense": "bnn", "epochs": 2, "until_converged": False, "dataset.n_test": 90, "seed": 4}
    settings["dataset.n_train"] = 600  # trained on fewer digits than the protocol's: the card must say so
    with pytest.warns(advbayes.EvaluationWarning):
        source = advbayes.run("bench-digits", tracking_uri=store, **settings)
    assert isinstance(source, advbayes.RunResult) and source.run_id is not None
    small = ["--registry", str(SMALL_ATTACKS)]  # the protocol's sub-attacks at small budgets: marked on the card
    result = CliRunner().invoke(cli, ["bench", source.run_id, "--dataset", "digits", *small], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    card = read_card(isolated_cwd / "cards" / "digits--bnn.json")
    assert f"{SMALL_ATTACKS} changes the protocol's attack 'autoattack-rand'" in card["deviations"]
    assert not [d for d in card["deviations"] if "was trained by" in d]  # the source run is this code's
    trained = f"run {source.run_id} was trained with dataset.n_train = '600', which the protocol does not set"
    assert trained in card["deviations"] and f"off the protocol: {trained}" in result.stdout + result.stderr
    runs = card["runs"]["seeds"]["4"]
    assert runs["source"] == source.run_id and set(runs) == {"source", "twin", "Linf", "L2"}
    from mlflow import MlflowClient

    for threat in ("Linf", "L2"):  # evaluations of the tracked model itself (its checkpoint), not of a retrained one
        assert MlflowClient(store).get_run(runs[threat]).data.tags["advbayes.resumed_from"] == source.run_id
    assert "90 test examples, the protocol asks for the full split of 360" in card["deviations"]
    posterior = {c["name"]: c for c in card["checks"]}["converged-posterior"]
    assert posterior["status"] == "failed" and not card["passed"]  # 2 epochs: no verdict can show convergence
    exported = CliRunner().invoke(cli, ["export", "--cards", "cards", "--out", "records"], catch_exceptions=False)
    assert exported.exit_code == 0, exported.output  # the tracked run's card re-derives from its runs (its Linf: clean)
    checked = CliRunner().invoke(cli, ["leaderboard", "--cards", "cards", "--records", "records", "--out", "board"])
    assert checked.exit_code == 0 and "1 card(s) re-derived" in checked.stderr, checked.output
    (isolated_cwd / "claimed").mkdir()  # by hand: write_card refuses a card that contradicts itself
    (isolated_cwd / "claimed" / "digits--bnn.json").write_text(json.dumps({**card, "deviations": [], "conforms": True}))
    claimed = CliRunner().invoke(cli, ["leaderboard", "--cards", "claimed", "--records", "records", "--out", "board"])
    assert claimed.exit_code == 2 and claimed.stderr == (
        "Error: claimed/digits--bnn.json: 'conforms' is true but it has 1 seed(s) of 90 test examples; its protocol "
        "asks for 3 of 360\n"
    )  # a card edited to claim the protocol is caught as it is read
    moons = advbayes.run("moons", tracking_uri=store, epochs=1)
    assert isinstance(moons, advbayes.RunResult)
    other = CliRunner().invoke(cli, ["bench", str(moons.run_id), "--dataset", "digits"])
    assert other.exit_code == 2
    assert f"Error: run {moons.run_id}: trained on data set 'half-moons', not 'digits'" in other.stderr


def test_a_tracked_run_trained_or_resumed_by_other_code_than_the_bench_is_a_deviation() -> None:
    """A card names one commit: a benched run that other code trained (or resumed) is off the protocol."""
    from advbayes.lab.bench import trained_by_other_code
    from advbayes.tracking.runs import RESUMED_CODE_TAG

    mine = {"advbayes.git_commit": "a" * 40, "advbayes.git_dirty": "false", "advbayes.version.advbayes": "0.9"}
    assert trained_by_other_code("r1", dict(mine), mine) == []
    other = {**mine, "advbayes.git_commit": "b" * 40, "advbayes.git_dirty": "true"}
    assert trained_by_other_code("r1", other, mine) == [
        "run r1 was trained by commit bbbbbbbbbbbb with uncommitted changes, advbayes 0.9, this bench runs commit "
        "aaaaaaaaaaaa, advbayes 0.9"
    ]
    resumed = {**mine, RESUMED_CODE_TAG: "commit cccccccccccc, advbayes 0.9"}
    assert trained_by_other_code("r1", resumed, mine) == ["run r1 was resumed with commit cccccccccccc, advbayes 0.9"]
