"""How decorrelated each lateral layer's output is (COPI's diagnostic, Ahmad et al. 2023).

For every lateral projection R (x = R y) of the protocol's chain (``protocol.chain`` minus
``protocol.forward_layers``, as "copi" provides), over the evaluation set:

    C = <x x^T>,   rho_ij = C_ij / sqrt(C_ii C_jj),   offdiag = mean_{i != j} |rho_ij|

(uncentred, as the decorrelation rule; units that never fire are left out). Columns
``offdiag_<R>`` for the decorrelated output x and ``offdiag_in_<R>`` for R's input y (what
the layer would see with R = I), so their ratio is how much R decorrelates its input.
"""
from __future__ import annotations

import torch

from ..errors import ConfigError
from ..plasticity.copi import mean_offdiagonal_correlation
from .base import METRICS, EpochMetric, MetricContext


@METRICS.register
class Decorrelation(EpochMetric):
    """Mean |off-diagonal correlation| of each lateral layer's output and input (columns
    ``offdiag_<R>``, ``offdiag_in_<R>``; neurosim.metrics.decorrelation). Needs a protocol
    with lateral projections ("copi")."""

    name = "decorrelation"

    def check_protocol(self, protocol) -> None:
        """ConfigError unless the protocol names lateral (decorrelating) projections."""
        chain, forward = getattr(protocol, "chain", None), getattr(protocol, "forward_layers", None)
        if not chain or forward is None or len(chain) == len(forward):
            kind = getattr(protocol, "name", type(protocol).__name__)
            raise ConfigError(f'metric "decorrelation" needs decorrelating lateral projections '
                              f'(protocol "copi" with decorrelation rules); protocol "{kind}" '
                              "has none. Remove it from [training] metrics.")

    def reset(self, context: MetricContext) -> None:
        """Clear the second moments."""
        super().reset(context)
        protocol = context.protocol
        forward = {q.name for q in protocol.forward_layers}
        self.lateral = [q for q in protocol.chain if q.name not in forward]
        self.moments: dict[str, torch.Tensor] = {}

    def observe(self, state, x, labels) -> None:
        """Add the batch's y^T y and x^T x of every lateral projection (float64)."""
        net = self.context.net
        for q in self.lateral:
            for key, population in ((f"offdiag_{q.name}", q.target),
                                    (f"offdiag_in_{q.name}", q.source)):
                r = net.r_of(state, population).to(torch.float64)
                product = r.T @ r
                self.moments[key] = self.moments[key] + product if key in self.moments \
                    else product

    def compute(self) -> dict[str, float]:
        """The mean |off-diagonal correlation| per column."""
        return {key: mean_offdiagonal_correlation(m) for key, m in self.moments.items()}
