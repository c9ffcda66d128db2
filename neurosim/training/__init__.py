"""The protocol-agnostic training loop and its run options. Protocols live in
neurosim.protocols, metrics in neurosim.metrics, schedules in neurosim.schedules."""
from ..metrics import weight_angle
from ..protocols import EquilibriumPropagation
from .config import TrainingConfig, build_network, training_config
from .ensemble import Ensemble
from .trainer import History, Trainer

__all__ = ["TrainingConfig", "build_network", "training_config",
           "EquilibriumPropagation", "Ensemble", "History", "Trainer", "weight_angle"]
