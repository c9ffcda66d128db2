"""State and weights by name, and recordings from Python equal to those of the CLI in their
attributes."""
from __future__ import annotations

from pathlib import Path

import h5py
import pytest
import torch

from neurosim.cli import main
from neurosim.errors import ConfigError
from neurosim.io import MonitorSpec, Recorder
from neurosim.simulation import Simulation, monitors_from
from neurosim.graph import parse_model_text

MODEL = Path(__file__).resolve().parents[1] / "models" / "three_compartment.toml"


def test_population_state_views_and_dendrites():
    sim = Simulation.from_model_text(MODEL.read_text(), n_steps=20)
    sim.run()
    lower = sim.state["lower"]
    net = sim.net
    assert torch.equal(lower.u, net.u_of(sim.state, "lower"))
    assert torch.equal(lower.r, net.r_of(sim.state, "lower"))
    assert set(lower.v) == {"basal", "apical"}
    assert torch.equal(lower.v["apical"], net.compartment_potential(sim.state, "lower", "apical"))
    lower.u[:, 0] = 7.0                                 # views: writing changes the state
    assert bool((net.u_of(sim.state, "lower")[:, 0] == 7.0).all())
    assert sim.state["stimulus"].v == {} and sim.state["inhibition"].v == {}
    assert sim.state.populations == ["stimulus", "lower", "upper", "inhibition"]
    with pytest.raises(ConfigError, match='"stimulus" is an input'):
        sim.state["stimulus"].u
    with pytest.raises(ConfigError, match='Did you mean "lower"'):
        sim.state["lowr"]
    assert "batch=2" in repr(lower)


def test_weights_and_biases_by_name_are_the_live_tensors():
    sim = Simulation.from_model_text(MODEL.read_text(), n_steps=5)
    w = sim.weights["stimulus_lower"]
    assert w.shape == (24, 12) and w is sim.net.weights["stimulus_lower"]
    assert "lower_upper" in sim.weights and len(sim.weights) == len(sim.net.weights)
    assert sim.biases["lower"].shape == (24,)
    with pytest.raises(ConfigError, match='Did you mean "lower_upper"'):
        sim.weights["lower_uper"]


def test_python_and_cli_recordings_carry_the_same_attributes(tmp_path):
    assert main(["simulate", str(MODEL), "--steps", "10", "--out", str(tmp_path / "cli.h5"),
                 "--quiet"]) == 0
    sim = Simulation.from_model_text(MODEL.read_text(), n_steps=10)
    plain = [MonitorSpec(m.population, m.compartment, m.variable, indices=m.indices)
             for m in monitors_from(parse_model_text(MODEL.read_text()), sim.network, "m")]
    with Recorder(tmp_path / "py.h5") as rec:
        sim.run(monitors=plain, recorder=rec)
    with h5py.File(tmp_path / "cli.h5") as a, h5py.File(tmp_path / "py.h5") as b:
        for key in ("model", "solver", "schedule", "batch", "dt", "time_units"):
            assert a.attrs[key] == b.attrs[key], key
        names = []
        a["recordings"].visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset)
                                   else None)
        assert names
        for name in names:
            left, right = a["recordings"][name], b["recordings"][name]
            assert left.attrs["units"] == right.attrs["units"] != "", name
            assert a[left.attrs["time"]].attrs["units"] == b[right.attrs["time"]].attrs["units"]
