"""Network graphs: populations of multi-compartment neurons and the projections between them."""
from .activations import Activation, get_activation
from .network import Network
from .populations import (SOMA, InputPopulation, InterneuronPopulation, Population,
                          PyramidalPopulation)
from .projections import Projection
from .toml import (ModelFile, check_finite, check_keys, load_model_file, network_from_dict,
                   parse_model_text)

__all__ = ["Activation", "get_activation", "Network", "SOMA", "InputPopulation",
           "InterneuronPopulation", "Population", "PyramidalPopulation", "Projection",
           "ModelFile", "check_finite", "check_keys", "load_model_file", "network_from_dict",
           "parse_model_text"]
