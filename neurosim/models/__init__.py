"""Model templates: functions that expand a few published hyperparameters into a full
network graph (the same tables a model file could spell out by hand)."""
from .corinfomax import corinfomax_graph, corinfomax_network

TEMPLATES = {"corinfomax": corinfomax_graph}

__all__ = ["TEMPLATES", "corinfomax_graph", "corinfomax_network"]
