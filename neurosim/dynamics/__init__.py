"""Vectorised network dynamics compiled from a graph."""
from .compiled import (CompiledNetwork, NeuralState, PhaseDynamics, PopulationSlot,
                       PopulationState)

__all__ = ["CompiledNetwork", "NeuralState", "PhaseDynamics", "PopulationSlot",
           "PopulationState"]
