"""Plasticity rules as synapse hooks (one file per rule); see :mod:`.base` for the protocol."""
from .base import RULES, PlasticityRule, SynapseContext, build_rule, register_rule
from .corinfomax_lateral import CorInfoMaxLateral
from .ep_contrastive import EPContrastive

__all__ = ["RULES", "PlasticityRule", "SynapseContext", "build_rule", "register_rule",
           "CorInfoMaxLateral", "EPContrastive"]
