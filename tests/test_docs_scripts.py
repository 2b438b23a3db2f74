"""The scripts docs/findings.md cites (docs/scripts), run as a reader runs them, on a small store of their own."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import torch

import advbayes
from advbayes import first_examples
from advbayes.engine.building import tracked_model
from advbayes.plugins import create_plugin_manager
from advbayes.registry import load_registry

SCRIPTS = Path(__file__).resolve().parents[1] / "docs" / "scripts"


def test_gradient_saturation_measures_a_deterministic_and_a_stochastic_network(tmp_path: Path) -> None:
    """It failed on a deterministic network (one draw where it expected 20); its clean accuracy is the model's own."""
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    pm = create_plugin_manager()
    group = advbayes.run("moons", tracking_uri=store, pm=pm, defense=None, defenses=["standard", "bnn"], epochs=2)
    assert isinstance(group, advbayes.RunGroup)
    done = subprocess.run(
        [sys.executable, str(SCRIPTS / "gradient_saturation.py"), "moons", "--store", store, "--examples", "64",
         "--attacks", "fgsm"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    runs = re.split(r"\n(?=\S)", done.stdout.strip())
    assert sorted(block.split(" seed")[0] for block in runs) == ["bnn", "standard"], done.stdout
    standard = next(block for block in runs if block.startswith("standard"))
    run_id = next(r.run_id for r in group.results if r.spec["defense"]["name"] == "standard")
    assert f"(run {run_id[:8]})" in standard
    registry = load_registry(pm=pm)
    x, y = first_examples(registry.build("datasets", registry.resolve_experiment("moons")["dataset"]).data("test"), 64)
    model = tracked_model(pm, run_id, store, torch.device("cpu"))
    with torch.no_grad():  # deterministic: one draw is the prediction
        expected = float((model(x, samples=1)[0].argmax(-1) == y).double().mean())
    clean = re.search(r"clean (\d\.\d{3})", standard)
    assert clean is not None and float(clean.group(1)) == round(expected, 3)
    for block in runs:
        fgsm = re.search(r"fgsm: (\d\.\d{3})", block)
        assert fgsm is not None and 0.0 <= float(fgsm.group(1)) <= 1.0
