"""Correlative information of a layer (CorInfoMax, spec section 7):

    I_corr(layer) = log det(R + eps I),   R = <r r^T>

over the evaluation set's inferred activities r of the layer (float64), one column
``corrinfo_<layer>`` per layer (default: every pyramidal population)."""
from __future__ import annotations

from typing import Sequence

import torch

from ..errors import ConfigError
from .base import METRICS, EpochMetric, MetricContext


@METRICS.register
class CorrelativeInformation(EpochMetric):
    """Correlative information of each layer, I_corr = log det(R + eps I) with R = <r r^T>
    over the evaluation set; ``populations`` defaults to every pyramidal population."""

    name = "correlative_information"

    def __init__(self, eps: float = 1e-3, populations: Sequence[str] | None = None):
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
            raise ConfigError(f"eps must be a positive number (the eps of log det(R + eps I)), "
                              f"got {eps!r}.")
        self.eps = float(eps)
        self.populations = None if populations is None else list(populations)

    def setup(self, net) -> None:
        from ..graph import PyramidalPopulation
        network = net.network
        if self.populations is None:
            self.layers = [p.name for p in network.populations
                           if isinstance(p, PyramidalPopulation)]
        else:
            for name in self.populations:
                net._slot(name, need_dynamic=True)
            self.layers = self.populations

    def reset(self, context: MetricContext) -> None:
        """Clear the summed second moments sum r r^T and the sample count."""
        super().reset(context)
        self.moments: dict[str, torch.Tensor] = {}
        self.count = 0

    def observe(self, state, x, labels) -> None:
        """Add sum_n r_n r_n^T of each layer over the batch to the running moments."""
        net = self.context.net
        self.count += x.shape[0]
        for layer in self.layers:
            r = net.r_of(state, layer).to(torch.float64)
            moment = self.moments.get(layer)
            self.moments[layer] = moment.addmm_(r.T, r) if moment is not None else r.T @ r

    def compute(self) -> dict[str, float]:
        """``corrinfo_<layer>`` = log det(R + eps I), R = (1/N) sum_n r_n r_n^T over the N
        evaluated samples."""
        info = {}
        for layer, moment in self.moments.items():
            eye = torch.eye(moment.shape[0], dtype=torch.float64, device=moment.device)
            value = torch.linalg.slogdet(moment / self.count + self.eps * eye)
            info[f"corrinfo_{layer}"] = float(value.logabsdet)
        return info
