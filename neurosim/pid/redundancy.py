"""Shared-exclusion redundancy I_sx and the PID of a joint pmf (dense evaluation).

For sources S = (S_1..S_n) and target Y with joint pmf P(s, y), and an antichain
alpha = {a_1..a_m} with events E_j = {S_{a_j} = s_{a_j}} (Makkeh, Gutknecht, Wibral, Phys.
Rev. E 103:032149, 2021):

    I_sx(Y : alpha) = sum_{s,y} P(s,y) log2 [ P(Y = y, U_j E_j) / ( P(U_j E_j) P(Y = y) ) ]

The union probabilities follow by inclusion-exclusion; an intersection of such events is the
joint event on the union of the index sets, so every term is an ordinary marginal
(:func:`neurosim.pid.lattice.union_coefficients`). For a single set I_sx({a}) = I(Y; S_a).
Numerical guards of the reference implementation (Schneider et al., ICLR 2025): the ratio is
P(y, U) / (P(U) P(y) + 1e-10) and a ratio < 1e-7 contributes 0 (this keeps the gradient
finite). Atoms and residual entropy (bits):

    Pi = M I_sx                         (M: the Moebius matrix of neurosim.pid.lattice)
    H(Y) = - sum_y P(y) log2 (P(y) + 1e-10)
    H_res = H(Y) - I_sx(top) = H(Y) - I(Y; S_1..S_n)

so the atoms sum to I(Y; S) and atoms + H_res to H(Y). Atoms may be negative (I_sx is a
pointwise, signed measure).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from ..errors import ConfigError
from .lattice import Lattice, get_lattice, union_coefficients

__all__ = ["PIDResult", "isx", "pid_from_pmf", "DENOMINATOR_EPS", "RATIO_FLOOR", "LOG_EPS"]

#: Added to P(U) P(y) in the denominator of the I_sx ratio.
DENOMINATOR_EPS = 1e-10
#: A ratio below this contributes 0 to I_sx.
RATIO_FLOOR = 1e-7
#: Added to P(y) inside the logarithm of H(Y).
LOG_EPS = 1e-10


@dataclass
class PIDResult:
    """A PID per neuron (or a single one): ``atoms`` (..., n_atoms) in the lattice order,
    ``h_res`` (...), the redundancies ``isx`` (..., n_atoms) with atoms = isx M^T, and
    ``entropy`` = H(Y) (...). All in bits."""

    atoms: torch.Tensor
    h_res: torch.Tensor
    isx: torch.Tensor
    entropy: torch.Tensor
    lattice: Lattice

    @property
    def names(self) -> tuple[str, ...]:
        """Atom names in order ("{F}{C}{L}", ...), then "H_res"."""
        return tuple(self.lattice.names) + ("H_res",)

    @property
    def terms(self) -> torch.Tensor:
        """[atoms; H_res] (..., n_atoms + 1): the vector a goal gamma weighs."""
        return torch.cat([self.atoms, self.h_res.unsqueeze(-1)], dim=-1)

    @property
    def mutual_information(self) -> torch.Tensor:
        """I(Y; all sources) = I_sx(top) = sum of the atoms."""
        return self.isx[..., self.lattice.top]

    def as_dict(self) -> dict[str, torch.Tensor]:
        """{atom name: value} for every atom, plus "H_res"."""
        terms = self.terms
        return {name: terms[..., i] for i, name in enumerate(self.names)}

    def atom(self, name) -> torch.Tensor:
        """One atom by name ("{F}{C}", "{1}{2}", "H_res") or antichain."""
        if name == "H_res":
            return self.h_res
        return self.atoms[..., self.lattice.index(name)]

    def goal(self, gamma) -> torch.Tensor:
        """G = gamma . [Pi; H_res] for a goal (name, mapping or vector, see
        :func:`neurosim.pid.goal_vector`)."""
        from .goals import goal_vector
        g = goal_vector(gamma, self.lattice.n_sources)
        return self.terms @ g.to(self.terms)


@lru_cache(maxsize=None)
def moebius_tensor(n_sources: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The Moebius matrix M of ``n_sources`` sources as a tensor (cached)."""
    return torch.tensor(get_lattice(n_sources).moebius.tolist(), dtype=dtype, device=device)


def guarded_log_ratio(joint: torch.Tensor, union: torch.Tensor,
                      p_y: torch.Tensor) -> torch.Tensor:
    """log2 r with r = joint / (union p_y + DENOMINATOR_EPS), and 0 where r < RATIO_FLOOR."""
    ratio = joint / (union * p_y + DENOMINATOR_EPS)
    return torch.log2(torch.where(ratio < RATIO_FLOOR, torch.ones_like(ratio), ratio))


def entropy_bits(p_y: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """H(Y) = - sum_y P(y) log2 (P(y) + LOG_EPS) along ``dim``."""
    return -(p_y * torch.log2(p_y + LOG_EPS)).sum(dim)


def _as_pmf(pmf, n_sources) -> tuple[torch.Tensor, int]:
    if not isinstance(pmf, torch.Tensor):
        pmf = torch.as_tensor(np.asarray(pmf, dtype=np.float64))
    if not pmf.is_floating_point():
        pmf = pmf.to(torch.float64)
    n = pmf.dim() - 1 if n_sources is None else int(n_sources)
    if n not in (2, 3) or pmf.dim() < n + 1:
        raise ConfigError(f"pid: a joint pmf has shape (*batch, K_1, ..., K_n, K_y) with n = 2 "
                          f"or 3 sources; got shape {tuple(pmf.shape)} with n = {n}.")
    with torch.no_grad():
        total = pmf.sum(tuple(range(pmf.dim() - n - 1, pmf.dim())))
        if not torch.isfinite(pmf).all() or (pmf < 0).any() or \
                (total - 1).abs().max() > 1e-6:
            raise ConfigError("pid: the joint pmf must be finite, non-negative and sum to 1 "
                              f"(sums: {total.flatten()[:4].tolist()}).")
    return pmf, n


def isx(pmf, alpha, n_sources: int | None = None) -> torch.Tensor:
    """Shared-exclusion redundancy (bits) of the antichain ``alpha`` (a name "{F}{CL}" or a
    tuple of 0-based index tuples) from a joint pmf of shape (*batch, K_1..K_n, K_y), target
    last, evaluated on the dense grid:

        I_sx(Y : alpha) = sum_{s,y} P(s,y) log2 [ P(y, U_a E_a) / (P(U_a E_a) P(y) + 1e-10) ]

    (ratios < 1e-7 contribute 0). ``n_sources`` defaults to pmf.dim() - 1. Differentiable in
    the pmf."""
    pmf, n = _as_pmf(pmf, n_sources)
    lattice = get_lattice(n)
    return _isx_dense(pmf, lattice.antichains[lattice.index(alpha)], n)


def _isx_dense(pmf: torch.Tensor, alpha, n: int) -> torch.Tensor:
    first = pmf.dim() - n - 1                     # first source dimension
    grid = tuple(range(first, pmf.dim()))

    def marginal(subset, with_y):
        keep = {first + i for i in subset} | ({pmf.dim() - 1} if with_y else set())
        drop = tuple(d for d in grid if d not in keep)
        return pmf.sum(drop, keepdim=True) if drop else pmf

    p_y = marginal((), True)
    union = joint = 0
    for subset, c in union_coefficients(alpha).items():
        union = union + c * marginal(subset, False)
        joint = joint + c * marginal(subset, True)
    return (pmf * guarded_log_ratio(joint, union, p_y)).sum(grid)


def pid_from_pmf(pmf, n_sources: int | None = None) -> PIDResult:
    """The PID of a joint pmf (numpy or torch, shape (*batch, K_1..K_n, K_y), target last,
    n = 2 or 3 sources, any target alphabet): I_sx of every antichain on the dense grid,
    atoms Pi = M I_sx, H(Y) = -sum_y P(y) log2(P(y) + 1e-10), H_res = H(Y) - I(Y; S).
    Float64 for numpy input; differentiable in a torch pmf."""
    pmf, n = _as_pmf(pmf, n_sources)
    lattice = get_lattice(n)
    redundancies = torch.stack([_isx_dense(pmf, alpha, n) for alpha in lattice.antichains], -1)
    atoms = redundancies @ moebius_tensor(n, pmf.dtype, pmf.device).T
    p_y = pmf.sum(tuple(range(pmf.dim() - n - 1, pmf.dim() - 1)))
    entropy = entropy_bits(p_y)
    return PIDResult(atoms, entropy - redundancies[..., lattice.top], redundancies, entropy,
                     lattice)
