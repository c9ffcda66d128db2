"""Network graphs: populations of multi-compartment neurons and the projections between them."""
from .activations import ACTIVATIONS, Activation, get_activation
from .network import Network
from .populations import (POPULATION_KINDS, SOMA, DynamicPopulation, InputPopulation,
                          InterneuronPopulation, Population, PyramidalPopulation,
                          register_population)
from .infomorphic import InfomorphicPopulation
from .projections import (INITIALISERS, PROJECTION_KINDS, Conv2dProjection, MaxPool2dProjection,
                          Projection)
from .toml import (ModelFile, check_finite, check_keys, load_model_file, network_from_dict,
                   parse_model_text)

__all__ = ["Activation", "get_activation", "ACTIVATIONS", "Network", "SOMA", "InputPopulation",
           "InterneuronPopulation", "InfomorphicPopulation", "Population", "DynamicPopulation",
           "PyramidalPopulation",
           "POPULATION_KINDS", "register_population", "Projection", "INITIALISERS",
           "PROJECTION_KINDS", "Conv2dProjection", "MaxPool2dProjection",
           "ModelFile", "check_finite", "check_keys", "load_model_file", "network_from_dict",
           "parse_model_text"]
