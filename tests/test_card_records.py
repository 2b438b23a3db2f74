"""Result cards re-derived from their runs' records (advbayes export --cards; leaderboard --records): the shipped
cards against the shipped records, a hand-written worst case, and every kind of tampering caught in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from advbayes.cli import cli
from advbayes.errors import RunError
from advbayes.lab.card_records import verify_cards
from advbayes.lab.cards import read_card
from advbayes.results import pack_outcomes, unpack_outcomes

BOARD = Path(__file__).resolve().parents[1] / "docs" / "leaderboard"


def by_hand(records: Path, threat: str, eps: float) -> list[float]:
    """Per seed, the share of test digits right under every attack of `threat` at `eps`, from the records' raw rows."""
    values = []
    for path in sorted(records.glob(f"{threat}-seed*.json")):
        rows = json.loads(path.read_text())["examples"]
        attacked = [r for r in rows if r["attack"] != "none" and float(r["eps"]) == eps and r["metric"] == "accuracy"]
        survived = [all(bits) for bits in zip(*(unpack_outcomes(r["outcomes"], int(r["n"])) for r in attacked))]
        values.append(sum(survived) / len(survived))
    return values


def test_every_shipped_card_is_what_its_shipped_runs_give() -> None:
    cards = [read_card(path) for path in sorted((BOARD / "cards").glob("*.json"))]
    assert len(cards) >= 9 and verify_cards(cards, BOARD / "records") == len(cards)
    card = read_card(BOARD / "cards" / "digits--adv-bnn.json")  # and the headline, computed here from the raw rows
    for threat, section in card["threat_models"].items():
        stated = section["radii"][section["headline"]]
        derived = by_hand(BOARD / "records" / "digits--adv-bnn", threat, float(section["headline"]))
        assert sorted(derived) == pytest.approx(sorted(stated["seed_values"]), abs=1e-12)
        assert sum(derived) / len(derived) == pytest.approx(stated["value"], abs=1e-12)


@pytest.fixture
def bnn(tmp_path: Path) -> tuple[dict[str, Any], Path]:
    """The shipped bnn card and a copy of its runs' records to tamper with."""
    shutil.copytree(BOARD / "records" / "digits--bnn", tmp_path / "records" / "digits--bnn")
    return read_card(BOARD / "cards" / "digits--bnn.json"), tmp_path / "records"


def edit(path: Path, change: Any) -> None:
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))


def flip_first_survivor(record: dict[str, Any]) -> None:
    """One test digit that survived autoattack-rand at the first radius now counts as broken."""
    row = next(r for r in record["examples"] if r["attack"].startswith("autoattack-rand"))
    outcomes = unpack_outcomes(row["outcomes"], int(row["n"]))
    outcomes[outcomes.index(1)] = 0
    row["outcomes"] = pack_outcomes(outcomes)


def test_one_changed_verdict_in_one_run_is_caught_naming_the_card_and_key(bnn: tuple[dict[str, Any], Path]) -> None:
    card, records = bnn
    edit(next((records / "digits--bnn").glob("Linf-seed1-*.json")), flip_first_survivor)
    with pytest.raises(RunError) as caught:
        verify_cards([card], records)
    message = str(caught.value)
    assert message.startswith("card digits--bnn: key 'threat_models.Linf.radii.0.05.")
    assert "the card says" in message and "its runs' records give" in message and "\n" not in message


def test_a_card_whose_own_number_was_edited_is_caught(bnn: tuple[dict[str, Any], Path]) -> None:
    card, records = bnn
    card["clean"]["value"] += 0.01
    with pytest.raises(RunError, match=r"^card digits--bnn: key 'clean.value': the card says 0\.9"):
        verify_cards([card], records)


def test_an_edited_seed_value_names_the_seeds_values_not_an_index_of_their_sorted_order(
    bnn: tuple[dict[str, Any], Path],
) -> None:
    card, records = bnn
    stated = list(card["clean"]["seed_values"])
    card["clean"]["seed_values"][1] = max(stated) + 0.01
    with pytest.raises(RunError) as caught:
        verify_cards([card], records)
    message = str(caught.value)
    assert message.startswith("card digits--bnn: key 'clean.seed_values': the card says [")
    assert repr(sorted(stated))[:20] in message  # the values its runs give, whole


def test_a_finding_the_card_does_not_report_fails_its_check(bnn: tuple[dict[str, Any], Path]) -> None:
    card, records = bnn
    key = "advbayes.check.zero-gradients.eot-pgd-10-l2"

    def masked(record: dict[str, Any]) -> None:
        record["tags"][key] = "run x, attack eot-pgd-10-l2, every eps: 80 % of input-gradient components are zero"

    edit(next((records / "digits--bnn").glob("L2-seed0-*.json")), masked)
    with pytest.raises(RunError, match="check gradient-masking: the card says passed, its runs' records give failed"):
        verify_cards([card], records)


def test_an_unconverged_posterior_fails_the_card_that_says_converged(bnn: tuple[dict[str, Any], Path]) -> None:
    card, records = bnn
    edit(
        next((records / "digits--bnn").glob("train-seed2-*.json")),
        lambda r: r["metrics"].update({"model/posterior/converged": 0.0}),
    )
    with pytest.raises(
        RunError, match="check converged-posterior: the card says passed, its runs' records give failed"
    ):
        verify_cards([card], records)


def test_a_missing_run_and_another_commit_are_each_one_line(bnn: tuple[dict[str, Any], Path]) -> None:
    card, records = bnn
    trains = sorted((records / "digits--bnn").glob("train-seed*.json"))
    edit(trains[0], lambda r: r["tags"].update({"advbayes.git_commit": "0" * 40}))
    with pytest.raises(RunError, match="its seeds' runs were tagged with different code"):
        verify_cards([card], records)
    for train in trains[1:]:
        edit(train, lambda r: r["tags"].update({"advbayes.git_commit": "0" * 40}))
    commit = card["provenance"]["advbayes.git_commit"][:7]
    with pytest.raises(RunError, match=f"key 'provenance.advbayes.git_commit': the card says '{commit}"):
        verify_cards([card], records)
    trains[0].unlink()
    train_run = card["runs"]["seeds"]["0"]["train"]
    with pytest.raises(RunError, match=rf"^card digits--bnn: run {train_run} \(seed 0, train\) has no record$"):
        verify_cards([card], records)


def test_leaderboard_with_records_refuses_a_card_its_runs_contradict(bnn: tuple[dict[str, Any], Path]) -> None:
    card, records = bnn
    cards = records.parent / "cards"
    cards.mkdir()
    shutil.copy(BOARD / "cards" / "digits--bnn.json", cards)
    runner = CliRunner()
    first = records.parent / "first"
    good = runner.invoke(cli, ["leaderboard", "--cards", str(cards), "--records", str(records), "--out", str(first)])
    assert good.exit_code == 0 and "1 card(s) re-derived from their runs' records" in good.stderr, good.stderr
    assert (first / "digits--bnn.html").exists()
    edit(next((records / "digits--bnn").glob("L2-seed2-*.json")), flip_first_survivor)
    out = records.parent / "board"
    bad = runner.invoke(cli, ["leaderboard", "--cards", str(cards), "--records", str(records), "--out", str(out)])
    assert bad.exit_code != 0 and "card digits--bnn: key 'threat_models.L2.radii.0.25." in bad.stderr, bad.stderr
    assert not out.exists()  # nothing written from a card its runs contradict
    neither = runner.invoke(cli, ["export", "--out", str(out)])
    assert neither.exit_code == 2 and "name EXPERIMENTS or give --cards FOLDER" in neither.stderr


def test_a_verdict_without_its_accuracy_in_the_results_is_one_line(bnn: tuple[dict[str, Any], Path]) -> None:
    card, records = bnn
    path = next((records / "digits--bnn").glob("Linf-seed0-*.json"))

    def drop_autoattack_accuracy(record: dict[str, Any]) -> None:
        attack, metric = record["result_columns"].index("attack"), record["result_columns"].index("metric")
        record["results"] = [
            row for row in record["results"] if not (row[attack].startswith("autoattack") and row[metric] == "accuracy")
        ]

    edit(path, drop_autoattack_accuracy)
    linf_run = card["runs"]["seeds"]["0"]["Linf"]
    with pytest.raises(
        RunError, match=rf"^run {linf_run}: its results hold no accuracy of autoattack-rand-linf at eps"
    ):
        verify_cards([card], records)


def weaken(record: dict[str, Any]) -> None:
    """autoattack-rand's APGD-CE ran 10 steps, not the protocol's 100 (say, from a --registry file)."""
    key = next(k for k in record["params"] if k.endswith(".attacks.apgd-ce.steps"))
    record["params"][key] = "10"


def drop_dlr(record: dict[str, Any]) -> None:
    """autoattack-rand ran without its APGD-DLR half."""
    record["params"] = {k: v for k, v in record["params"].items() if ".attacks.apgd-dlr." not in k}


def add_fgsm(record: dict[str, Any]) -> None:
    """The run attacked with an attack the protocol does not have."""
    record["params"].update({"attacks.fgsm.use": "fgsm", "attacks.fgsm.name": "fgsm"})


def fewer_training_digits(record: dict[str, Any]) -> None:
    """The network was trained on 100 digits (a --set dataset.n_train of the run benched)."""
    record["params"]["dataset.n_train"] = "100"


def test_a_conforming_card_whose_runs_another_experiment_trained_is_caught(bnn: tuple[dict[str, Any], Path]) -> None:
    card, records = bnn
    edit(next((records / "digits--bnn").glob("twin-seed0-*.json")), lambda r: r.update({"experiment": "moons"}))
    with pytest.raises(RunError, match=r"follows protocol 1, but seed 0: run \w+ \(twin\) is of experiment moons, not"):
        verify_cards([card], records)


@pytest.mark.parametrize(
    "change, fragment",
    [
        (weaken, "has attacks.autoattack-rand-l2.attacks.apgd-ce.steps = '10', the protocol's is '100'"),
        (drop_dlr, "has no attacks.autoattack-rand-l2.attacks.apgd-dlr.attack_samples, the protocol's is '1'"),
        (add_fgsm, "has attacks.fgsm.name = 'fgsm', which the protocol does not set"),
        (fewer_training_digits, "has dataset.n_train = '100', which the protocol does not set"),
    ],
    ids=["weaker", "sub-attack-dropped", "attack-added", "training-set-cut"],
)
def test_a_card_that_says_it_follows_the_protocol_is_held_to_its_attacks(
    bnn: tuple[dict[str, Any], Path], change: Any, fragment: str
) -> None:
    """Before, a card benched with a --registry file that weakened autoattack-rand said it followed the protocol, and
    its records re-derived it as stated: every number was its runs', made with other attacks than the protocol's."""
    card, records = bnn
    edit(next((records / "digits--bnn").glob("L2-seed2-*.json")), change)
    with pytest.raises(RunError) as caught:
        verify_cards([card], records)
    message = str(caught.value)
    assert message.startswith("card digits--bnn: the card says it follows protocol 1, but seed 2, L2: run ")
    assert message.endswith(fragment) and "\n" not in message
    off = {**card, "conforms": False, "deviations": ["small_attacks.toml changes the protocol's attack 'autoattack'"]}
    assert verify_cards([off], records) == 1  # a card marked off the protocol states no such thing
