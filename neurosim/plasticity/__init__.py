"""Plasticity rules as synapse and population hooks (one file per rule); see :mod:`.base` for
what rules receive and :mod:`.dispatch` for how they run."""
from .base import (RULES, PlasticityRule, PopulationContext, PopulationRule, SynapseContext,
                   Warmup, build_rule, register_rule, rule_class)
from .copi import CopiForward, Decorrelation
from .corinfomax_lateral import CorInfoMaxLateral
from .dispatch import RuleSet
from .ep_contrastive import EPContrastive
from .infomorphic import InfomorphicGoal
from .pepita import Pepita as PepitaRule
from .record import PhaseRecord

__all__ = ["RULES", "PlasticityRule", "PopulationContext", "PopulationRule", "SynapseContext",
           "Warmup", "build_rule", "register_rule", "rule_class", "CopiForward", "Decorrelation",
           "CorInfoMaxLateral", "RuleSet",
           "EPContrastive", "InfomorphicGoal", "PepitaRule", "PhaseRecord"]
