"""Transfer attacks: from a defense trained earlier in the run, and from a tracked MLflow run."""

from __future__ import annotations

import attrs
import pytest
import torch

import advbayes
from advbayes.testing import create_plugin_manager, plugin_registry

FAST = {"epochs": 2, "dataset.train_size": 300, "dataset.test_size": 200, "eps": [0.0, 0.3]}
FGSM_TRANSFER = {"use": "transfer", "name": "fgsm-from-standard", "source": "standard", "attack": {"use": "fgsm"}}


def fgsm_accuracy(source, target, dataset_spec, eps: float) -> float:
    """Independent reference: FGSM crafted on `source`, accuracy of `target` on it."""
    registry = plugin_registry()
    x, y = registry.build("datasets", dataset_spec).data("test").tensors
    x_req = x.clone().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(source(x_req, samples=1)[0], y, reduction="sum")
    (gradient,) = torch.autograd.grad(loss, x_req)
    with torch.no_grad():
        predictions = target(x + eps * gradient.sign(), samples=1)[0].argmax(-1)
    return (predictions == y).double().mean().item()


def test_transfer_from_a_defense_trained_earlier_in_the_experiment() -> None:
    group = advbayes.run(
        "moons",
        track=False,
        pm=create_plugin_manager(),
        defense=None,
        defenses=["standard", {"use": "standard", "name": "other"}],
        attacks=["fgsm", FGSM_TRANSFER],
        model={"use": "mlp", "widths": [16]},
        **FAST,
    )
    standard, other = group.results
    # transfer from a model to itself is the white-box attack
    assert standard.table()["fgsm-from-standard"] == standard.table()["fgsm"]
    assert other.table()["fgsm-from-standard"][0.3] == pytest.approx(
        fgsm_accuracy(standard.model, other.model, other.spec["dataset"], 0.3), abs=1e-6
    )


def test_transfer_from_a_tracked_run(store: str) -> None:
    pm = create_plugin_manager()
    source = advbayes.run("moons", tracking_uri=store, pm=pm, model={"use": "mlp", "widths": [8]}, **FAST)
    target = advbayes.run(
        "moons",
        tracking_uri=store,
        pm=pm,
        seed=3,
        attacks=[{**FGSM_TRANSFER, "source": f"run:{source.run_id}"}],
        **FAST,
    )
    assert target.table()["fgsm-from-standard"][0.3] == pytest.approx(
        fgsm_accuracy(source.model.cpu(), target.model, target.spec["dataset"], 0.3), abs=1e-6
    )


def test_an_unknown_transfer_source_is_a_clear_error() -> None:
    with pytest.raises(
        advbayes.RunError,
        match=r"uses source 'nobody', which is not a defense trained before 'standard' "
        r"\(trained before it: none\); list it earlier in `defenses`, or give run:<RUN_ID>",
    ):
        advbayes.run(
            "moons", track=False, pm=create_plugin_manager(), attacks=[{**FGSM_TRANSFER, "source": "nobody"}], **FAST
        )
    registry = plugin_registry()
    unbound = registry.build("attacks", registry.resolve("attacks", FGSM_TRANSFER, where=("t", "t", "t")))
    with pytest.raises(advbayes.RunError, match="used before bind"):
        attrs.evolve(unbound, eps=0.1)(None, torch.zeros(1, 2), torch.zeros(1, dtype=torch.long))


def test_an_unknown_or_tampered_tracked_source_fails_before_training(store: str) -> None:
    """run:<RUN_ID> sources are loaded in the pre-run checks: an unknown id, and a model/entry.toml that is not the
    entry advbayes logged, are one-line errors from the pre-run checks (nothing is tracked for them)."""
    from pathlib import Path

    from mlflow import MlflowClient

    pm = create_plugin_manager()
    unknown = {**FGSM_TRANSFER, "source": "run:0123456789abcdef0123456789abcdef"}
    with pytest.raises(
        advbayes.RunError,
        match=r"uses source 'run:0123456789abcdef0123456789abcdef': (no tracking store|tracked run \w+: no such run)",
    ):
        advbayes.run("moons", tracking_uri=store, pm=pm, attacks=[unknown], **FAST)
    assert MlflowClient(store).search_experiments(filter_string="name = 'moons'") == []  # nothing was tracked
    source = advbayes.run("moons", tracking_uri=store, pm=pm, model={"use": "mlp", "widths": [8]}, **FAST)
    entry = Path(MlflowClient(store).get_run(source.run_id).info.artifact_uri.removeprefix("file://")) / "model"
    (entry / "entry.toml").write_text('experiment = "moons"\nmodel = "mlp"\n')
    tampered = {**FGSM_TRANSFER, "source": f"run:{source.run_id}"}
    with pytest.raises(advbayes.RunError, match=r"its model/entry.toml has no `dataset` entry table"):
        advbayes.run("moons", tracking_uri=store, pm=pm, attacks=[tampered], **FAST)
    with pytest.raises(
        advbayes.RunError,
        match=r"uses source 'run:0123456789abcdef0123456789abcdef': (no tracking store|tracked run \w+: no such run)",
    ):
        advbayes.run("moons", track=False, tracking_uri=store, pm=pm, attacks=[unknown], **FAST)
