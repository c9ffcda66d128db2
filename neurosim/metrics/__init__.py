"""Epoch metrics as plug-ins (see :mod:`.base`): "correlative_information", "weight_angle",
"feedback_angle", "principal_alignment", or a user's "package.module:Class"."""
from .base import METRICS, EpochMetric, MetricContext, build_metrics
from .correlative_information import CorrelativeInformation
from .decorrelation import Decorrelation
from .feedback_angle import FeedbackAngle, chain_product, feedback_angle
from .principal_alignment import PrincipalAlignment
from .weight_angle import WeightAngle, reciprocal_pairs, weight_angle

__all__ = ["METRICS", "EpochMetric", "MetricContext", "build_metrics", "CorrelativeInformation",
           "Decorrelation",
           "FeedbackAngle", "PrincipalAlignment", "WeightAngle", "chain_product",
           "feedback_angle", "reciprocal_pairs", "weight_angle"]
