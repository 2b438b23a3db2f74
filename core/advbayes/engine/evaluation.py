"""Evaluation: every attack (x S_A, S_I sweeps) at every eps, verdicts on fresh draws, metrics, the checks."""

from __future__ import annotations

from typing import Any

import attrs
import torch

from advbayes.batches import Batches
from advbayes.checks import Finding, evaluation_findings, warn
from advbayes.components import Attack, EvalBatch
from advbayes.engine.building import RunParts
from advbayes.engine.checkpoints import Checkpoints, set_rng_state
from advbayes.engine.distributed import total
from advbayes.errors import RunError
from advbayes.progress import progress_bar
from advbayes.results import EvalRecord, eps_label, pack_outcomes
from advbayes.stochastic import is_stochastic, predict, predict_repeated


class BarStatus:
    """EvalContext.status: what the running attack is doing inside a batch, shown on its progress bar (cleared when
    the batch ends)."""

    def __init__(self) -> None:
        self.bar: Any = None

    def __call__(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(text)


class Evaluator:
    """The run's evaluation: attacks at every eps, predictions on S_I fresh draws (R times when asked), metrics.
    It holds what the evaluation finds (records so far, whether the model is stochastic, the checks' findings)."""

    def __init__(self, parts: RunParts, checkpoints: Checkpoints, history: list[dict[str, float]]) -> None:
        self.parts = parts
        self.checkpoints = checkpoints
        self.history = history  # the trainer's: every evaluation checkpoint carries it
        self.records_so_far: list[EvalRecord] = []  # finished so far (shown when a run is interrupted)
        self.stochastic = False  # probed on the first test batch before evaluation
        self.timed_sizes: set[tuple[int, int, int]] = set()  # (S_A, S_I x R, batch) whose first call has been made
        self.findings: list[Finding] = []
        self.status = BarStatus()  # the attacks' EvalContext.status

    def sample_sweep(self, attack: Attack) -> list[tuple[int, int]]:
        """(S_A, S_I) combinations: the experiment's sweeps, or the attack's and the defense's own counts."""
        attack_samples = list(self.parts.experiment.attack_samples) or [attack.attack_samples]
        inference_samples = list(self.parts.experiment.inference_samples) or [self.parts.defense.inference_samples]
        return [(a, i) for a in attack_samples for i in inference_samples]

    def evaluate(self, net: torch.nn.Module, test: Batches) -> list[EvalRecord]:
        """Every attack (x every S_A, S_I of a sweep) at every eps of the experiment; metrics on S_I fresh draws.

        Afterwards the randomness and masking checks run on the records; their findings are warned and kept.
        """
        parts = self.parts
        net.eval()
        records: list[EvalRecord] = []
        context = parts.eval_context(net, status=self.status)
        self.stochastic = first_batch_is_stochastic(self.parts, net, test)
        metrics = [(name, metric.bind(context)) for name, metric in parts.metrics if metric.per_attack]
        evaluated: dict[str, Attack] = {}
        # a resumed run: attacks whose records the checkpoint holds are not run again (their child runs exist)
        done = self.checkpoints.finished_evaluations()
        self.records_so_far = records
        for attack_name, unbound in parts.attacks:
            attack_bound = unbound.bind(context)
            combinations = self.sample_sweep(attack_bound)
            for attack_samples, inference_samples in combinations:
                label = (
                    attack_name if len(combinations) == 1 else f"{attack_name}:sa{attack_samples}:si{inference_samples}"
                )  # MLflow-safe
                attack_base = attrs.evolve(attack_bound, attack_samples=attack_samples)
                evaluated[label] = attack_base
                if label in done:
                    records.extend(EvalRecord.from_dict(record) for record in done[label]["records"])
                    set_rng_state(done[label]["rng"], net)  # as if it had just run, the network's draws too
                    continue
                attack_records, figures = self.evaluate_attack(
                    net, test, label, attack_base, inference_samples, metrics
                )
                attack_records = [attrs.evolve(r, entry=attack_name) for r in attack_records]
                records.extend(attack_records)
                parts.pm.hook.evaluation_finished(
                    run=parts.info, attack_label=label, records=attack_records, figures=figures, attack=label
                )
                self.checkpoints.save_evaluation(net, label, attack_records, self.history)
        self.findings = evaluation_findings(parts.spec["defense"]["name"], records, evaluated, self.stochastic)
        if parts.place.leader:  # the same findings on every rank: said once
            warn(self.findings)
        return records

    def evaluate_attack(
        self,
        net: torch.nn.Module,
        test: Batches,
        label: str,
        attack_base: Attack,
        inference_samples: int,
        metrics: list[tuple[str, Any]],
    ) -> tuple[list[EvalRecord], dict[str, Any]]:
        """One attack at one (S_A, S_I): records for every eps and the metrics' figures."""
        eps_values = list(self.parts.experiment.eps) or [attack_base.eps]
        figures: dict[str, Any] = {}
        attack_records: list[EvalRecord] = []
        measured = eps_values if attack_base.uses_eps else eps_values[:1]
        with progress_bar(
            len(test) * len(measured), "img", f"{self.parts.label} {label}", enabled=self.parts.progress
        ) as bar:
            self.status.bar = bar
            for eps in measured:
                if attack_base.uses_eps:
                    bar.set_description(f"{self.parts.label} {label} eps {eps:g}")
                attack = attrs.evolve(
                    attack_base,
                    eps=eps,
                    value_range=self.parts.dataset.value_range,
                    inference_samples=inference_samples,
                    prediction_average=self.parts.defense.prediction_average,
                )
                states = {name: metric.create().to(self.parts.device) for name, metric in metrics}
                values, metric_figures, (l2_sum, linf_max, count, zero_share), outcomes = self.measure(
                    net, test, attack, eps, states, bar, inference_samples
                )
                figures.update({f"{metric}/{eps_label(eps)}/{file}": f for (metric, file), f in metric_figures.items()})
                for reported in [eps] if attack_base.uses_eps else eps_values:
                    attack_records.append(
                        EvalRecord(
                            attack_label=label,
                            eps=reported,
                            metrics=values,
                            attack_samples=attack.attack_samples,
                            inference_samples=inference_samples,
                            mean_l2=l2_sum / max(count, 1),
                            max_linf=linf_max,
                            examples=count,
                            diagnostics={} if zero_share is None else {"zero_grad_share": zero_share},
                            per_example=outcomes,
                        )
                    )
        self.status.bar = None
        return attack_records, figures

    def evaluate_model(self, net: torch.nn.Module, test: Batches) -> tuple[dict[str, float], dict[str, Any]]:
        """Metrics of the model itself (per_attack = False), once on the clean test split."""
        context = self.parts.eval_context(net)
        states = {
            name: metric.bind(context).create().to(self.parts.device)
            for name, metric in self.parts.metrics
            if not metric.per_attack
        }
        if not states:
            return {}, {}
        clean = self.parts.registry.build("attacks", {"name": "none", "use": "none"})  # the built-in clean "attack"
        values, metric_figures, _, _ = self.measure(net, test, clean, 0.0, states)
        return values, {f"{metric}/{file}": figure for (metric, file), figure in metric_figures.items()}

    def measure(
        self,
        net: torch.nn.Module,
        test: Batches,
        attack: Attack,
        eps: float,
        states: dict[str, Any],
        bar: Any = None,
        inference_samples: int | None = None,
    ) -> tuple[dict[str, float], dict[tuple[str, str], Any], tuple[float, float, int, float | None], dict[str, str]]:
        """Attack the test split, predict on S_I fresh draws (R times when the attack asks), update the metric states.

        Returns the metric values, their figures by (metric, file), the applied perturbation (sum of L2 lengths,
        max L_inf, examples), the share of exactly-zero input-gradient components the attack reported (None when it
        reports none: no gradient), and the metrics' per-example outcomes packed as hex (results.pack_outcomes).
        """
        inference_samples = inference_samples or self.parts.defense.inference_samples
        average = self.parts.defense.prediction_average
        repeats = attack.verdict_repeats if self.stochastic else 1
        l2_sum, linf_max, count, zero_sum = 0.0, 0.0, 0, 0.0
        gradients = False  # whether the attack reports its zero-gradient share (gradient attacks do)
        sizes = (attack.attack_samples, inference_samples * repeats, self.parts.experiment.eval_batch_size)
        if bar is not None and self.stochastic and sizes not in self.timed_sizes:
            self.timed_sizes.add(sizes)
            # A stochastic layer's first call at a new (S, B) times its execution strategies: seconds on a CPU
            # (9.6 s vs 0.7 s for a Bayesian mnist-cnn at S 10 x B 256), which made the clean pass look stalled.
            bar.set_postfix_str("first batch: timing each layer's execution, once per size")
        for x, y in test.iterate(self.parts.experiment.eval_batch_size, shuffle=False):
            result = attack(net, x, y)
            repeated = None
            with torch.no_grad():  # fresh draws, independent of the attack's
                if repeats > 1:
                    repeated = predict_repeated(net, result.x_adv, inference_samples, repeats, average)
                    probs = repeated[0]
                else:
                    probs, _ = predict(net, result.x_adv, inference_samples, average)
            batch = EvalBatch(
                model=net,
                x=x,
                y=y,
                result=result,
                probs=probs,
                attack=attack,
                eps=eps,
                inference_samples=inference_samples,
                device=self.parts.device,
                prediction_average=average,
                repeated_probs=repeated,
            )
            for state in states.values():
                state.update(batch)
            flat = result.delta.detach().flatten(1)
            l2_sum += float(flat.norm(dim=1).sum())
            linf_max = max(linf_max, float(flat.abs().amax())) if flat.numel() else linf_max
            count += len(y)
            zero_sum += float(result.diagnostics.get("zero_grad_share", 0.0)) * len(y)
            gradients = gradients or "zero_grad_share" in result.diagnostics
            if bar is not None:
                bar.set_postfix_str("", refresh=False)
                bar.update(len(y))
        values: dict[str, float] = {}
        figures: dict[tuple[str, str], Any] = {}
        outcomes: dict[str, str] = {}
        for metric_name, state in states.items():  # compute() gathers a sharded evaluation's states over ranks
            values.update({key: float(value) for key, value in state.compute().items()})
            if self.parts.place.leader:
                figures.update({(metric_name, file): figure for file, figure in state.figures().items()})
                outcomes.update({key: pack_outcomes(v) for key, v in state.per_example().items()})
        place = self.parts.place
        l2_sum, linf_max, zero_sum = total(l2_sum, place), total(linf_max, place, "max"), total(zero_sum, place)
        count = int(total(count, place))
        zero_share = zero_sum / max(count, 1) if gradients else None
        return values, figures, (l2_sum, linf_max, count, zero_share), outcomes


def first_batch_is_stochastic(parts: RunParts, net: torch.nn.Module, test: Batches) -> bool:
    """Whether two identical calls of the network on the first test batch differ."""
    first = next(iter(test.iterate(parts.experiment.eval_batch_size, shuffle=False)), None)
    return first is not None and is_stochastic(net, first[0])


def check_attacks_fit(parts: RunParts, net: torch.nn.Module, test: Batches) -> None:
    """Before training: an attack that can only judge a deterministic model must not meet a stochastic one."""
    needs = [(name, attack.deterministic_only(parts.build_attack)) for name, attack in parts.attacks]
    needs = [(name, sub) for name, sub in needs if sub is not None]
    if not needs:
        return
    if first_batch_is_stochastic(parts, net.eval(), test):
        name, sub = needs[0]
        raise RunError(
            f"experiments.{parts.name}: attack '{name}' ({sub}) judges single evaluations, but defense "
            f"'{parts.spec['defense']['name']}' gives a stochastic model; use autoattack-rand for it"
        )
