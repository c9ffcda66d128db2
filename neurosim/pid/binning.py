"""Binning of continuous sources for the plug-in PID estimate (Schneider et al., ICLR 2025).

Hidden (trivariate) layers, fixed range: clamp x to [low + margin, high] and cut [low, high]
into n_bins equal right-closed bins (defaults: [-20, 20], 20 bins, margin 1e-4),

    e_k = low + k (high - low) / n_bins,   bin(x) = k  iff  e_k < clamp(x) <= e_{k+1}

Output and bivariate layers, normalised: divide by the per-neuron max |x| over the batch,
then 20 bins on [-1, 1] as above. No gradient flows through a bin index.
"""
from __future__ import annotations

import torch

from ..errors import ConfigError

__all__ = ["bin_fixed", "bin_normalised"]


def bin_fixed(x: torch.Tensor, n_bins: int = 20, low: float = -20.0, high: float = 20.0,
              margin: float = 1e-4) -> torch.Tensor:
    """Bin index (int64, shape of x) of x clamped to [low + margin, high] in n_bins equal
    right-closed bins of [low, high]: k with e_k < x <= e_{k+1}, e_k = low + k (high - low) /
    n_bins. Edges and comparison in float64."""
    if int(n_bins) < 1 or not high > low:
        raise ConfigError(f"pid binning: need n_bins >= 1 and high > low; got n_bins = {n_bins}, "
                          f"[{low}, {high}].")
    with torch.no_grad():
        k = torch.arange(int(n_bins) + 1, dtype=torch.float64, device=x.device)
        edges = low + (high - low) * k / int(n_bins)      # exact where the formula is (e.g. 0)
        clamped = x.detach().to(torch.float64).clamp(low + margin, high).contiguous()
        return torch.bucketize(clamped, edges, right=False) - 1


def bin_normalised(x: torch.Tensor, n_bins: int = 20, dim: int = -1,
                   margin: float = 1e-4) -> torch.Tensor:
    """Bin index of x / max_batch |x| in n_bins equal right-closed bins of [-1, 1] (see
    :func:`bin_fixed`); the max is taken along ``dim``, the batch dimension (default -1 for
    N x B inputs; 0 for B x N). A neuron whose values are all 0 is binned as
    x = 0."""
    with torch.no_grad():
        x = x.detach().to(torch.float64)
        scale = x.abs().amax(dim=dim, keepdim=True)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        return bin_fixed(x / scale, n_bins, -1.0, 1.0, margin)
