"""The interface every learner follows, from ADKF-IFT to a per-task random forest.

``meta_fit(train_tasks, valid_tasks)`` learns what is shared across tasks (a no-op for
single-task baselines); ``adapt(support_x, support_y)`` returns a :class:`Predictor` for one
task with ``predict(x) -> (mean, variance)`` and, for classification, ``predict_proba(x)``;
``save`` / ``load`` round-trip a learner to identical predictions.
"""

from __future__ import annotations

import abc
import json
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import torch

from probrec.checks import as_float_tensor, check_choice, check_same_length, check_seed
from probrec.data.tasks import check_two_classes

_REGISTRY: dict[str, type[MetaLearner]] = {}


class Predictor(Protocol):
    """A fitted per-task model."""

    def predict(self, x: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Predictive mean and variance ``([m], [m])`` at query inputs ``x [m, d]``."""

    def predict_proba(self, x: Any) -> torch.Tensor:
        """``P(y = 1)`` at ``x [m, d]`` (classification)."""


def check_support(
    support_x: Any,
    support_y: Any,
    kind: str,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validates a support set and returns it as tensors ``([n, d], [n])``.

    Raises:
        ValueError: empty support set, mismatched lengths, NaN features or labels, or a
            single-class support set for classification.
    """
    x_arr = np.asarray(support_x) if not isinstance(support_x, torch.Tensor) else support_x
    y_arr = np.asarray(support_y) if not isinstance(support_y, torch.Tensor) else support_y
    if len(x_arr) == 0:
        raise ValueError("support_x is empty: the support set needs at least one example")
    check_same_length(support_x=x_arr, support_y=y_arr)
    x = as_float_tensor(x_arr, "support_x", ndim=2, dtype=dtype, device=device)
    y = as_float_tensor(y_arr, "support_y", ndim=1, dtype=dtype, device=x.device)
    if kind == "classification":
        if not bool(((y == 0) | (y == 1)).all()):
            raise ValueError("support_y must hold 0/1 labels for classification")
        check_two_classes(y.cpu().numpy(), "support set")
    return x, y


class MetaLearner(abc.ABC):
    """Base class of all learners.

    Args:
        kind: ``"classification"`` or ``"regression"``.
        seed: seed of every random choice the learner makes.
        device: device of the learner's modules (default: CPU).
        **config: learner-specific options, stored in ``self.config`` and in checkpoints.
    """

    name: ClassVar[str] = "learner"
    supports: ClassVar[tuple[str, ...]] = ("classification", "regression")
    #: the ``config`` options the learner reads (``None``: not checked); any other option is
    #: refused, so that a misspelt one cannot be ignored silently
    options: ClassVar[frozenset[str] | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not getattr(cls, "__abstractmethods__", None):
            _REGISTRY[cls.name] = cls

    def __init__(
        self,
        kind: str = "classification",
        seed: int = 0,
        device: torch.device | str | None = None,
        **config: Any,
    ) -> None:
        check_choice(kind, "kind", self.supports)
        if self.options is not None and set(config) - self.options:
            raise ValueError(
                f"unknown option(s) {sorted(set(config) - self.options)} for "
                f"{type(self).__name__}; it takes {sorted(self.options)}"
            )
        self.kind = kind
        self.seed = check_seed(seed)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.config: dict[str, Any] = dict(config)
        self.history: dict[str, list] = {}

    # ------------------------------------------------------------------ interface
    def meta_fit(self, train_tasks, valid_tasks=None, **kwargs: Any) -> dict[str, list]:
        """Learns shared structure across ``train_tasks``; single-task learners do nothing."""
        return self.history

    @abc.abstractmethod
    def adapt(self, support_x: Any, support_y: Any) -> Predictor:
        """Fits one task's predictor on its support set ``x [n, d]``, ``y [n]``."""

    # ------------------------------------------------------------------ persistence
    def modules(self) -> dict[str, torch.nn.Module]:
        """Learned ``nn.Module`` s to checkpoint (by attribute name)."""
        return {}

    def extra_state(self) -> dict[str, Any]:
        """Other learned state to checkpoint (tensors or JSON-able values)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        """Restores :meth:`extra_state`."""

    def build(self, in_dim: int) -> None:  # noqa: B027 - optional hook
        """Creates the learner's modules for inputs of width ``in_dim`` (before loading)."""

    def state(self) -> dict[str, Any]:
        """Everything needed to rebuild the learner."""
        return {
            "class": self.name,
            "kind": self.kind,
            "seed": self.seed,
            "config": self.config,
            "in_dim": getattr(self, "in_dim", None),
            "modules": {k: m.state_dict() for k, m in self.modules().items()},
            "extra": self.extra_state(),
            "history": self.history,
        }

    def save(self, path: str | Path) -> Path:
        """Writes a checkpoint that :meth:`load` restores to identical predictions."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        torch.save(self.state(), tmp)
        tmp.replace(path)
        return path

    @classmethod
    def from_state(
        cls, state: dict[str, Any], device: torch.device | str | None = None
    ) -> MetaLearner:
        klass = _REGISTRY.get(state["class"])
        if klass is None:
            raise ValueError(f"unknown learner class {state['class']!r} in checkpoint")
        obj = klass(kind=state["kind"], seed=state["seed"], device=device, **state["config"])
        if state.get("in_dim") is not None:
            obj.build(int(state["in_dim"]))
        for k, sd in state["modules"].items():
            obj.modules()[k].load_state_dict(sd)
        obj.load_extra_state(state.get("extra", {}))
        obj.history = state.get("history", {})
        return obj

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str | None = None) -> MetaLearner:
        """Restores a learner saved with :meth:`save`.

        Raises:
            ValueError: the file holds a learner that is not a ``cls``.
        """
        state = torch.load(Path(path), map_location=device or "cpu", weights_only=False)
        klass = _REGISTRY.get(state.get("class"))
        if klass is not None and not issubclass(klass, cls):
            raise ValueError(f"{path} holds a {state['class']}, not a {cls.__name__}")
        return cls.from_state(state, device)

    def __repr__(self) -> str:
        cfg = json.dumps(self.config, default=str)
        return f"{type(self).__name__}(kind={self.kind!r}, seed={self.seed}, config={cfg})"


def registered_learners() -> dict[str, type[MetaLearner]]:
    """Learner classes by name (those imported so far)."""
    return dict(_REGISTRY)
