"""Batched, differentiable PID estimate for N neurons at once, evaluated at the sample points.

Neuron n sees a batch of B samples: integer bin indices s_b = (s_1b..s_kb) of its k = 2 or 3
sources (hard, no gradient) and q_b(y), its probability of output y (soft, differentiable;
for a binary neuron q_b(+1) = theta_b, q_b(-1) = 1 - theta_b). The plug-in joint pmf is

    P(s, y) = (1/B) sum_b 1[s_b = s] q_b(y)

(Schneider et al., ICLR 2025). Every sum over the grid in I_sx (see
:mod:`neurosim.pid.redundancy`) is a sum over cells with P(s, y) > 0, i.e. over the distinct
bin tuples the batch visits:

    sum_{s,y} P(s,y) f(s,y) = sum_{s in {s_b}} sum_y P(s,y) f(s,y)

and f needs the marginals P(s_a), P(s_a, y) only at those points. They are built by sorting
the per-neuron keys of the bin tuples (torch.unique), scatter-adding q into one table entry
per distinct key and gathering back: O(N B) memory, never a dense K^k grid per neuron, and the
same values and gradients as the dense evaluation. P(s_a) is a count (no gradient); gradients
reach theta through P(s_a, y) and P(y) only. When a gradient is needed, each antichain's terms
are recomputed in the backward pass (activation checkpointing) rather than kept, so the memory
for backward is that of the marginal tables plus one antichain.

Goal (local objective, layer loss = -sum_n G_n):

    G = gamma . [Pi; H_res] = sum_alpha w_alpha I_sx(alpha) + gamma_H H(Y),
    w = M^T gamma_Pi - gamma_H e_top

where only antichains with w_alpha != 0 are evaluated.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.checkpoint import checkpoint

from ..errors import ConfigError
from .goals import goal_weights
from .lattice import get_lattice, union_coefficients
from .redundancy import PIDResult, entropy_bits, guarded_log_ratio, moebius_tensor

__all__ = ["SamplePoints", "sample_points", "pid_atoms", "pid_goal", "pid_from_samples"]


@dataclass
class SamplePoints:
    """The distinct bin tuples of a batch, per neuron (no gradient; build with
    :func:`sample_points`). ``inverse`` (N*B,): row of each sample in the table of distinct
    (neuron, tuple) keys; ``neuron`` (U,): the neuron of each row; ``count`` (U,): its number of
    samples; for every proper non-empty subset a of the sources, ``subset_index[a]`` (U,): the
    row's entry in the table of distinct (neuron, s_a) keys, ``subset_size[a]``: that table's
    length, ``subset_count[a]`` (U,): the entry's number of samples."""

    n_sources: int
    n_neurons: int
    batch: int
    inverse: torch.Tensor
    neuron: torch.Tensor
    count: torch.Tensor
    subset_index: dict
    subset_size: dict
    subset_count: dict

    @property
    def n_rows(self) -> int:
        """U, the number of distinct (neuron, bin tuple) pairs (at most N B)."""
        return int(self.neuron.numel())

    def marginals(self, q: torch.Tensor):
        """Target-joint marginals at the rows from q (N, B, K_y):

            P(s, y) = (1/B) sum_b 1[s_b = s] q_b(y)
            P(s_a, y) = sum_{s' : s'_a = s_a} P(s', y),   P(y) = (1/B) sum_b q_b(y)

        Returns ({a: P(s_a, y) at the rows (U, K_y)} for every subset a, the full one
        included and a = () giving P(y) at the rows; P(y) per neuron (N, K_y))."""
        batch = self.batch
        k_y = q.shape[-1]
        full = tuple(range(self.n_sources))
        table = q.new_zeros(self.n_rows, k_y).index_add_(0, self.inverse, q.reshape(-1, k_y))
        table = table / batch
        joint = {full: table}
        for subset, index in self.subset_index.items():
            size = self.subset_size[subset]
            joint[subset] = table.new_zeros(size, k_y).index_add_(0, index, table)[index]
        p_y = q.sum(1) / batch
        joint[()] = p_y[self.neuron]
        return joint, p_y

    def source_marginals(self, dtype: torch.dtype) -> dict:
        """P(s_a) = (number of samples with s_a) / B at the rows (U,), for every non-empty
        subset a (no gradient)."""
        full = tuple(range(self.n_sources))
        out = {full: self.count.to(dtype) / self.batch}
        for subset, count in self.subset_count.items():
            out[subset] = count.to(dtype) / self.batch
        return out


def _stack_bins(bins) -> torch.Tensor:
    if isinstance(bins, torch.Tensor):
        stacked = bins
    else:
        try:
            stacked = torch.stack([torch.as_tensor(b) for b in bins])
        except (TypeError, RuntimeError) as error:
            raise ConfigError(f"pid: bins must be k tensors of equal shape (N, B) or one "
                              f"(k, N, B) tensor: {error}") from None
    if stacked.dim() != 3 or stacked.shape[0] not in (2, 3):
        raise ConfigError("pid: bins must be 2 or 3 integer tensors of shape (N, B) (or one "
                          f"(k, N, B) tensor); got shape {tuple(stacked.shape)}.")
    if stacked.is_floating_point() or stacked.is_complex() or stacked.dtype == torch.bool:
        raise ConfigError(f"pid: bins must be integer bin indices, got dtype {stacked.dtype} "
                          "(bin continuous values with neurosim.pid.bin_fixed / bin_normalised).")
    return stacked.long()


def sample_points(bins, n_bins: int | None = None) -> SamplePoints:
    """Index the distinct bin tuples of each neuron. ``bins``: k = 2 or 3 integer tensors of
    shape (N, B) (or one (k, N, B) tensor) with values in [0, n_bins); ``n_bins`` defaults to
    max + 1. Key of a sample: neuron K^k + sum_i s_i K^(k-1-i); one torch.unique over the N B
    keys, then one per proper subset over the U distinct rows."""
    stacked = _stack_bins(bins)
    k, n, batch = stacked.shape
    if stacked.numel() == 0:
        raise ConfigError("pid: empty batch (N and B must be positive).")
    with torch.no_grad():
        low, high = torch.aminmax(stacked)
        low, high = int(low), int(high)
        size = high + 1 if n_bins is None else int(n_bins)
        if low < 0 or high >= size:
            raise ConfigError(f"pid: bin indices must lie in [0, {size}); got [{low}, {high}].")
        if n * size ** k >= 2 ** 62:
            raise ConfigError(f"pid: {n} neurons x {size}^{k} bins overflow the int64 keys.")
        place = [size ** (k - 1 - i) for i in range(k)]
        key = torch.arange(n, device=stacked.device).unsqueeze(1) * size ** k
        for i in range(k):
            key = key + stacked[i] * place[i]
        rows, inverse, count = torch.unique(key.reshape(-1), return_inverse=True,
                                            return_counts=True)
        neuron = rows // size ** k
        digits = [(rows // place[i]) % size for i in range(k)]
        subset_index, subset_size, subset_count = {}, {}, {}
        for r in range(1, k):
            for subset in itertools.combinations(range(k), r):
                sub_key = neuron * size ** k
                for i in subset:
                    sub_key = sub_key + digits[i] * place[i]
                distinct, index = torch.unique(sub_key, return_inverse=True)
                totals = torch.zeros(distinct.numel(), dtype=count.dtype,
                                     device=count.device).index_add_(0, index, count)
                subset_index[subset] = index
                subset_size[subset] = distinct.numel()
                subset_count[subset] = totals[index]
    return SamplePoints(k, n, batch, inverse, neuron, count, subset_index, subset_size,
                        subset_count)


def _target_probs(theta, probs, shape) -> torch.Tensor:
    if (theta is None) == (probs is None):
        raise ConfigError("pid: give exactly one of theta (N, B), P(Y = +1) of a binary target, "
                          "or probs (N, B, K_y).")
    if theta is not None:
        if not isinstance(theta, torch.Tensor):
            theta = torch.as_tensor(np.asarray(theta, dtype=np.float64))
        if tuple(theta.shape) != tuple(shape):
            raise ConfigError(f"pid: theta has shape {tuple(theta.shape)}, the bins "
                              f"{tuple(shape)}.")
        return torch.stack([theta, 1 - theta], dim=-1)
    if not isinstance(probs, torch.Tensor):
        probs = torch.as_tensor(np.asarray(probs, dtype=np.float64))
    if probs.dim() != 3 or tuple(probs.shape[:2]) != tuple(shape):
        raise ConfigError(f"pid: probs has shape {tuple(probs.shape)}; expected "
                          f"{tuple(shape)} + (K_y,).")
    return probs


def _isx_rows(points: SamplePoints, joint, source, p_y_rows, alpha) -> torch.Tensor:
    """I_sx(alpha) per neuron: sum over rows u of neuron n, sum_y P(s_u, y) log2 ratio."""
    union = union_y = 0
    for subset, c in union_coefficients(alpha).items():
        union = union + c * source[subset]
        union_y = union_y + c * joint[subset]
    full = joint[tuple(range(points.n_sources))]
    terms = (full * guarded_log_ratio(union_y, union.unsqueeze(-1), p_y_rows)).sum(-1)
    return terms.new_zeros(points.n_neurons).index_add_(0, points.neuron, terms)


def _evaluate(bins, theta, probs, n_bins, antichains):
    points = bins if isinstance(bins, SamplePoints) else sample_points(bins, n_bins)
    q = _target_probs(theta, probs, (points.n_neurons, points.batch))
    if not q.is_floating_point():
        q = q.to(torch.get_default_dtype())
    q = q.to(points.neuron.device)
    joint, p_y = points.marginals(q)
    source = points.source_marginals(q.dtype)
    p_y_rows = joint[()]
    lattice = get_lattice(points.n_sources)
    if q.requires_grad and torch.is_grad_enabled():
        # recompute each antichain's row terms in the backward pass instead of keeping them
        # (a few (U, K_y) buffers per antichain): peak memory stays near that of one
        values = {i: checkpoint(_isx_rows, points, joint, source, p_y_rows,
                                lattice.antichains[i], use_reentrant=False)
                  for i in antichains}
    else:
        values = {i: _isx_rows(points, joint, source, p_y_rows, lattice.antichains[i])
                  for i in antichains}
    return points, lattice, values, entropy_bits(p_y)


def pid_atoms(bins, theta=None, *, probs=None, n_bins: int | None = None) -> PIDResult:
    """PID of N neurons from a batch: ``bins`` k = 2 or 3 integer tensors (N, B) (or one
    (k, N, B) tensor, or a :class:`SamplePoints`), ``theta`` (N, B) = P(Y = +1) of a binary
    neuron, or ``probs`` (N, B, K_y) for any target alphabet. With
    P(s, y) = (1/B) sum_b 1[s_b = s] q_b(y), returns atoms (N, n_atoms) = M I_sx and
    H_res (N,) = H(Y) - I(Y; S), evaluated at the sample points; differentiable in theta
    (probs) only."""
    n = bins.n_sources if isinstance(bins, SamplePoints) else _stack_bins(bins).shape[0]
    points, lattice, values, entropy = _evaluate(bins, theta, probs, n_bins,
                                                 range(get_lattice(n).n_atoms))
    redundancies = torch.stack([values[i] for i in range(lattice.n_atoms)], dim=-1)
    atoms = redundancies @ moebius_tensor(lattice.n_sources, redundancies.dtype,
                                          redundancies.device).T
    return PIDResult(atoms, entropy - redundancies[..., lattice.top], redundancies, entropy,
                     lattice)


def pid_goal(bins, theta=None, gamma="heuristic", *, probs=None,
             n_bins: int | None = None) -> torch.Tensor:
    """Goal value per neuron (N,), G = gamma . [Pi; H_res], in the cheaper equivalent form

        G = sum_{alpha : w_alpha != 0} w_alpha I_sx(alpha) + gamma_H H(Y),
        w = M^T gamma_Pi - gamma_H e_top

    from the same inputs as :func:`pid_atoms`; ``gamma`` is a goal name, mapping or vector
    (:func:`neurosim.pid.goal_vector`). Layer loss: -pid_goal(...).sum()."""
    n = bins.n_sources if isinstance(bins, SamplePoints) else _stack_bins(bins).shape[0]
    w, gamma_h = goal_weights(gamma, n)
    used = [i for i in range(w.numel()) if w[i] != 0]
    points, lattice, values, entropy = _evaluate(bins, theta, probs, n_bins, used)
    goal = gamma_h * entropy if gamma_h != 0 else entropy.new_zeros(points.n_neurons)
    for i in used:
        goal = goal + float(w[i]) * values[i]
    return goal


def _relabel(values) -> tuple[torch.Tensor, int]:
    """Map arbitrary discrete values to 0..K-1 (K distinct values)."""
    array = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) \
        else np.asarray(values)
    uniques, labels = np.unique(array, return_inverse=True)
    return torch.from_numpy(labels.reshape(array.shape).astype(np.int64)), len(uniques)


def pid_from_samples(sources, target=None, *, theta=None, probs=None) -> PIDResult:
    """PID (bits) for analysis: ``sources`` 2 or 3 arrays (numpy or torch) of discrete values
    (any labels; bin continuous values first), each (B,) or (N, B); then exactly one of
    ``target`` (discrete values, same shape), ``theta`` (P(Y = +1) of a binary target) or
    ``probs`` (shape + (K_y,)). P(s, y) = (1/B) sum_b 1[s_b = s] q_b(y) with q_b the one-hot
    target, (theta_b, 1 - theta_b) or probs_b. Returns a :class:`PIDResult` (float64; atoms
    (n_atoms,) for (B,) inputs, (N, n_atoms) for (N, B); ``.as_dict()`` by atom name)."""
    if isinstance(sources, (np.ndarray, torch.Tensor)):
        sources = list(sources)
    if not isinstance(sources, (list, tuple)) or len(sources) not in (2, 3):
        raise ConfigError("pid_from_samples: sources must be 2 or 3 arrays of discrete values.")
    labelled = [_relabel(s) for s in sources]
    shapes = {tuple(labels.shape) for labels, _ in labelled}
    if len(shapes) != 1 or len(next(iter(shapes))) not in (1, 2):
        raise ConfigError(f"pid_from_samples: the sources must share one shape (B,) or (N, B); "
                          f"got {sorted(shapes)}.")
    shape = next(iter(shapes))
    single = len(shape) == 1
    bins = torch.stack([labels.reshape(1, -1) if single else labels for labels, _ in labelled])
    n_bins = max(k for _, k in labelled)
    if sum(x is not None for x in (target, theta, probs)) != 1:
        raise ConfigError("pid_from_samples: give exactly one of target, theta or probs.")
    if target is not None:
        labels, k_y = _relabel(target)
        if tuple(labels.shape) != shape:
            raise ConfigError(f"pid_from_samples: target has shape {tuple(labels.shape)}, the "
                              f"sources {shape}.")
        probs = torch.nn.functional.one_hot(labels.reshape(bins.shape[1:]), k_y).to(
            torch.float64)
    elif theta is not None:
        theta = torch.as_tensor(np.asarray(theta.detach().cpu() if isinstance(
            theta, torch.Tensor) else theta, dtype=np.float64))
        if tuple(theta.shape) != shape:
            raise ConfigError(f"pid_from_samples: theta has shape {tuple(theta.shape)}, the "
                              f"sources {shape}.")
        theta = theta.reshape(bins.shape[1:])
    else:
        probs = torch.as_tensor(np.asarray(probs.detach().cpu() if isinstance(
            probs, torch.Tensor) else probs, dtype=np.float64))
        if tuple(probs.shape[:-1]) != shape:
            raise ConfigError(f"pid_from_samples: probs has shape {tuple(probs.shape)}; "
                              f"expected {shape} + (K_y,).")
        probs = probs.reshape(*bins.shape[1:], -1)
    for name, value in (("theta", theta), ("probs", probs)):
        if value is not None and (not torch.isfinite(value).all() or (value < 0).any()
                                  or (value > 1).any()):
            raise ConfigError(f"pid_from_samples: {name} must be probabilities in [0, 1].")
    if probs is not None and target is None and (probs.sum(-1) - 1).abs().max() > 1e-6:
        raise ConfigError("pid_from_samples: probs must sum to 1 over the last axis.")
    result = pid_atoms(bins, theta, probs=probs, n_bins=n_bins)
    if single:
        result = PIDResult(result.atoms[0], result.h_res[0], result.isx[0], result.entropy[0],
                           result.lattice)
    return result
