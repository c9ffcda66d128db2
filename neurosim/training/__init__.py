"""Learning protocols and the training loop."""
from .config import LRSchedule, TrainingConfig, build_network, training_config
from .ep import EquilibriumPropagation
from .trainer import History, Trainer, weight_angle

__all__ = ["LRSchedule", "TrainingConfig", "build_network", "training_config",
           "EquilibriumPropagation", "History", "Trainer", "weight_angle"]
