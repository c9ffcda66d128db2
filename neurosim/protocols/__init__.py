"""Learning protocols: the phases a training step runs and what its rules see (see
:mod:`.base`). Built-in: "ep" (equilibrium propagation), "pepita" (two forward passes, the
second on error-modulated input), "relax" (unsupervised: relax, then learn), "backprop" and
"feedback_alignment" (gradient baselines on feed-forward chains), "copi" (constrained
parameter inference with learned decorrelation), "infomorphic" (lateral sweeps of
infomorphic neurons with local PID goals). Others are found
by name once registered, or as "package.module:Class"."""
from .backprop import Backprop, FeedbackAlignment
from .base import (PROTOCOLS, LearningProtocol, StepOutput, build_protocol,
                   register_protocol, writable)
from .copi import Copi
from .ep import EPStep, EquilibriumPropagation
from .infomorphic import Infomorphic
from .pepita import Pepita
from .relax import Relax

__all__ = ["PROTOCOLS", "LearningProtocol", "StepOutput", "build_protocol",
           "register_protocol", "writable", "EPStep", "EquilibriumPropagation", "Pepita",
           "Relax", "Backprop", "FeedbackAlignment", "Copi", "Infomorphic"]
