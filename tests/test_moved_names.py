"""Names that moved keep working for one release (CHANGELOG.md): old modules warn and hand out the same objects."""

from __future__ import annotations

import importlib
import sys

import pytest


@pytest.mark.parametrize(
    ("old", "new", "name"),
    [
        ("advbayes.sweep_ray", "advbayes.sweep.runner", "execute"),
        ("advbayes.tracking_commands", "advbayes.tracking.commands", "add_commands"),
        ("advbayes.compare", "advbayes.tracking.compare", "compare_table"),
        ("advbayes.report", "advbayes.lab.report", "write_report"),
        ("advbayes.claims", "advbayes.lab.claims", "load_claims"),
        ("advbayes.figures", "advbayes.lab.figures", "experiment_figure"),
    ],
)
def test_a_moved_module_warns_once_imported_and_hands_out_the_new_objects(old: str, new: str, name: str) -> None:
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=f"{old} moved to {new}"):
        moved = importlib.import_module(old)
    assert getattr(moved, name) is getattr(importlib.import_module(new), name)
    with pytest.raises(AttributeError):
        moved.no_such_name  # noqa: B018 - an unknown name is still an AttributeError


def test_names_that_changed_home_without_a_warning_are_the_same_objects() -> None:
    import advbayes
    import advbayes.cli
    import advbayes.cli_options
    import advbayes.engine
    import advbayes.results
    import advbayes.sweep
    import advbayes.sweep.plan
    import advbayes.tracking
    import advbayes.tracking.hooks
    import advbayes.tracking.store

    assert advbayes.RunInfo is advbayes.engine.RunInfo is advbayes.results.RunInfo
    assert advbayes.cli.tracking_option is advbayes.cli_options.tracking_option
    assert advbayes.sweep.plan_sweep is advbayes.sweep.plan.plan_sweep
    assert advbayes.tracking.client_for is advbayes.tracking.store.client_for
    assert advbayes.tracking.run_started is advbayes.tracking.hooks.run_started  # the plugin's hooks, by the same name


def test_renamed_registry_keys_keep_working_with_a_warning_and_build_the_same_attack() -> None:
    from advbayes.testing import build_entry

    with pytest.warns(DeprecationWarning, match="key 'samples' is now 'attack_samples'"):
        old = build_entry("attacks", {"use": "pgd", "samples": 7})
    assert old == build_entry("attacks", {"use": "pgd", "attack_samples": 7})
    with pytest.warns(DeprecationWarning, match="key 'repeats' is now 'verdict_repeats'"):
        ensemble = build_entry("attacks", {"extends": "autoattack-rand", "repeats": 2, "samples": 3})
    assert (ensemble.verdict_repeats, ensemble.attack_samples) == (2, 3)  # the child's old names beat the parent's
    with pytest.warns(DeprecationWarning, match="Attack.samples is now"):
        assert old.samples == 7


def test_a_renamed_key_given_under_both_names_is_one_clear_error() -> None:
    from advbayes.testing import assert_one_clear_error, build_entry

    assert_one_clear_error(
        lambda: build_entry("attacks", {"use": "pgd", "samples": 2, "attack_samples": 3}), "key 'samples'", "not both"
    )


def test_an_old_key_in_an_override_replaces_the_current_one() -> None:
    from advbayes.registry import load_registry

    registry = load_registry()
    with pytest.warns(DeprecationWarning):
        spec = registry.resolve_experiment("moons", [("attacks.none.samples", 4)])
    assert spec["attacks"][0]["attack_samples"] == 4 and "samples" not in spec["attacks"][0]


def test_gaussian_noise_is_no_longer_called_eps() -> None:
    import torch

    from advbayes import GaussianParameter

    parameter = GaussianParameter(torch.zeros(3), 0.1)
    noise = torch.ones(2, 3)
    with pytest.warns(DeprecationWarning, match="GaussianParameter.eps is now GaussianParameter.noise"):
        parameter.eps = noise
    assert parameter.noise is noise
    with pytest.warns(DeprecationWarning):
        assert parameter.eps is noise
