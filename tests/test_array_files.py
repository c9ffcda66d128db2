"""Weights and inputs from files (neurosim.io.arrays): a projection's ``init`` and a
simulation input's values may name a .npy file or an HDF5 dataset, relative to the model
file's directory; the model text stays small and every bad reference is one clear error."""
from __future__ import annotations

import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from neurosim.cli import main
from neurosim.errors import ConfigError
from neurosim.graph import load_model_file
from neurosim.io import open_recording
from neurosim.simulation import Simulation

MODEL = """
[[population]]
name = "x"
type = "input"
size = 3

[[population]]
name = "h"
type = "pyramidal"
size = 4

[[projection]]
name = "x_h"
source = "x"
target = "h"
compartment = "basal"
init = {init}

[[projection]]
name = "h_h"
source = "h"
target = "h"
compartment = "apical"
init = {recurrent}

[simulation]
solver = "euler"
dt = 0.1
n_steps = 5
batch = 2
inputs = {{ x = {inputs} }}
"""

W = np.arange(12, dtype=np.float64).reshape(4, 3) / 10
R = -np.eye(4) / 4
X = np.array([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])


def write_model(directory: Path, init='{ file = "w.npy" }',
                recurrent='{ file = "weights.h5", dataset = "group/R" }',
                inputs='{ file = "x.npy" }') -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    np.save(directory / "w.npy", W)
    np.save(directory / "x.npy", X)
    with h5py.File(directory / "weights.h5", "w") as fh:
        fh["group/R"] = R
        fh["other"] = W
    path = directory / "model.toml"
    path.write_text(MODEL.format(init=init, recurrent=recurrent, inputs=inputs))
    return path


def test_weights_and_inputs_come_from_files_next_to_the_model(tmp_path, monkeypatch):
    path = write_model(tmp_path / "models")
    monkeypatch.chdir(tmp_path)                      # relative to the model, not the cwd
    sim = Simulation.from_model_file(path, dtype="float64")
    assert torch.equal(sim.weights["x_h"], torch.as_tensor(W))
    assert torch.equal(sim.weights["h_h"], torch.as_tensor(R))
    assert torch.equal(sim.state["x"].r, torch.as_tensor(X))
    inline = write_model(tmp_path / "inline", init=str(W.tolist()), recurrent=str(R.tolist()),
                         inputs=f"{{ values = {X.tolist()} }}")
    reference = Simulation.from_model_file(inline, dtype="float64")
    sim.run()
    reference.run()
    assert torch.equal(sim.state.u, reference.state.u)


def test_command_line_run_records_the_small_model_text(tmp_path, monkeypatch):
    path = write_model(tmp_path / "models")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "rec.h5"
    assert main(["simulate", str(path), "--out", str(out), "--quiet"]) == 0
    with open_recording(out) as rec:
        assert 'init = { file = "w.npy" }' in rec.config_text
        assert len(rec.config_text) < 1000


def test_a_large_weight_file_parses_quickly(tmp_path):
    n = 2000
    directory = tmp_path / "big"
    directory.mkdir()
    np.save(directory / "big.npy", np.full((n, n), 1e-4, dtype=np.float32))
    text = MODEL.format(init='{ file = "w.npy" }', recurrent='{ file = "big.npy" }',
                        inputs='{ file = "x.npy" }').replace("size = 4", f"size = {n}")
    np.save(directory / "w.npy", np.zeros((n, 3)))
    np.save(directory / "x.npy", X)
    (directory / "model.toml").write_text(text)
    start = time.perf_counter()
    model = load_model_file(directory / "model.toml")
    sim = Simulation.from_model_text(model.text, base_dir=directory)
    assert time.perf_counter() - start < 5.0
    assert len(model.text) < 1000
    assert float(sim.weights["h_h"][0, 0]) == pytest.approx(1e-4)


@pytest.mark.parametrize("change, message", [
    ({"init": '{ file = "missing.npy" }'}, "does not exist (relative paths are relative to"),
    ({"init": '{ file = "weights.h5" }'}, "name the HDF5 dataset of weights.h5"),
    ({"init": '{ file = "w.npy", dataset = "W" }'}, "dataset applies to HDF5 files"),
    ({"init": '{ file = "weights.h5", dataset = "nope" }'}, "has no dataset 'nope' (it has: "
                                                           "group/R, other)"),
    ({"init": '{ file = "w.npy", scale = 2 }'}, "name an array file as"),
    ({"init": '{ file = "model.toml" }'}, "neither a .npy nor an HDF5"),
    ({"init": '{ file = "x.npy" }'}, "has shape (2, 3) but \"h\" x \"x\" needs (4, 3)"),
    ({"inputs": '{ file = "w.npy" }'}, "values have shape (4, 3), expected (3,) or (batch=2"),
    ({"inputs": '{ file = "x.npy", values = [1, 2, 3] }'}, "not both"),
])
def test_bad_file_references_are_one_clear_error(tmp_path, change, message):
    path = write_model(tmp_path, **change)
    with pytest.raises(ConfigError, match=None) as err:
        Simulation.from_model_file(path)
    assert message in str(err.value)


def test_non_finite_weights_in_a_file_are_refused(tmp_path):
    path = write_model(tmp_path)
    np.save(tmp_path / "w.npy", np.full((4, 3), np.nan))
    with pytest.raises(ConfigError, match="non-finite|finite"):
        Simulation.from_model_file(path)


def test_big_endian_files_load_and_complex_ones_are_refused(tmp_path):
    path = write_model(tmp_path)
    np.save(tmp_path / "w.npy", W.astype(">f8"))
    sim = Simulation.from_model_file(path, dtype="float64")
    assert torch.equal(sim.weights["x_h"], torch.as_tensor(W))
    np.save(tmp_path / "w.npy", W.astype(np.complex128))
    with pytest.raises(ConfigError, match="complex128 values, not real numbers"):
        Simulation.from_model_file(path)
