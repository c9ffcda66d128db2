"""Vectorised network dynamics compiled from a graph.

Each dynamic population p obeys ``du_p/dt = f_p(t, u) = drift_p(u_p, v)`` with ``r = sigma(u)``
and compartment inputs ``v_c = sum_{q -> c} gain_q W_q r_src``; for linear cells (the built-in
kinds) this is

    du_p/dt = rate_p [ -d_p u_p + sum_q k_q W_q r_{s_q} + I_p ]
    d_p = g_lk + sum_c g_c;   k_q = g_{c_q} gain_q (dendrite) or gain_q (soma)
    I_p = b_p + beta_p (y_p - r_p)     (the nudge only in nudged phases)

How it is evaluated: neurosim.dynamics.compiled."""
from .compiled import (CompiledNetwork, Diagonal, LowPrecision, NeuralState, PhaseDynamics,
                       PopulationSlot, PopulationState)

__all__ = ["CompiledNetwork", "Diagonal", "LowPrecision", "NeuralState", "PhaseDynamics",
           "PopulationSlot", "PopulationState"]
