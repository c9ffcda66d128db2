"""Partial information decomposition (PID) with the shared-exclusion redundancy I_sx, for two
or three sources and a discrete target, usable on its own or as the local goal of infomorphic
neurons.

For sources S = (S_1..S_n), n = 2 or 3, target Y, joint pmf P(s, y) and an antichain alpha of
source subsets with events E_a = {S_a = s_a}:

    I_sx(Y : alpha) = sum_{s,y} P(s,y) log2 [ P(y, U_{a in alpha} E_a) / (P(U_a E_a) P(y)) ]
    I_sx(alpha) = sum_{beta <= alpha} Pi(beta)   =>   Pi = M I_sx   (Moebius inversion)
    H_res = H(Y) - I(Y; S),   sum_alpha Pi(alpha) = I(Y; S)
    goal:  G = gamma . [Pi; H_res]

Modules: :mod:`.lattice` (antichains, order, Moebius matrix), :mod:`.redundancy` (I_sx and
the PID of a dense joint pmf), :mod:`.estimator` (the batched, differentiable estimate for N
neurons, evaluated at the sample points, and the analysis helper :func:`pid_from_samples`),
:mod:`.binning`, :mod:`.goals` (named goal vectors). Guide: docs/pid.md.

References: Makkeh, Gutknecht, Wibral, "Introducing a differentiable measure of pointwise shared
information", Phys. Rev. E 103:032149 (2021); Gutknecht, Wibral, Makkeh, "Bits and pieces:
understanding information decomposition from part-whole relationships and formal logic",
Proc. R. Soc. A 477:20210110 (2021); Schneider, Neuhaus, Ehrlich, Makkeh, Ecker, Priesemann,
Wibral, "What should a neuron aim for? Designing local objective functions based on
information theory", ICLR 2025; reference values from the SxPID package (Abzinger/SxPID).
"""
from .binning import bin_fixed, bin_normalised
from .estimator import SamplePoints, pid_atoms, pid_from_samples, pid_goal, sample_points
from .goals import GOALS, goal_vector, goal_weights
from .lattice import Lattice, get_lattice, leq, union_coefficients
from .redundancy import PIDResult, isx, pid_from_pmf

__all__ = ["Lattice", "get_lattice", "leq", "union_coefficients", "PIDResult", "isx",
           "pid_from_pmf", "SamplePoints", "sample_points", "pid_atoms", "pid_goal",
           "pid_from_samples", "bin_fixed", "bin_normalised", "GOALS", "goal_vector",
           "goal_weights"]
