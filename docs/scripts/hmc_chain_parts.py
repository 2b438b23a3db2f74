"""Which quantities keep the HMC chains of hmc-mlp-mnist-5k apart: the parts behind its convergence verdict.

The verdict (posterior/converged) is the split R-hat of the log-likelihood and of the predicted log-probabilities of
32 training examples, all at once, and (since commit 76bdb4b) the variance of the weights whose posterior is the
prior. This script reloads each run's stored samples (the newest run per seed) and recomputes that R-hat, then its
parts: the log-likelihood alone, the true and the other classes' log-probabilities, the weight vector's norm per
chain (unchanged by permuting units), how often the samples predict the probe examples' labels, the logits' scale,
the variance of the weights on pixels that are zero in every training digit over the prior's, and how far a weight
moves per iteration. Runs tracked from commit c85ef6a on did not log the norm's and the log-likelihood's R-hat
(posterior/hmc_loglik_r_hat and hmc_norm_r_hat); later runs do.

Usage: python docs/scripts/hmc_chain_parts.py [--store sqlite:///mlflow.db] [--experiment hmc-mlp-mnist-5k]
"""

from __future__ import annotations

import argparse

import torch
from pyro.ops.stats import split_gelman_rubin
from tracked_split import experiment_split, newest_models  # docs/scripts/tracked_split.py, beside this script

from advbayes_advbnn.hmc import (
    PROBE,
    chain_diagnostics,
    full_batch_log_likelihood,
    function_space,
    prior_only_check,
    prior_only_weights,
)


def r_hat(values: torch.Tensor) -> torch.Tensor:
    """Split R-hat of every quantity of [chains, N, Q] (nan where no sample changed it)."""
    return split_gelman_rubin(values.double(), chain_dim=0, sample_dim=1)


def main() -> None:
    """Print, per seed, the verdict's R-hat recomputed beside the logged one, and its parts."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="sqlite:///mlflow.db")
    parser.add_argument("--experiment", default="hmc-mlp-mnist-5k")
    args = parser.parse_args()
    pm, spec, x, y, _ = experiment_split(args.experiment, "train")
    n = int(spec["defense"].get("max_train", 10_000))  # the chains' full batch: at most max_train examples
    x, y = x[:n], y[:n]
    for run, model in newest_models(pm, args.store, args.experiment):
        chains = int(run.data.params.get("defense.chains", spec["defense"].get("chains", 2)))
        kept = model.stored[: int(model.filled)].view(chains, -1, model.stored.shape[-1])  # chain after chain
        net = model.net
        function = function_space(net, full_batch_log_likelihood(net, x, y), x[:PROBE], kept)
        ll = function[..., 0]  # [chains, N]
        log_probs = function[..., 1:].unflatten(-1, (PROBE, -1))  # [chains, N, PROBE, classes]
        true = torch.zeros(log_probs.shape[-2:], dtype=torch.bool)
        true[torch.arange(PROBE), y[:PROBE]] = True
        verdict = chain_diagnostics(function)["r_hat_max"]
        sigma = float(run.data.params.get("defense.prior_sigma", spec["defense"].get("prior_sigma", 1.0)))
        mask = prior_only_weights(net, x)
        ratio, tolerance = prior_only_check(kept, mask, sigma)
        parts = r_hat(log_probs.flatten(2)).view(true.shape)
        norms = kept.norm(dim=-1)
        logged = run.data.metrics.get("model/posterior/hmc_r_hat_max", float("nan"))
        lines = [
            f"verdict's R-hat: recomputed {verdict:.3f}, logged {logged:.3f}",
            f"log-likelihood: R-hat {chain_diagnostics(ll.unsqueeze(-1))['r_hat_max']:.4f}, per chain mean "
            + ", ".join(f"{v:.1f}" for v in ll.mean(1)),
            f"true classes' log-probabilities (those not saturated at 0): R-hat max {finite_max(parts[true])}",
            f"other classes' log-probabilities: R-hat max {finite_max(parts[~true])}, median "
            f"{parts[~true].nanmedian():.2f}, mean value {log_probs[:, :, ~true].mean():.1f}",
            f"weight norm: R-hat {chain_diagnostics(norms.unsqueeze(-1))['r_hat_max']:.3f}; per chain, first -> last "
            + ", ".join(f"{c[0]:.1f} -> {c[-1]:.1f}" for c in norms),
            f"samples predicting the probe's labels: {(log_probs.argmax(-1) == y[:PROBE]).float().mean():.4f}; "
            f"logits' sd over classes, mean {log_probs.std(-1).mean():.1f}",  # log_softmax shifts each row
            f"weights on pixels zero in every training digit ({int(mask.sum())}, posterior = prior): variance over "
            f"the prior's {ratio:.3f} (a posterior: 1 +- {tolerance:.3f}); per chain "
            + ", ".join(f"{prior_only_check(chain, mask, sigma)[0]:.3f}" for chain in kept),
            "a weight's move per kept iteration (root mean square over weights and iterations), per chain: "
            + ", ".join(f"{(chain[1:] - chain[:-1]).square().mean().sqrt():.4f}" for chain in kept),
        ]
        seed = run.data.tags.get("advbayes.seed", "?")
        print(f"seed {seed} (run {run.info.run_id[:8]}, {kept.shape[1]} kept samples per chain):")
        print("\n".join(f"  {line}" for line in lines))


def finite_max(values: torch.Tensor) -> str:
    """The largest finite value, or nan when there is none."""
    finite = values[values.isfinite()]
    return f"{finite.max():.3f}" if finite.numel() else "nan"


if __name__ == "__main__":
    main()
