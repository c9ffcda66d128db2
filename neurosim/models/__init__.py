"""Model templates: functions that expand a few published hyperparameters into a full
network graph (the same tables a model file could spell out by hand, or a Network). A model
file names one with ``[model] template = "<name>"`` or "package.module:function"; register
your own with ``TEMPLATES.register(function, name="mine")``."""
from ..registry import Registry
from .corinfomax import corinfomax_graph, corinfomax_network

TEMPLATES = Registry("template")
TEMPLATES.register(corinfomax_graph, name="corinfomax")

__all__ = ["TEMPLATES", "corinfomax_graph", "corinfomax_network"]
