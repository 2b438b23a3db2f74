"""How far each optimizer moves a variational posterior: Adam (one lr for all), Adam with a scale-parameter group,
IVON; each trained until converged (or a cap), then clean and EOT-PGD accuracy.

    python benchmarks/posterior_optimizers.py --network dnf      # Daubener & Fischer's BNN mlp, full ELBO
    python benchmarks/posterior_optimizers.py --network advbnn   # Adv-BNN on mnist-cnn (PGD-10 in training)

Prints one table row per optimizer and writes the per-epoch history (mean and quantiles of sigma^2, the loss and
its parts) as JSON and a figure of sigma^2 and loss per epoch (benchmarks/results/).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import advbayes
from advbayes.posterior.optimizers import adam_width_cap

NETWORKS: dict[str, dict[str, Any]] = {
    # Daubener & Fischer's BNN of sampling-fashion-style: mlp 2 x 128, full ELBO (alpha 1, prior N(0, 1)), 5 draws
    "dnf": {
        "experiment": "sampling-fashion-style",
        "set": {
            "defenses": [{"extends": "bnn-full-elbo", "name": "bnn", "train_samples": 5}],
            "seeds": [],
            "attack_samples": [],
            "inference_samples": [],
            "metrics": ["accuracy"],
        },
        "cap": 300,
    },
    # Adv-BNN of advbnn-mnist-5k: mnist-cnn, alpha 1/50, prior 0.15, PGD-10 examples at eps 0.1 in training
    "advbnn": {
        "experiment": "advbnn-mnist-5k",
        "set": {"defenses": ["adv-bnn"], "seeds": [], "metrics": ["accuracy"]},
        "cap": 60,
    },
}
CONFIGS: dict[str, dict[str, Any]] = {
    "adam": {"optimizer": "adam", "lr": 0.001},
    "adam+scale_lr 0.01": {"optimizer": "adam", "lr": 0.001, "scale_lr": 0.01},
    "adam+scale_lr 0.03": {"optimizer": "adam", "lr": 0.001, "scale_lr": 0.03},
    "ivon lr 0.1": {"optimizer": "ivon", "lr": 0.1},
    "ivon lr 0.1 beta2 0.99 clip 1e-3": {"optimizer": "ivon", "lr": 0.1, "ivon_beta2": 0.99, "ivon_clip_radius": 1e-3},
}


def run_config(network: str, config: str, cap: int, n_test: int, seed: int) -> dict[str, Any]:
    """Train one configuration until converged (at most `cap` epochs); evaluate clean and EOT-PGD-10 at eps 0.1."""
    spec = NETWORKS[network]
    overrides = {
        **spec["set"],
        **CONFIGS[config],
        "epochs": cap,
        "until_converged": True,
        "seed": seed,
        "attacks": ["none", "eot-pgd-10"],
        "eps": [0.1],
        "dataset.n_test": n_test,
    }
    started = time.perf_counter()
    result = advbayes.run(spec["experiment"], track=False, **overrides)
    result = result.results[0] if hasattr(result, "results") else result
    seconds = time.perf_counter() - started
    accuracy = result.table("accuracy")
    steps_per_epoch = math.ceil(float(result.spec["dataset"].get("n_train") or 0) / float(result.spec["batch_size"]))
    return {
        "network": network,
        "config": config,
        "settings": CONFIGS[config],
        "epochs": len(result.history),
        "seconds": seconds,
        "converged": bool(result.model_metrics.get("posterior/converged", 0.0)),
        "clean": next(iter(accuracy["none"].values())),
        "eot_pgd_10": accuracy["eot-pgd-10"][0.1],
        "width_over_initial": result.model_metrics.get("posterior/width_over_initial"),
        "adam_cap": adam_width_cap(0.001, steps_per_epoch * len(result.history)),
        "history": result.history,
    }


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """sigma^2 (mean, with the 10-90 % band) and the loss per epoch, a line per optimizer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (width, loss) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=120)
    for row in rows:
        epochs = [h["epoch"] for h in row["history"]]
        mean = [h["posterior/sigma2_mean"] for h in row["history"]]
        line = width.plot(epochs, mean, label=row["config"])[0]
        low = [h["posterior/sigma2_q10"] for h in row["history"]]
        high = [h["posterior/sigma2_q90"] for h in row["history"]]
        width.fill_between(epochs, low, high, color=line.get_color(), alpha=0.15)
        loss.plot(epochs, [h["loss"] for h in row["history"]], label=row["config"], color=line.get_color())
    width.set_yscale("log")
    width.set_xlabel("epoch")
    width.set_ylabel("sigma^2 (mean; band q10-q90)")
    loss.set_yscale("log")
    loss.set_xlabel("epoch")
    loss.set_ylabel("training loss (negative ELBO per example)")
    width.legend(fontsize=7)
    figure.suptitle(f"{rows[0]['network']}: posterior width and loss per epoch", fontsize=9)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", choices=sorted(NETWORKS), default="dnf")
    parser.add_argument("--configs", nargs="*", default=list(CONFIGS), help=f"of {', '.join(CONFIGS)}")
    parser.add_argument("--cap", type=int, default=None, help="most epochs (default: the network's)")
    parser.add_argument("--n-test", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    unknown = [c for c in args.configs if c not in CONFIGS]
    if unknown:
        parser.error(f"unknown config(s) {unknown}; known: {list(CONFIGS)}")
    cap = args.cap or NETWORKS[args.network]["cap"]
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    print("| optimizer | epochs | converged | mean sigma^2 | x initial | clean | EOT-PGD-10 eps 0.1 | s |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for config in args.configs:
        row = run_config(args.network, config, cap, args.n_test, args.seed)
        rows.append(row)
        last = row["history"][-1]
        print(
            f"| {config} | {row['epochs']} | {row['converged']} | {last['posterior/sigma2_mean']:.3g} | "
            f"{row['width_over_initial']:.3g} | {row['clean']:.3f} | {row['eot_pgd_10']:.3f} | {row['seconds']:.0f} |",
            flush=True,
        )
        (args.out / f"posterior_optimizers_{args.network}.json").write_text(json.dumps(rows, indent=1))
    plot(rows, args.out / f"posterior_optimizers_{args.network}.png")


if __name__ == "__main__":
    main()
