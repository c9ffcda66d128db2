"""neurosim.sizing: estimates of a run's memory and disk, and the refusal when they exceed
what is available (limits injected here, so the tests do not depend on the machine)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from neurosim import sizing
from neurosim.cli import main
from neurosim.errors import ConfigError
from neurosim.graph import parse_model_text
from neurosim.io import open_recording
from neurosim.simulation import Simulation, monitors_from
from neurosim.training.config import TrainingConfig

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "models" / "three_compartment.toml"
# the demo plus a weight monitor (records of 24 x 24) every 5th step
WEIGHTS_TEXT = DEMO.read_text() + '\n[[monitor]]\nprojection = "lower_lateral"\nevery = 5\n'


def _simulation(text: str, **overrides):
    sim = Simulation.from_model_text(text, where="demo", **overrides)
    return sim, monitors_from(parse_model_text(text), sim.network, "demo")


@pytest.mark.parametrize("steps, chunk", [(3, 256), (400, 256), (2000, 64), (400, 16)])
def test_recording_estimate_matches_the_file(tmp_path, capsys, steps, chunk):
    model = tmp_path / "model.toml"
    model.write_text(WEIGHTS_TEXT)
    out = tmp_path / "rec.h5"
    sim, monitors = _simulation(WEIGHTS_TEXT, n_steps=steps)
    estimate = sizing.estimate_simulation(sim, monitors=monitors, chunk_size=chunk, out=out)
    assert main(["simulate", str(model), "--out", str(out), "--steps", str(steps),
                 "--chunk-size", str(chunk), "--quiet"]) == 0
    actual = out.stat().st_size
    assert 0.5 < estimate.disk_bytes / actual < 2, (estimate.disk_bytes, actual)
    # the summary line reports the size written
    assert capsys.readouterr().out.strip().endswith(f"({sizing.format_bytes(actual)})")
    # records x bytes per record, per monitor: the counts are exact
    with open_recording(out) as rec:
        for item in estimate.by_kind("recording"):
            if item.name == "time axes":
                continue
            values = rec.read(item.name).values
            assert item.detail.startswith(f"{values.shape[0]} records of "
                                          f"{' x '.join(map(str, values.shape[1:]))} float32")
            assert item.nbytes >= values.nbytes
            assert item.directory == str(tmp_path)


def test_memory_items_are_the_tensors_the_network_holds():
    sim, monitors = _simulation(DEMO.read_text(), dtype="float64", batch=3)
    estimate = sizing.estimate_simulation(sim, monitors=monitors, chunk_size=32)
    weights = {i.name: i.nbytes for i in estimate.by_kind("projection")}
    assert weights == {name: w.numel() * w.element_size() for name, w in sim.net.weights.items()}
    assert estimate.by_kind("recorder buffer")[0].nbytes == 32 * 3 * 5 * 8   # lower/soma/u
    # the same estimate from the graph, from the compiled network and from the simulation
    for source in (sim.network, sim.net):
        again = sizing.estimate_simulation(source, sim.options, monitors, chunk_size=32)
        assert again.items == estimate.items
    assert estimate.memory_bytes == estimate.total("memory", "host") > sum(weights.values())
    assert "simulation: about " in estimate.summary()


def test_records_between():
    assert sizing.records_between(1, 0, 10) == 11            # steps 0..10
    assert sizing.records_between(5, 0, 12) == 3             # 0, 5, 10
    assert sizing.records_between(5, 10, 22) == 2            # resumed at 10: 15, 20
    assert sizing.records_between(3, 4, 4) == 0


def test_refusal_with_injected_limits():
    sim, monitors = _simulation(DEMO.read_text())
    estimate = sizing.estimate_simulation(sim, monitors=monitors, out="/somewhere/rec.h5")
    sizing.check_size(estimate, memory_available=10**12, disk_available=10**12)   # fits
    with pytest.raises(ConfigError) as info:
        sizing.check_size(estimate, memory_available=1000, disk_available=10**12)
    message = str(info.value)
    assert message.startswith(f"this simulation needs about "
                              f"{sizing.format_bytes(estimate.memory_bytes)} of memory but "
                              "1 kB is available (")
    assert estimate.largest("memory", "host")[0].describe() in message
    assert message.endswith("pass --no-size-check to start anyway.")
    with pytest.raises(ConfigError, match=r"writes about .* to /somewhere but only 100 B is "
                                          r"free there \(recording "):
        sizing.check_size(estimate, memory_available=10**12, disk_available=100)
    with pytest.raises(ConfigError, match="pass --mine to start anyway"):
        sizing.check_size(estimate, memory_available=10, override="--mine")
    # per directory, and parts switched off
    sizing.check_size(estimate, memory=False, disk_available={"/somewhere": 10**9})
    sizing.check_size(estimate, memory_available=10, disk=False, memory=False)


def test_gpu_estimate_compares_device_and_host_memory_separately():
    estimate = sizing.SizeEstimate("simulation", "cuda:0")
    estimate.add("projection", "w", 4000, "memory", "1000 x 1 float32 weights")
    estimate.add("initialisation of projection", "w", 8000, "host", "1000 x 1 float64 weights")
    sizing.check_size(estimate, memory_available=5000, host_available=9000, disk=False)
    with pytest.raises(ConfigError, match="of GPU memory but 3 kB is available"):
        sizing.check_size(estimate, memory_available=3000, host_available=9000)
    with pytest.raises(ConfigError, match=r"8 kB of memory but 7 kB is available "
                                          r"\(initialisation of projection \"w\" needs"):
        sizing.check_size(estimate, memory_available=5000, host_available=7000)


def test_training_estimate_and_checkpoint_disk(tmp_path):
    sim, _ = _simulation(DEMO.read_text())
    config = TrainingConfig(batch_size=20, eval_batch_size=500, input="stimulus",
                            output="upper")
    estimate = sizing.estimate_training(sim.network, config, run_dir=tmp_path / "run")
    assert estimate.what == "training run"
    lower = next(i for i in estimate.by_kind("population") if i.name == "lower")
    assert "batch 500" in lower.detail                  # the larger of the two batch sizes
    (checkpoint,) = estimate.by_kind("checkpoint")
    assert checkpoint.directory == str(tmp_path / "run")
    with pytest.raises(ConfigError, match="training run writes about"):
        sizing.check_size(estimate, memory_available=10**12, disk_available=10)


def test_machine_limits_are_read():
    assert sizing.available_memory() > 0
    assert sizing.free_disk(REPO) > 0
    assert sizing.free_disk(REPO / "not" / "yet" / "made") == sizing.free_disk(REPO)


def test_format_bytes():
    assert [sizing.format_bytes(n) for n in (0, 999, 1000, 156374, 12_300_000, 2.4e11)] == \
        ["0 B", "999 B", "1 kB", "156 kB", "12.3 MB", "240 GB"]


def test_allocation_errors_are_named():
    torch_error = RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. "
                               "DefaultCPUAllocator: can't allocate memory: you tried to "
                               "allocate 2400 bytes. Error code 12 (Cannot allocate memory)")
    assert sizing.is_allocation_error(torch_error) and sizing.is_allocation_error(MemoryError())
    assert not sizing.is_allocation_error(RuntimeError("mat1 and mat2 shapes cannot be "
                                                       "multiplied"))
    assert sizing.requested_bytes(torch_error) == 2400
    estimate = sizing.SizeEstimate("simulation")
    estimate.add("projection", "big", 9000, "memory", "3 x 750 float32 weights")
    estimate.add("population", "h", 2400, "memory", "200 neurons x batch 1 float32 state")
    message = sizing.allocation_message(estimate, torch_error)
    assert message.startswith('cannot allocate memory (asked for 2.4 kB): population "h" '
                              "needs 200 neurons x batch 1 float32 state = 2.4 kB")
    # no exact match: the largest projection or population
    assert 'projection "big"' in sizing.allocation_message(estimate, MemoryError())
    with pytest.raises(ConfigError, match='population "h"'):
        with sizing.allocation_guard(estimate):
            raise torch_error
    with pytest.raises(RuntimeError, match="shapes"):       # other errors pass through
        with sizing.allocation_guard(estimate):
            raise RuntimeError("shapes")


def test_projection_names_itself_when_its_weights_cannot_be_allocated(monkeypatch):
    from neurosim.graph import Projection
    from neurosim.graph import projections

    def refuse(n_post, n_pre, generator, dtype, scale):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate "
                           f"{n_post * n_pre * 8} bytes.")

    monkeypatch.setattr(projections.INITIALISERS, "lookup", lambda name, where: refuse)
    with pytest.raises(ConfigError, match=r'projection "x_h" needs 300000 x 200000 float64 '
                                          r"weights = 480 GB while it is initialised"):
        Projection("x_h", "x", "h").initial_weight(300000, 200000, torch.Generator())
