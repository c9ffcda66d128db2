"""Plasticity in plain simulations (no learning protocol): Oja's rule (examples/oja.py) on a
rate neuron with known input covariance, run every N steps and continuously as an ODE (rk4,
dopri5); the weight trajectory in the recording; exact resume; rules that cannot run in the
chosen mode are errors."""
from __future__ import annotations

import re
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from neurosim.cli import main as cli
from neurosim.errors import ConfigError
from neurosim.simulation import Simulation

ROOT = Path(__file__).resolve().parents[1]
OJA = ROOT / "examples" / "oja_simulate.toml"
OJA_TEXT = OJA.read_text()
C = np.array([[0.3755, 0.3836, -0.0449, 0.0795], [0.3836, 2.6619, -0.2726, -0.7517],
              [-0.0449, -0.2726, 0.7516, -0.1982], [0.0795, -0.7517, -0.1982, 0.9111]])
PC1 = np.linalg.eigh(C)[1][:, -1]


def _cos(w) -> float:
    w = np.asarray(w, dtype=np.float64).ravel()
    return abs(float(w @ PC1)) / float(np.linalg.norm(w))


def _sim(**overrides) -> Simulation:
    return Simulation.from_model_text(OJA_TEXT, base_dir=OJA.parent, **overrides)


def test_the_model_file_states_the_covariance_used_here():
    match = re.search(r"covariance = (\[\[.*\]\])", OJA_TEXT)
    assert np.array_equal(np.array(eval(match.group(1))), C)


def test_oja_every_n_steps_from_the_command_line_finds_the_first_principal_component(tmp_path):
    out = tmp_path / "oja.h5"
    assert cli(["simulate", str(OJA), "--out", str(out), "--quiet"]) == 0
    with h5py.File(out, "r") as fh:
        w = fh["recordings/w/synapses/w"]
        assert w.attrs["axes"] == "time, post, pre" and w.shape == (61, 1, 4)
        times = fh[w.attrs["time"]][()]
        trajectory = w[()]
    assert times[0] == 0 and times[-1] == pytest.approx(60.0)
    assert _cos(trajectory[0]) < 0.5                       # it starts far from the PC ...
    assert _cos(trajectory[-1]) > 0.99                     # ... and ends on it
    assert np.linalg.norm(trajectory[-1]) == pytest.approx(1.0, abs=1e-3)   # Oja normalises


@pytest.mark.parametrize("solver", ["rk4", "dopri5"])
def test_oja_continuous_ode_converges_and_agrees_with_small_steps(solver):
    sim = _sim(plasticity="continuous", solver=solver, dtype="float64")
    stats = sim.run()
    assert stats.steps == 3000
    assert _cos(sim.net.weights["w"]) > 0.99

    # over the first t = 10 (most of the rotation), the joint ODE integrated with a 4x smaller
    # rk4 step gives the same weights
    coarse = _sim(plasticity="continuous", solver=solver, dtype="float64", duration=10.0)
    coarse.run()
    fine = _sim(plasticity="continuous", solver="rk4", dtype="float64", dt=0.005, duration=10.0)
    fine.run()
    assert (coarse.net.weights["w"] - sim.net.weights["w"]).abs().max() > 0.1
    assert torch.allclose(coarse.net.weights["w"], fine.net.weights["w"], atol=1e-6, rtol=0)


def test_every_n_steps_updates_only_at_multiples_of_n_with_the_elapsed_time():
    sim = _sim(n_steps=12, plasticity={"every": 5})
    seen = []
    rule = sim.network.projection("w").rules[0]
    original = type(rule).update

    def spy(self, ctx):
        seen.append((ctx.step, round(ctx.dt, 9), ctx.phases))
        original(self, ctx)
    type(rule).update = spy
    try:
        sim.run()
    finally:
        type(rule).update = original
    assert seen == [(5, 0.1, ("now",)), (10, 0.1, ("now",))]


def test_resume_of_a_plastic_simulation_is_bit_identical(tmp_path):
    straight = _sim(n_steps=40, plasticity={"every": 3})
    straight.run()
    split = _sim(n_steps=40, plasticity={"every": 3})
    split.run(17)
    split.save_checkpoint(tmp_path / "sim.h5")
    resumed = Simulation.load_checkpoint(tmp_path / "sim.h5")
    assert resumed.plasticity == ("every", 3) and resumed.last_update_t == split.last_update_t
    resumed.run()
    assert torch.equal(resumed.net.weights["w"], straight.net.weights["w"])
    assert torch.equal(resumed.state.u, straight.state.u)


def test_rules_that_cannot_run_in_the_chosen_mode_are_errors(tmp_path):
    ep = OJA_TEXT.replace('{ type = "oja:Oja", lr = 0.1 }', '{ type = "ep_contrastive", lr = 0.1 }')
    with pytest.raises(ConfigError, match=r'needs the phases \[.nudged., .free.\].*"now".*"off"'):
        Simulation.from_model_text(ep)
    assert Simulation.from_model_text(ep, plasticity="off").plasticity[0] == "off"
    with pytest.raises(ConfigError, match="defines no derivative"):
        Simulation.from_model_text(ep.replace("ep_contrastive", "corinfomax_lateral")
                                   .replace("lr = 0.1", "lam = 0.9"), plasticity="continuous")
    with pytest.raises(ConfigError, match='solver "gs-euler" cannot integrate weights'):
        _sim(plasticity="continuous", solver="gs-euler")
    with pytest.raises(ConfigError, match="no projection or population of this network has rules"):
        Simulation.from_model_text(OJA_TEXT.replace('rules = [{ type = "oja:Oja", lr = 0.1 }]', ""),
                                   plasticity={"every": 2})
    with pytest.raises(ConfigError, match='unknown plasticity mode "sometimes"'):
        _sim(plasticity="sometimes")
    with pytest.raises(ConfigError, match="every must be a positive number of steps"):
        _sim(plasticity={"every": 0})
    bad = tmp_path / "bad.toml"
    bad.write_text(OJA_TEXT.replace('projection = "w"', 'projection = "v"'))
    assert cli(["simulate", str(bad), "--out", str(tmp_path / "x.h5"), "--quiet"]) == 2


def test_gaussian_inputs_have_the_declared_covariance():
    sim = _sim(batch=20000)
    x = sim.inputs["x"].double()
    assert torch.allclose(torch.cov(x.T), torch.as_tensor(C), atol=0.08)
    with pytest.raises(ConfigError, match="symmetric positive definite"):
        Simulation.from_model_text(OJA_TEXT.replace("0.3755", "-5.0"), base_dir=OJA.parent)


@pytest.mark.parametrize("options", [{"plasticity": {"every": 4}},
                                     {"plasticity": "continuous", "solver": "rk4"},
                                     {"plasticity": "continuous", "solver": "dopri5"}])
def test_checkpoints_written_during_a_plastic_run_resume_exactly(tmp_path, options):
    """Checkpoints every 10 steps during run(128): a rule update due on a checkpoint step is
    in the checkpoint, and odeint segments are never cut."""
    straight = _sim(n_steps=140, **options)
    straight.run()
    ckpt = tmp_path / "sim.h5"
    _sim(n_steps=140, **options).run(128, checkpoint=ckpt, checkpoint_every=10)
    resumed = Simulation.load_checkpoint(ckpt)
    assert resumed.step == (128 if options.get("solver") == "dopri5" else 120)
    resumed.run()
    assert torch.equal(resumed.net.weights["w"], straight.net.weights["w"])
    assert torch.equal(resumed.state.u, straight.state.u)


def test_warmup_and_schedules_are_refused_in_simulations_and_cli_plasticity_flag(tmp_path,
                                                                                capsys):
    text = OJA_TEXT.replace('lr = 0.1 }', 'lr = 0.1, warmup = { epochs = 2 } }')
    with pytest.raises(ConfigError, match="warmup and schedule count training epochs"):
        Simulation.from_model_text(text, base_dir=OJA.parent)
    template = ROOT / "models" / "corinfomax_digits.toml"       # EP rules, a [model] template
    out = tmp_path / "x.h5"
    assert cli(["simulate", str(template), "--out", str(out), "--steps", "5", "--quiet"]) == 2
    assert "--plasticity off" in capsys.readouterr().err
    assert cli(["simulate", str(template), "--out", str(out), "--steps", "5", "--quiet",
                "--plasticity", "off"]) == 0
