"""What a learning protocol leaves for its rules: a record of named phases.

A :class:`PhaseRecord` holds, for each phase a protocol ran (e.g. EP's "nudged" and "free",
PEPITA's "standard" and "modulated", a simulation's "now"), the network state of that phase
(activities ``r`` and soma potentials ``u``, samples as rows), plus the signals the protocol
provides (``target``, ``error``, ``beta``, modulated inputs, credit signals, ...). Dendritic
potentials ``v_c`` are computed from the state on demand. When every phase lives in one
stacked buffer (rows in phase order), :meth:`stacked` returns one view across all phases so a
rule can treat them with one matrix product.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from ..errors import ConfigError, did_you_mean


class PhaseRecord:
    """Per-phase network states plus protocol signals (see neurosim.plasticity.record)."""

    def __init__(self, net, phases: Mapping[str, Any], *, signals: Mapping[str, Any] | None = None,
                 stacked=None, batch_size: int | None = None):
        self.net = net
        self.states = dict(phases)
        self.phases: tuple[str, ...] = tuple(self.states)
        self.signals = dict(signals or {})
        self._stacked = stacked
        first = next(iter(self.states.values()))
        self.batch_size = int(batch_size if batch_size is not None else first.r.shape[-2])

    def check_phase(self, phase: str, who: str) -> None:
        """ConfigError naming ``who`` and the recorded phases unless ``phase`` is one."""
        if phase not in self.states:
            raise ConfigError(f'{who} asked for phase "{phase}".{did_you_mean(phase, self.phases)} '
                              f"Phases of this protocol: {', '.join(self.phases)}.")

    def activity(self, population: str, phase: str) -> torch.Tensor:
        """r of a population in a phase (batch x n)."""
        return self.net.r_of(self.states[phase], population)

    def potential(self, population: str, compartment: str, phase: str) -> torch.Tensor:
        """Soma potential u ("soma") or dendritic potential v_c of a population in a phase."""
        state = self.states[phase]
        if compartment == "soma":
            return self.net.u_of(state, population)
        return self.net.compartment_potential(state, population, compartment)

    def stacked(self, population: str, phases: Sequence[str] | None = None) -> torch.Tensor:
        """Activities of every phase (or of ``phases``) stacked along the batch axis, in
        phase order; a view of the shared buffer when the protocol keeps one."""
        phases = tuple(phases) if phases is not None else self.phases
        if self._stacked is not None and phases == self.phases:      # one view, no copy
            return self.net.r_of(self._stacked, population)
        return torch.cat([self.activity(population, p) for p in phases], dim=-2)

    def signal(self, name: str, who: str = "rule") -> Any:
        """A protocol-provided signal, e.g. "target", "error", "beta"."""
        if name not in self.signals:
            raise ConfigError(f'{who} needs the signal "{name}", which this protocol does not '
                              f"provide.{did_you_mean(name, self.signals)} Signals: "
                              f"{', '.join(sorted(self.signals)) or '(none)'}.")
        return self.signals[name]
