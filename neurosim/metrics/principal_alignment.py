"""Alignment of a projection's weights with the principal subspace of its inputs (Hebbian
PCA rules: Oja, Sanger, subspace rules):

    alignment = (1/k) sum_i cos theta_i

where theta_1..k are the principal angles between the row space of W (k x n) and the span of
the top k eigenvectors of the training inputs' covariance C = <(x - m)(x - m)^T>; for one
output neuron it is |cos(w, e_1)|. Column ``pc_alignment_<projection>``. The projection's
source must be an input population (the data's covariance is its own)."""
from __future__ import annotations

import torch

from ..errors import ConfigError
from .base import METRICS, EpochMetric, MetricContext


@METRICS.register
class PrincipalAlignment(EpochMetric):
    """Alignment (1/k) sum_i cos theta_i, theta_i the principal angles between the row space
    of ``projection``'s W (k x n) and the top-k principal subspace of the training inputs
    (``center``: subtract their mean first)."""

    name = "principal_alignment"

    def __init__(self, projection: str, center: bool = True):
        if not isinstance(projection, str):
            raise ConfigError(f"projection must be a projection name, got {projection!r}.")
        self.projection, self.center = projection, bool(center)
        self._basis = None

    def setup(self, net) -> None:
        proj = net.network.projection(self.projection)
        if not net.network.population(proj.source).is_input or proj.name not in net.weights \
                or not proj.is_dense:
            raise ConfigError(f'principal_alignment: projection "{self.projection}" must carry '
                              "a dense weight matrix from an input population.")

    def reset(self, context: MetricContext) -> None:
        """Keep ``context``; on the first call also compute the top k eigenvectors E of the
        training inputs' covariance C = <(x - m)(x - m)^T> (m = 0 without ``center``), kept
        for the rest of the run."""
        super().reset(context)
        net = context.net
        if context.train_x is None:
            raise ConfigError("principal_alignment needs the training inputs.")
        if self._basis is None:
            k = net.weights[self.projection].shape[0]
            x = context.train_x.to(torch.float64)
            if self.center:
                x = x - x.mean(dim=0)
            cov = x.T @ x / x.shape[0]
            _, vectors = torch.linalg.eigh(cov)
            self._basis = vectors[:, -k:]

    def compute(self) -> dict[str, float]:
        """``pc_alignment_<projection>`` = mean of cos theta_i, the singular values of Q^T E
        (Q: an orthonormal basis of W's row space)."""
        w = self.context.net.weights[self.projection].to(torch.float64)
        q, _ = torch.linalg.qr(w.T)                        # orthonormal basis of the row space
        cosines = torch.linalg.svdvals(q.T @ self._basis.to(q.device)).clamp(max=1.0)
        return {f"pc_alignment_{self.projection}": float(cosines.mean())}
