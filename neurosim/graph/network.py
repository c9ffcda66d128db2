"""The network graph: populations plus projections, validated on construction."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from ..errors import ConfigError, unknown
from .populations import SOMA, Population
from ..io.arrays import ArrayFile
from .projections import Projection


@dataclass
class Network:
    """A validated graph. Population order is the layer order of Gauss-Seidel schemes and the
    column order of the activity buffer; projections keep their declaration order."""

    populations: Sequence[Population]
    projections: Sequence[Projection] = field(default_factory=list)
    name: str = "network"

    def __post_init__(self):
        self.populations = list(self.populations)
        self.projections = list(self.projections)
        self._validate()

    def _validate(self) -> None:
        if not self.populations:
            raise ConfigError(f'network "{self.name}" has no populations; declare at least one.')
        seen: set[str] = set()
        for pop in self.populations:
            if not isinstance(pop, Population):
                raise ConfigError(f'network "{self.name}": {pop!r} is not a Population.')
            if pop.name in seen:
                raise ConfigError(f'network "{self.name}": duplicate population name "{pop.name}"; '
                                  "population names must be unique.")
            seen.add(pop.name)
        if all(p.is_input for p in self.populations):
            raise ConfigError(f'network "{self.name}": every population is an input; '
                              "add at least one pyramidal or interneuron population.")
        pops = self.population_map
        names: set[str] = set()
        for proj in self.projections:
            where = f'projection "{proj.name}"'
            if proj.name in names or proj.name in pops:
                raise ConfigError(f'{where}: duplicate name "{proj.name}"; projection names must '
                                  "be unique and differ from population names.")
            names.add(proj.name)
            if proj.source not in pops:
                raise unknown("population", proj.source, pops, f"{where} (source)")
            if proj.target not in pops:
                raise unknown("population", proj.target, pops, f"{where} (target)")
            target = pops[proj.target]
            if target.is_input:
                raise ConfigError(f'{where}: target "{target.name}" is an input population, '
                                  "whose activity is clamped; target a pyramidal or interneuron "
                                  "population instead.")
            valid = [SOMA, *target.compartments] if target.soma_inputs else \
                list(target.compartments)
            if proj.compartment not in valid:
                raise unknown("compartment", proj.compartment, valid,
                              f'{where} (target "{target.name}")')
            n_post, n_pre = target.size, pops[proj.source].size
            proj.check_sizes(n_post, n_pre)
            if proj.init == "gram_xavier" and n_post != n_pre:
                raise ConfigError(f'{where}: init "gram_xavier" builds a square matrix; source '
                                  f"and target sizes differ ({n_pre} vs {n_post}).")
            # explicit tensors and masks are shape-checked here, not at first use (a file's
            # shape from its header)
            if isinstance(proj.init, ArrayFile):
                shape = proj.init.shape(f'{where} init')
                if shape != proj.weight_shape(n_post, n_pre):
                    raise ConfigError(f"{where}: init {proj.init} has shape {shape} but "
                                      f'"{target.name}" x "{proj.source}" needs '
                                      f"{proj.weight_shape(n_post, n_pre)}.")
            elif not isinstance(proj.init, str):
                import torch
                proj.initial_weight(n_post, n_pre, torch.Generator())
            proj.initial_mask(n_post, n_pre)

    @property
    def population_map(self) -> dict[str, Population]:
        """Populations by name, in layer order."""
        return {p.name: p for p in self.populations}

    @property
    def projection_map(self) -> dict[str, Projection]:
        """Projections by name, in declaration order."""
        return {p.name: p for p in self.projections}

    def population(self, name: str) -> Population:
        """The population called ``name``; ConfigError (with suggestions) if there is none."""
        pops = self.population_map
        if name not in pops:
            raise unknown("population", name, pops, f'network "{self.name}"')
        return pops[name]

    def projection(self, name: str) -> Projection:
        """The projection called ``name``; ConfigError (with suggestions) if there is none."""
        projs = self.projection_map
        if name not in projs:
            raise unknown("projection", name, projs, f'network "{self.name}"')
        return projs[name]

    @property
    def inputs(self) -> list[Population]:
        """The clamped input populations, in layer order."""
        return [p for p in self.populations if p.is_input]

    @property
    def dynamic(self) -> list[Population]:
        """The populations with a soma equation (every non-input one), in layer order."""
        return [p for p in self.populations if not p.is_input]

    def incoming(self, population: str) -> list[Projection]:
        """The projections that target ``population`` (any compartment), in declaration
        order."""
        return [p for p in self.projections if p.target == population]

    def fan_in(self, population: str) -> dict[str, int]:
        """Total source size of the projections into each compartment of ``population``
        (compartment -> number of presynaptic neurons)."""
        sizes = self.population_map
        totals: dict[str, int] = {}
        for q in self.incoming(population):
            totals[q.compartment] = totals.get(q.compartment, 0) + sizes[q.source].size
        return totals
