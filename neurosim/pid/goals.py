"""Goal vectors of infomorphic neurons (Schneider et al., "What should a neuron aim for?",
ICLR 2025).

A neuron's local goal is a weighted sum of its PID atoms and residual entropy,

    G = gamma . [Pi_0, ..., Pi_{n_atoms-1}, H_res]

with the atoms in the order of :mod:`neurosim.pid.lattice` (19 weights for three sources,
5 for two). Named goals:

    "heuristic"          gamma[{F}{C}] = 1, all else 0 (what F and C share and L does not carry)
    "optimised_mnist"    the goal optimised for MNIST (alias "mnist")
    "reduced"            {F}{C}{L} 0.33, {F}{C} 1, {F}{L} -1, {FC}{FL} -1
    "optimised_cifar10"  the goal optimised for CIFAR-10 (alias "cifar10")
    "output"             bivariate output layer: {1} -0.2, {2} 0.1, {1}{2} 1, {12} 0.1, H_res 0
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch

from ..errors import ConfigError, did_you_mean, unknown
from .lattice import get_lattice

__all__ = ["GOALS", "goal_vector", "goal_weights"]

#: Named goal vectors: name -> (number of sources, weights in the atom order, H_res last).
GOALS: dict[str, tuple[int, tuple[float, ...]]] = {
    "heuristic": (3, (0, 1) + (0,) * 17),
    "optimised_mnist": (3, (0.331, 0.978, -0.994, 0.402, 0.243, 0.626, 0.471, 0.021, 0.061,
                            -0.947, -0.020, -0.968, -0.692, 0.427, 0.974, 0.737, -0.122, -0.215,
                            0.035)),
    "reduced": (3, (0.33, 1, -1) + (0,) * 8 + (-1,) + (0,) * 7),
    "optimised_cifar10": (3, (0.984, 0.605, -0.213, 0.243, 0.340, -0.579, 0.050, 0.034, 0.597,
                              -0.078, 0.476, -0.848, -0.399, 0.556, 0.271, -0.462, -0.063,
                              -0.263, 0.0)),
    "output": (2, (-0.2, 0.1, 1.0, 0.1, 0.0)),
}
_ALIASES = {"mnist": "optimised_mnist", "optimized_mnist": "optimised_mnist",
            "cifar10": "optimised_cifar10", "optimized_cifar10": "optimised_cifar10"}


def goal_vector(goal, n_sources: int | None = None, where: str = "pid goal") -> torch.Tensor:
    """The goal vector gamma (float64, length n_atoms + 1, H_res last) from a name in
    :data:`GOALS` (or an alias: "mnist", "cifar10"), a mapping {atom name or "H_res": weight}
    (unnamed atoms weigh 0; three sources unless ``n_sources`` = 2) or a sequence of
    n_atoms + 1 numbers. ``n_sources`` (2 or 3) is inferred from a name or a length when
    None. ConfigError for an unknown name or atom, a wrong length, a goal for the other
    number of sources, or non-finite weights."""
    if n_sources is not None and n_sources not in (2, 3):
        raise ConfigError(f"{where}: {n_sources} sources; only 2 and 3 are supported.")
    if isinstance(goal, str):
        key = _ALIASES.get(goal.strip().lower(), goal.strip().lower())
        if key not in GOALS:
            raise unknown("goal", goal, list(GOALS) + list(_ALIASES), where)
        goal_sources, values = GOALS[key]
        if n_sources is not None and goal_sources != n_sources:
            raise ConfigError(f'{where}: goal "{goal}" is for {goal_sources} sources, not '
                              f"{n_sources}.")
        return torch.tensor(values, dtype=torch.float64)
    if isinstance(goal, Mapping):
        lattice = get_lattice(3 if n_sources is None else n_sources)
        gamma = torch.zeros(lattice.n_atoms + 1, dtype=torch.float64)
        names = list(lattice.names) + ["H_res"]
        for name, weight in goal.items():
            if name == "H_res":
                i = lattice.n_atoms
            else:
                try:
                    i = lattice.index(name)
                except ConfigError:
                    raise ConfigError(f'{where}: unknown atom "{name}" for {lattice.n_sources} '
                                      f"sources.{did_you_mean(name, names)} Atoms: "
                                      + ", ".join(names) + ".") from None
            gamma[i] = _finite(weight, f"{where}: weight of {name}")
        return gamma
    try:
        values = np.asarray(goal.detach().cpu() if isinstance(goal, torch.Tensor) else goal,
                            dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: a goal is a name ({', '.join(GOALS)}), a mapping "
                          f"{{atom: weight}} or a list of numbers; got {goal!r}.") from None
    lengths = {3: 19, 2: 5}
    if values.ndim != 1 or (values.size not in lengths.values() if n_sources is None
                            else values.size != lengths[n_sources]):
        want = (" or ".join(f"{k} ({s} sources)" for s, k in lengths.items()) if n_sources is None
                else f"{lengths[n_sources]} ({n_sources} sources)")
        raise ConfigError(f"{where}: a goal vector has {want} weights (the atoms, then H_res); "
                          f"got shape {tuple(values.shape)}.")
    if not np.isfinite(values).all():
        bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
        raise ConfigError(f"{where}: goal weights must be finite; entries {bad} are not.")
    return torch.from_numpy(values.copy())


def goal_weights(gamma, n_sources: int | None = None) -> tuple[torch.Tensor, float]:
    """The cheaper equivalent form of G = gamma . [Pi; H_res]: since Pi = M I_sx and
    H_res = H(Y) - I_sx(top),

        G = sum_alpha w_alpha I_sx(alpha) + gamma_H H(Y),   w = M^T gamma_Pi - gamma_H e_top

    Returns (w as float64, gamma_H); antichains with w_alpha = 0 need no I_sx."""
    gamma = goal_vector(gamma, n_sources)
    lattice = get_lattice(2 if gamma.numel() == 5 else 3)
    moebius = torch.from_numpy(lattice.moebius.astype(np.float64))
    w = moebius.T @ gamma[:-1]
    w[lattice.top] -= gamma[-1]
    return w, float(gamma[-1])


def _finite(value, what: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a number, got {value!r}.") from None
    if not math.isfinite(number):
        raise ConfigError(f"{what} must be finite, got {number}.")
    return number
