"""Vectorised network dynamics compiled from a graph."""
from .compiled import CompiledNetwork, NeuralState, PhaseDynamics, PopulationSlot

__all__ = ["CompiledNetwork", "NeuralState", "PhaseDynamics", "PopulationSlot"]
