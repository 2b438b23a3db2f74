"""Training: one epoch loop (progress bar, divergence check, epoch means) that serves both the run's defense and
the plain cross-entropy source model of offline defenses, checkpoints, and every random state they hold."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable

import torch

from advbayes.batches import Batches
from advbayes.components import LossOutput, TrainContext
from advbayes.engine.building import RunParts
from advbayes.engine.checkpoints import Checkpoints, rng_state, set_rng_state
from advbayes.engine.distributed import mean_over_ranks, sharded_loss
from advbayes.errors import RunError
from advbayes.losses import mean_cross_entropy
from advbayes.posterior import WIDTH_KEY, ConvergenceVerdict, convergence_verdict, width_statistics
from advbayes.posterior.convergence import loss_change
from advbayes.posterior.optimizers import OptimizerSteps, make_optimizer
from advbayes.progress import on_terminal, progress_bar
from advbayes.stochastic import as_sampled

STEPS_PER_CHECK = 10  # the loss is synced to the host (finite? progress text) every this many steps


def train_epochs(
    net: torch.nn.Module,
    train: Batches,
    loss: Callable[[torch.nn.Module, tuple[torch.Tensor, torch.Tensor]], LossOutput],
    optimizer: OptimizerSteps,
    *,
    epochs: int,
    batch_size: int,
    generator: torch.Generator,
    label: str,
    progress: bool,
    start_epoch: int = 0,
    context: TrainContext | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    announce: bool = True,
    reduce: Callable[[dict[str, float]], dict[str, float]] | None = None,
    stop: Callable[[], bool] | None = None,
) -> None:
    """Epochs `start_epoch + 1 .. epochs` of `loss`: a progress bar (or one line per epoch without a terminal),
    a divergence check, then `on_epoch(epoch, means of the loss and its parts, the posterior's width, images/s,
    seconds)`; training ends early when `stop()` says so after an epoch."""
    for epoch in range(start_epoch, epochs):
        if stop is not None and stop():
            break
        if context is not None:
            context.epoch = epoch + 1
        net.train()
        sums: dict[str, torch.Tensor] = {}
        seen = 0
        started = time.perf_counter()
        with progress_bar(len(train), "img", f"{label} epoch {epoch + 1}/{epochs}", enabled=progress) as bar:
            for step, (x, y) in enumerate(train.iterate(batch_size, shuffle=True, generator=generator)):
                if context is not None:
                    context.step += 1
                with optimizer.sampling():
                    output = loss(net, (x, y))
                    optimizer.zero_grad()
                    output.loss.backward()
                optimizer.step()
                batch = len(y)
                seen += batch
                for key, value in {"loss": output.loss, **output.parts}.items():
                    value = torch.as_tensor(value).detach().float()
                    sums[key] = sums.get(key, 0.0) + value * batch
                bar.update(batch)
                if step % STEPS_PER_CHECK == 0:
                    loss_now = float(output.loss.detach())
                    if not math.isfinite(loss_now):
                        raise RunError(f"training diverged: loss is {loss_now} at epoch {epoch + 1}, step {step + 1}")
                    rate = seen / max(time.perf_counter() - started, 1e-9)
                    bar.set_postfix_str(short_postfix(sums, seen, rate), refresh=False)
            elapsed = time.perf_counter() - started
            metrics = {k: float(v) / max(seen, 1) for k, v in sums.items()}
            if not math.isfinite(metrics.get("loss", 0.0)):
                raise RunError(f"training diverged: mean loss is {metrics['loss']} in epoch {epoch + 1}")
            metrics.update(width_statistics(net))  # empty for a network without Gaussian weights
            metrics["images_per_s"] = seen / max(elapsed, 1e-9)
            metrics["epoch_seconds"] = elapsed
            if reduce is not None:  # a distributed run: the means of whole batches, not of this rank's shards
                metrics = reduce(metrics)
        if announce and not (progress and on_terminal()):  # a terminal's bar shows it; logs get the line
            # the posterior's width per layer kind goes to MLflow; the line keeps the overall mean and quantiles
            parts = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k.count("/") < 2)
            print(f"{label} epoch {epoch + 1}/{epochs}: {parts}", file=sys.stderr)
        if on_epoch is not None:
            on_epoch(epoch + 1, metrics)


def short_postfix(sums: dict[str, torch.Tensor], seen: int, rate: float) -> str:
    """The training bar's postfix: loss, accuracy when the defense reports one, images/s. The other loss parts
    go to the per-epoch line and MLflow; on the bar they pushed the bar itself off a 150-column terminal."""
    text = f"loss {float(sums['loss']) / seen:.4g}"
    for key in ("acc", "accuracy"):
        if key in sums:
            text += f", acc {float(sums[key]) / seen:.3f}"
            break
    return f"{text}, {rate:.0f} img/s"


class Trainer:
    """The run's training with checkpoints after every epoch, the convergence verdict on its history, and the
    source-model training of -Off defenses. It holds the history and the initial width; the parts it only reads."""

    def __init__(self, parts: RunParts, checkpoints: Checkpoints) -> None:
        self.parts = parts
        self.checkpoints = checkpoints
        resumed = parts.checkpoint
        self.history: list[dict[str, float]] = list(resumed["history"]) if resumed else []
        self.initial_width = 0.0  # the posterior's mean width before the first epoch (set by train)

    def train(self, net: torch.nn.Module, train: Batches, context: TrainContext) -> None:
        """Epochs of defense.loss; checkpoint and epoch_finished after each (a resumed run continues its states)."""
        parts, resumed = self.parts, self.parts.checkpoint
        experiment = parts.experiment
        optimizer = make_optimizer(experiment, parts.defense, net, n_train=context.n_train)
        start_epoch = 0
        saved_width = resumed.get("initial_width") if resumed is not None else None
        # before any epoch (and after IVON set the widths): a resumed run keeps the width it started from
        self.initial_width = (
            float(saved_width) if saved_width is not None else width_statistics(net).get(WIDTH_KEY, 0.0)
        )
        if resumed is not None and resumed.get("optimizer") is not None:
            optimizer.load_state_dict(resumed["optimizer"])
            start_epoch = int(resumed["epoch"])
            set_rng_state(resumed["rng"], net)
        generator = torch.Generator().manual_seed(experiment.seed)
        if resumed is not None and "generator" in resumed:
            generator.set_state(resumed["generator"])

        def finished(epoch: int, metrics: dict[str, float]) -> None:
            self.history.append({"epoch": epoch, **metrics})
            if not parts.place.leader:  # rank 0 alone checkpoints and reports
                return
            path = self.checkpoints.save_epoch(net, optimizer, generator, epoch, self.history, self.initial_width)
            parts.pm.hook.checkpoint_saved(run=parts.info, checkpoint=path)  # first: whatever interrupts, it is kept
            parts.pm.hook.epoch_finished(run=parts.info, epoch=epoch, metrics=metrics, checkpoint=path)

        def loss(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> LossOutput:
            return parts.defense.loss(model, batch, context)

        train_epochs(
            net,
            train,
            sharded_loss(net, loss, parts.place) if parts.place.active else loss,
            optimizer,
            epochs=experiment.epochs,
            batch_size=experiment.batch_size,
            generator=generator,
            label=parts.label,
            progress=parts.progress,
            start_epoch=start_epoch,
            context=context,
            on_epoch=finished,
            announce=parts.place.leader,
            reduce=(lambda metrics: mean_over_ranks(metrics, parts.place)) if parts.place.active else None,
            stop=self.converged if experiment.until_converged else None,
        )

    def finish_training(self, net: torch.nn.Module, context: TrainContext) -> dict[str, float]:
        """The defense's after_training, once: its metrics and the changed model are checkpointed, so a resumed run
        takes them from the checkpoint instead of running it again."""
        last = self.checkpoints.last_state
        if last is not None and "trained_metrics" in last:
            return {k: float(v) for k, v in last["trained_metrics"].items()}
        metrics = self.parts.defense.after_training(net, context)
        if metrics is None:
            return {}
        metrics = {k: float(v) for k, v in metrics.items()}
        if self.parts.place.leader:
            state = self.checkpoints.latest(net, self.history)
            state.update(model=net.state_dict(), rng=rng_state(net), trained_metrics=metrics)
            path = self.checkpoints.write(state)
            self.parts.pm.hook.checkpoint_saved(run=self.parts.info, checkpoint=path)
        return metrics

    def converged(self) -> bool:
        """True once the posterior's verdict on the epochs so far says converged; for a network without Gaussian
        weights (an experiment's deterministic defenses), once its loss has settled by the same rule."""
        verdict = self.verdict()
        if verdict is not None:
            return verdict.converged
        losses = [float(h["loss"]) for h in self.history if "loss" in h]
        experiment = self.parts.experiment
        return loss_change(losses, experiment.convergence_window) < experiment.convergence_tol

    def verdict(self) -> ConvergenceVerdict | None:
        """The posterior's convergence verdict on the epochs so far (None for a network without Gaussian weights)."""
        experiment = self.parts.experiment
        return convergence_verdict(
            self.history, self.initial_width, tol=experiment.convergence_tol, window=experiment.convergence_window
        )

    def fit(self, model: torch.nn.Module, train: Batches, epochs: int) -> torch.nn.Module:
        """Train a deterministic `model` with plain cross-entropy (Adam, lr 1e-3, the experiment's batch size),
        through the same epoch loop as the run."""
        model = as_sampled(model).to(self.parts.device).train()
        train_epochs(
            model,
            train,
            lambda net, batch: LossOutput(loss=mean_cross_entropy(net(batch[0]), batch[1])),
            OptimizerSteps(torch.optim.Adam(model.parameters(), lr=1e-3)),
            epochs=epochs,
            batch_size=self.parts.experiment.batch_size,
            generator=torch.Generator().manual_seed(self.parts.experiment.seed),
            label=f"{self.parts.label} source model",
            progress=self.parts.progress,
        )
        return model.eval()
