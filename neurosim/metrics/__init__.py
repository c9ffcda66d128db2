"""Epoch metrics as plug-ins (see :mod:`.base`): "correlative_information", "weight_angle",
"principal_alignment", or a user's "package.module:Class"."""
from .base import METRICS, EpochMetric, MetricContext, build_metrics
from .correlative_information import CorrelativeInformation
from .principal_alignment import PrincipalAlignment
from .weight_angle import WeightAngle, reciprocal_pairs, weight_angle

__all__ = ["METRICS", "EpochMetric", "MetricContext", "build_metrics", "CorrelativeInformation",
           "PrincipalAlignment", "WeightAngle", "reciprocal_pairs", "weight_angle"]
