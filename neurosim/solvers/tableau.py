"""Explicit Runge-Kutta steps on any state that is a tuple of tensors, for systems that are
not a network's potentials alone (e.g. potentials plus plastic weights integrated together).

A Butcher tableau (c, A, b) gives, for y' = f(t, y),

    k_i = f(t + c_i dt, y + dt sum_{j<i} A_ij k_j),    y <- y + dt sum_i b_i k_i

applied component-wise to every tensor of the tuple. Euler, Heun and RK4 carry their tableau
(``solver.tableau``), so any of them integrates such a system with the same order as on a
network alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

State = tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class ButcherTableau:
    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]     # row i holds A_i0 .. A_i(i-1)
    b: tuple[float, ...]


EULER = ButcherTableau((0.0,), ((),), (1.0,))
HEUN = ButcherTableau((0.0, 1.0), ((), (1.0,)), (0.5, 0.5))
RK4 = ButcherTableau((0.0, 0.5, 0.5, 1.0), ((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)),
                     (1 / 6, 1 / 3, 1 / 3, 1 / 6))


def explicit_rk_step(f: Callable[[float, State], State], t: float, y: Sequence[torch.Tensor],
                     dt: float, tableau: ButcherTableau) -> State:
    """One step of the explicit Runge-Kutta method ``tableau`` on the tuple state ``y``."""
    y = tuple(y)
    stages: list[State] = []
    for c, row in zip(tableau.c, tableau.a):
        point = tuple(
            component + dt * sum(a * k[n] for a, k in zip(row, stages) if a != 0.0)
            if any(a != 0.0 for a in row) else component
            for n, component in enumerate(y))
        stages.append(tuple(f(t + c * dt, point)))
    return tuple(component + dt * sum(b * k[n] for b, k in zip(tableau.b, stages) if b != 0.0)
                 for n, component in enumerate(y))
