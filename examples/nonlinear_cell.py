"""A nonlinear cell kind in a few lines: apical and lateral dendrites that gate the basal drive.

    tau du/dt = -g_lk u + A + I,           r = sigma(u),   tau = 1 / rate
    A = F (0.8 + 0.1 s(2 F C) + 0.1 s(2 F L)),             s(x) = 1 / (1 + exp(-x))
    F = g_B v_basal,   C = g_A v_apical,   L = g_L v_lateral,   I = v_soma

The basal (feed-forward) drive F passes with gain 0.9 when the context is silent; apical (C)
and lateral (L) context of the same sign as F raise the gain towards 1, context of the opposite
sign lowers it towards 0.8. ``I`` holds the direct soma currents (bias, nudge, soma
projections), so the cell can be nudged and given a bias like any other.

:class:`GatedCell` gives its partial derivatives (implicit solvers assemble the Jacobian
from them) and its fixed point (discrete passes); :class:`GatedCellAutograd` is the same cell
without ``partials``, so implicit solvers get its Jacobian by autograd.

A model file names the kind by import path (the repository root on PYTHONPATH)::

    [[population]]
    name = "h"
    type = "examples.nonlinear_cell:GatedCell"
    size = 16
    activation = "tanh"
    lateral = 1.0             # g_L; basal (g_B), apical (g_A), leak, rate, bias as usual

    [[projection]]
    name = "h_h"
    source = "h"
    target = "h"
    compartment = "lateral"

``python examples/nonlinear_cell.py`` integrates a small recurrent network of these cells
with rk4 and with BDF (analytic and autograd Jacobians) and prints how far apart they end.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from neurosim.errors import ConfigError
from neurosim.graph import PyramidalPopulation


@dataclass(frozen=True)
class GatedCell(PyramidalPopulation):
    """Soma driven by a basal input gated by apical and lateral context (module docstring)."""

    lateral: float = 1.0

    kind = "gated"

    def __post_init__(self):
        super().__post_init__()
        if self.dendrites:
            raise ConfigError(f'population "{self.name}" (kind "{self.kind}"): this cell has '
                              "exactly the dendrites basal, apical and lateral; remove "
                              f"dendrites = {dict(self.dendrites)!r}.")

    @property
    def compartments(self):
        return {"basal": self.basal, "apical": self.apical, "lateral": self.lateral}

    def _gate(self, v):
        """(F, C, L, s(2 F C), s(2 F L))."""
        f = self.basal * v["basal"]
        c, lat = self.apical * v["apical"], self.lateral * v["lateral"]
        return f, c, lat, torch.sigmoid(2 * f * c), torch.sigmoid(2 * f * lat)

    def drive(self, v):
        """A + I."""
        f, _, _, s_c, s_l = self._gate(v)
        return f * (0.8 + 0.1 * s_c + 0.1 * s_l) + v["soma"]

    def drift(self, u, v):
        """du/dt = rate (-g_lk u + A + I)."""
        return self.rate * (self.drive(v) - self.leak * u)

    def partials(self, u, v):
        """d drift/du = -rate g_lk;  d drift/dv_basal = rate g_B dA/dF,
        dA/dF = 0.8 + 0.1 s_C + 0.1 s_L + 0.2 F (C s_C (1 - s_C) + L s_L (1 - s_L));
        d drift/dv_apical = rate g_A 0.2 F^2 s_C (1 - s_C) (lateral alike);
        d drift/dv_soma = rate."""
        f, c, lat, s_c, s_l = self._gate(v)
        ds_c, ds_l = s_c * (1 - s_c), s_l * (1 - s_l)
        d_f = 0.8 + 0.1 * s_c + 0.1 * s_l + 0.2 * f * (c * ds_c + lat * ds_l)
        return torch.full_like(u, -self.rate * self.leak), {
            "soma": torch.full_like(u, self.rate),
            "basal": self.rate * self.basal * d_f,
            "apical": self.rate * self.apical * 0.2 * f * f * ds_c,
            "lateral": self.rate * self.lateral * 0.2 * f * f * ds_l,
        }

    def feedforward(self, v):
        """Fixed point for fixed inputs: u* = (A + I) / g_lk."""
        if self.leak == 0:
            raise ConfigError(f'population "{self.name}": a discrete pass needs leak > 0 '
                              "(u* = (A + I) / g_lk).")
        return self.drive(v) / self.leak


@dataclass(frozen=True)
class GatedCellAutograd(GatedCell):
    """:class:`GatedCell` without partials: implicit solvers use autograd for its Jacobian."""

    kind = "gated_autograd"

    def partials(self, u, v):
        return None


MODEL = """
[network]
name = "gated_demo"

[[population]]
name = "x"
type = "input"
size = 4

[[population]]
name = "h"
type = "examples.nonlinear_cell:{cell}"
size = 6
activation = "tanh"
bias = [0.1, -0.1, 0.2, 0.0, -0.2, 0.05]

[[population]]
name = "out"
type = "pyramidal"
size = 3
leak = 0.5
activation = "tanh"

[[projection]]
name = "x_h"
source = "x"
target = "h"
compartment = "basal"
scale = 2.0

[[projection]]
name = "h_h"
source = "h"
target = "h"
compartment = "lateral"
init = "normal"
scale = 0.4

[[projection]]
name = "h_out"
source = "h"
target = "out"
compartment = "basal"

[[projection]]
name = "out_h"
source = "out"
target = "h"
compartment = "apical"

[simulation]
duration = 5.0
dt = 0.01
batch = 2
dtype = "float64"
inputs = {{ x = {{ type = "uniform", low = -1.0, high = 1.0 }} }}
"""


def main() -> None:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # "examples.nonlinear_cell"
    from neurosim.simulation import Simulation

    final = {}
    for cell, solver in (("GatedCell", "rk4"), ("GatedCell", "bdf"),
                         ("GatedCellAutograd", "bdf")):
        options = {"rtol": 1e-10, "atol": 1e-12} if solver == "bdf" else {}
        sim = Simulation.from_model_text(MODEL.format(cell=cell), solver=solver, **options)
        sim.run()
        final[cell, solver] = sim.state.u.clone()
        head = sim.net.u_of(sim.state, "h")[0, :3].tolist()
        print(f"{cell:18s} {solver:4s} u(T) of h[0, :3] = {head}")
    reference = final["GatedCell", "rk4"]
    for key, u in final.items():
        print(f"max |u - u_rk4| for {key}: {float((u - reference).abs().max()):.2e}")


if __name__ == "__main__":
    main()
