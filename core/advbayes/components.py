"""The five component interfaces (Dataset, Model, Defense, Attack, Metric) and the records they exchange."""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar

import attrs
import torch
from torch import nn
from torch.utils.data import Dataset as TorchDataset
from torch.utils.data import Subset, TensorDataset

from advbayes.errors import RunError
from advbayes.metric_state import MetricState
from advbayes.params import param
from advbayes.stochastic.sampled import as_sampled, undeclared_sample_dimension

SUBSET_SEED = 20190101  # subsets are the same in every run, whatever the run's seed


@attrs.frozen(kw_only=True)
class Component:
    """Base of every registered component: an attrs configuration whose fields are its registry parameters."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = ""

    @classmethod
    def summary(cls) -> str:
        """The first line of the class docstring."""
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""

    def model_sources(self) -> tuple[str, ...]:
        """Models this component takes from elsewhere (a defense trained earlier in the experiment, "run:<id>"),
        checked before any work; empty for most components."""
        return ()


# ---------------------------------------------------------------------------------------------- records


@attrs.frozen(kw_only=True)
class AttackResult:
    """What an attack returns: adversarial inputs, the applied perturbation and diagnostics."""

    x_adv: torch.Tensor
    delta: torch.Tensor
    diagnostics: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class LossOutput:
    """A defense's training loss and its named parts (logged per epoch; read after the loss's backward, so a
    gradient hook may fill one in)."""

    loss: torch.Tensor
    parts: Mapping[str, float | torch.Tensor] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class EvalBatch:
    """One attacked test batch, as every metric sees it; `probs` are predictions on x_adv with S_I fresh draws.

    `repeated_probs` [R, B, k] holds R independent such predictions (the first is `probs`) when the attack asks
    for R > 1 verdicts on a stochastic model; None otherwise.
    """

    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    result: AttackResult
    probs: torch.Tensor
    attack: Attack
    eps: float
    inference_samples: int
    device: torch.device
    prediction_average: str = "probs"
    repeated_probs: torch.Tensor | None = None


@attrs.define(kw_only=True)
class ModelSources:
    """Models a component may use besides the one it works on: defenses trained earlier in this run, tracked runs."""

    models: Mapping[str, nn.Module] = attrs.field(factory=dict)
    load_tracked_model: Callable[[str], nn.Module] | None = None

    def source_model(self, source: str) -> nn.Module:
        """`source` is a defense trained earlier in this experiment or "run:<MLflow run id>"."""
        if source.startswith("run:"):
            if self.load_tracked_model is None:
                raise RunError(f"source '{source}': tracked models cannot be loaded here")
            return self.load_tracked_model(source[len("run:") :])
        if source in self.models:
            return self.models[source]
        available = ", ".join(sorted(self.models)) or "none yet"
        raise RunError(
            f"source '{source}' is not a defense trained earlier in this experiment (trained so far: {available}); "
            "list it before the defenses that use it, or give run:<RUN_ID>"
        )


@attrs.define(kw_only=True)
class TrainContext(ModelSources):
    """What a defense sees during training: data, device, sizes, other models, and how to build registry entries.

    `build_network` gives a fresh deterministic network of the experiment's architecture and `fit` trains one
    with plain cross-entropy (what offline adversarial training needs for its source model).
    """

    dataset: Dataset
    train: TorchDataset
    device: torch.device
    n_train: int
    seed: int
    build_attack: Callable[[Any], Attack]
    build_network: Callable[[], nn.Module] | None = None
    fit: Callable[[nn.Module, int], nn.Module] | None = None
    progress: bool = False
    epoch: int = 0
    step: int = 0


@attrs.define(kw_only=True)
class EvalContext(ModelSources):
    """What an attack or metric may use before evaluation: models trained earlier in this run, tracked models."""

    build_attack: Callable[[Any], Attack]
    device: torch.device
    prediction_average: str = "probs"
    # Where an attack says what it is doing inside a batch (a worst-case attack's sub-attack): the progress bar.
    status: Callable[[str], None] | None = None


# ---------------------------------------------------------------------------------------------- interfaces


@attrs.frozen(kw_only=True)
class Dataset(Component):
    """A data set with train and test splits of float inputs in `value_range` and integer labels."""

    kind: ClassVar[str] = "datasets"
    n_train: int | None = param(None, kind=int, ge=1, optional=True, help="use this many training examples")
    n_test: int | None = param(None, kind=int, ge=1, optional=True, help="use this many test examples")

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        raise NotImplementedError

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input, without the batch dimension."""
        raise NotImplementedError

    @property
    def value_range(self) -> tuple[float, float]:
        """The valid input range attacks clamp to."""
        return (0.0, 1.0)

    def load(self, split: str) -> TorchDataset:
        """The whole split ("train" or "test") as a torch Dataset; a TensorDataset for data held in memory."""
        raise NotImplementedError

    def data(self, split: str) -> TorchDataset:
        """The split with the n_train / n_test subset applied (a fixed seeded choice)."""
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        full = self.load(split)
        limit = self.n_train if split == "train" else self.n_test
        size = len(full)  # type: ignore[arg-type]  # map-style data sets are sized
        if limit is None or limit >= size:
            return full
        generator = torch.Generator().manual_seed(SUBSET_SEED)
        index = torch.randperm(size, generator=generator)[:limit].sort().values
        if isinstance(full, TensorDataset):
            return TensorDataset(*(t[index] for t in full.tensors))
        return Subset(full, index.tolist())


@attrs.frozen(kw_only=True)
class Model(Component):
    """A network builder; normalization lives inside the network so attacks work in the data's value range."""

    kind: ClassVar[str] = "models"

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        """A fresh network for inputs of `input_shape` and `num_classes` outputs."""
        raise NotImplementedError


@attrs.frozen(kw_only=True)
class Defense(Component):
    """A training procedure: prepares the network, then gives the loss of each batch."""

    kind: ClassVar[str] = "defenses"
    default_optimizer: ClassVar[str] = "adam"
    default_lr: ClassVar[float] = 1e-3
    default_scale_lr: ClassVar[float | None] = None  # lr of the posterior's log-sigma group (None: the run's lr)
    prediction_average: ClassVar[str] = "probs"  # "probs": mean softmax over draws; "logits": softmax of mean logits
    inference_samples: int = param(1, kind=int, ge=1, help="S_I: draws averaged at prediction")

    def prepare(self, model: nn.Module) -> nn.Module:
        """Turn the built network into the one this defense trains (e.g. make it Bayesian)."""
        return model

    def before_training(self, context: TrainContext) -> TorchDataset | None:
        """Work done before the first epoch; may return a replacement training split (e.g. offline adversarial data).

        The engine runs it with its own seeded random state, also when a run resumes, so it must be deterministic.
        """
        return None

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], context: TrainContext) -> LossOutput:
        """The training loss of one batch; `model` takes forward(x, samples=S) -> [S, B, k]."""
        raise NotImplementedError

    def after_training(self, model: nn.Module, context: TrainContext) -> Mapping[str, float] | None:
        """Work after the last epoch that changes the model (e.g. drawing HMC samples); returns metrics to log
        ("posterior/converged" 1 or 0 is the posterior's verdict), or None when there is nothing to do.

        It runs once: its result and the model are checkpointed, and a resumed run does not run it again.
        """
        return None


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every module in eval mode for the block, then restore each module's own mode."""
    if not isinstance(model, nn.Module):  # a plain callable has no modes
        yield model
        return
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def _crafting_in_eval_mode(call: Callable[..., AttackResult]) -> Callable[..., AttackResult]:
    """Wrap an attack's __call__ so it crafts on the model in eval mode (BatchNorm running statistics, no
    batch statistics; stochastic layers keep drawing) and leaves the model's modes as they were."""

    @functools.wraps(call)
    def crafted(self: Attack, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> AttackResult:
        with eval_mode(model):
            return call(self, model, x, y)

    crafted.__crafts_in_eval_mode__ = True  # type: ignore[attr-defined]
    return crafted


@attrs.frozen(kw_only=True)
class Attack(Component):
    """An attack: perturbs a batch within an eps ball of the given norm, clamped to the data's value range.

    Every attack crafts on the model in eval mode and restores the model's modes afterwards (as torchattacks
    does), whatever mode the caller left it in. `value_range` defaults to [0, 1] (images); the run engine sets
    the data set's range, and so does `inference_samples` / `prediction_average` (how the defense predicts).
    """

    kind: ClassVar[str] = "attacks"
    uses_eps: ClassVar[bool] = True
    access: ClassVar[str] = "white-box"  # "black-box" (queries or a surrogate only) or "none"; masking checks use it
    eps: float = param(0.0, ge=0.0, help="perturbation budget")
    norm: str = param("inf", kind=str, choices=("inf", "2"), help="'inf' (L_inf) or '2' (L2)")
    attack_samples: int = param(1, kind=int, ge=1, help="S_A: draws the attack averages over")
    value_range: tuple[float, float] = attrs.field(default=(0.0, 1.0), metadata={"internal": True})
    inference_samples: int = attrs.field(default=1, metadata={"internal": True})
    prediction_average: str = attrs.field(default="probs", metadata={"internal": True})

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        call = cls.__dict__.get("__call__")
        if call is not None and not getattr(call, "__crafts_in_eval_mode__", False):
            cls.__call__ = _crafting_in_eval_mode(call)  # type: ignore[method-assign]

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> AttackResult:
        """Adversarial examples for (x, y) against `model` (forward(x, samples=S) -> [S, B, k])."""
        raise NotImplementedError

    @property
    def verdict_repeats(self) -> int:
        """R: independent S_I predictions that judge each attacked example (1 unless the attack asks for more)."""
        return 1

    @property
    def samples(self) -> int:
        """Deprecated name of `attack_samples` (CHANGELOG.md)."""
        warnings.warn("Attack.samples is now Attack.attack_samples", DeprecationWarning, stacklevel=2)
        return self.attack_samples

    def deterministic_only(self, build_attack: Callable[[Any], Attack]) -> str | None:
        """The name of the (sub-)attack that cannot judge a stochastic model, or None; checked before training."""
        return None

    def input_problem(
        self, input_shape: Sequence[int], value_range: tuple[float, float], build_attack: Callable[[Any], Attack]
    ) -> str | None:
        """Why this attack (or a sub-attack) cannot run on a data set's inputs of this shape and value range, or
        None; checked before training (an image-only attack on 2-D points, a [0, 1]-only one on other ranges)."""
        return None

    def classes_problem(self, num_classes: int, build_attack: Callable[[Any], Attack]) -> str | None:
        """Why this attack (or a sub-attack) cannot run on a data set with this many classes, or None; checked
        before training (the DLR loss reads the third largest logit, the targeted one the fourth)."""
        return None

    def bind(self, context: EvalContext) -> Attack:
        """Called once before evaluation; an attack that needs other models or entries returns a bound copy."""
        return self

    def clamp(self, x: torch.Tensor) -> torch.Tensor:
        """Clamp inputs to the data's value range."""
        low, high = self.value_range
        if math.isinf(low) and math.isinf(high):
            return x
        return x.clamp(low, high)


def radius_problem(eps: float, norm: str, value_range: tuple[float, float]) -> str | None:
    """Why an L_inf radius cannot be meant as given: wider than the data's whole value range (eps in other units,
    e.g. 8 for 8/255), or None. L2 radii add over every input, so they may exceed the range."""
    low, high = value_range
    if norm != "inf" or not math.isfinite(high - low) or eps <= high - low:
        return None
    return (
        f"eps {eps:g} is wider than the data's value range [{low:g}, {high:g}]: an L_inf radius is in the data's "
        f"units (8/255 is {8 / 255:.7f})"
    )


@attrs.frozen(kw_only=True)
class Metric(Component):
    """A metric configuration; create() gives a fresh MetricState (metric_state.py) updated with EvalBatch records."""

    kind: ClassVar[str] = "metrics"
    per_attack: ClassVar[bool] = True  # False: it describes the model, computed once on the clean test split

    def create(self) -> MetricState:
        """A fresh metric state."""
        raise NotImplementedError

    def bind(self, context: EvalContext) -> Metric:
        """Called once before evaluation; a metric that needs other models or entries returns a bound copy."""
        return self


BASES: dict[str, type[Component]] = {
    "datasets": Dataset,
    "models": Model,
    "defenses": Defense,
    "attacks": Attack,
    "metrics": Metric,
}


def prepared_model(dataset: Dataset, builder: Model, defense: Defense) -> nn.Module:
    """The network a run trains: the model entry built for the data set's inputs and classes, prepared by the
    defense, with a sample dimension (one function for the run, its pre-run checks and a tracked model's load)."""
    network = builder.build(tuple(dataset.input_shape), int(dataset.num_classes))
    prepared = defense.prepare(network)
    if undeclared_sample_dimension(prepared):  # else wrapped as deterministic: one draw whatever S an attack asks
        kind = type(prepared).__name__
        raise ValueError(
            f"defense '{defense.name}': prepare() returned a {kind} whose forward takes 'samples' but whose class does "
            f"not set takes_samples = True (the sample-dimension contract, advbayes.SampledModel): set it, or drop "
            "'samples' from forward for a deterministic network"
        )
    return as_sampled(prepared)
