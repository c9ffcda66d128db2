"""Epoch metrics as plug-ins, chosen in the model file (``[training] metrics = [...]``).

Each epoch, after the training pass, the trainer evaluates the test set (or the validation
set when the run has no test set) batch by batch with the protocol's ``infer``; every metric
sees each batch's state and writes named numbers into that epoch's row:

    metric.setup(net)                    # once, when the trainer is built (check settings)
    metric.check_protocol(protocol)      # once, then: does the protocol give what it reads?
    metric.reset(context)                # once per evaluation
    metric.observe(state, x, labels)     # per evaluation batch (labels None if unlabeled)
    metric.compute() -> {column: value}  # after the last batch

``context`` (:class:`MetricContext`) gives the compiled network, the protocol and the
training inputs. Add one: subclass :class:`EpochMetric`, set ``name``, register it with
``METRICS.register`` or name it "package.module:Class" in the model file.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..registry import Registry


@dataclass
class MetricContext:
    """What a metric may read: the compiled network, the protocol, the training inputs."""

    net: Any
    protocol: Any
    train_x: torch.Tensor | None = None


class EpochMetric:
    """Base class of epoch metrics (see neurosim.metrics.base): ``setup(net)`` once,
    ``reset(context)`` per evaluation, ``observe(state, x, labels)`` per batch, then
    ``compute()``."""

    name: ClassVar[str] = "metric"

    def setup(self, net) -> None:
        """Called once with the compiled network when the trainer is built: raise a
        ConfigError for settings that do not fit it (unknown populations, projections)."""

    def check_protocol(self, protocol) -> None:
        """Called once with the bound protocol when the trainer is built (after ``setup``):
        raise a ConfigError when the metric needs something the protocol lacks (e.g. a
        fixed feedback matrix)."""

    def reset(self, context: MetricContext) -> None:
        """Start an evaluation: keep ``context`` as ``self.context``; subclasses also clear
        their running sums here (calling ``super().reset(context)``)."""
        self.context = context

    def observe(self, state, x: torch.Tensor, labels: torch.Tensor | None) -> None:
        """Called once per evaluation batch; metrics of the weights alone ignore it."""

    def compute(self) -> dict[str, float]:
        """The epoch's values, ``{column: number}``, after the last batch."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


METRICS = Registry("metric", base=EpochMetric)


def build_metrics(specs, where: str) -> list[EpochMetric]:
    """Metrics from a list of names or tables ``{type = "...", <arguments>}``."""
    if specs is None:
        return []
    if not isinstance(specs, (list, tuple)):
        from ..errors import ConfigError
        raise ConfigError(f'{where}: metrics is a list, e.g. metrics = ["weight_angle", '
                          '{ type = "correlative_information", eps = 1e-3 }]; got '
                          f"{specs!r}.")
    return [spec if isinstance(spec, EpochMetric) else METRICS.build(spec, f"{where}[{i}]")
            for i, spec in enumerate(specs)]
