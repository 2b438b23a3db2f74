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
