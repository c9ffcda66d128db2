"""Every class of user error raises a NeurosimError whose message says what is wrong, where,
and (where a near miss is likely) what was probably meant."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from neurosim.errors import ConfigError, NeurosimError, SimulationError
from neurosim.graph import (InputPopulation, InterneuronPopulation, Network, Projection,
                            PyramidalPopulation, load_model_file, network_from_dict,
                            parse_model_text)
from neurosim.io import MonitorSpec, RecordingError
from neurosim.simulation import Simulation, monitors_from, validate_monitor
from neurosim.solvers import get_solver, make_schedule

REPO = Path(__file__).resolve().parents[1]
DEMO_TEXT = (REPO / "models" / "three_compartment.toml").read_text()



def X():
    return InputPopulation("x", 3)


def H(**kw):
    return PyramidalPopulation("hidden", 4, **kw)


def demo(old: str, new: str, count: int = 1) -> str:
    """The demo model with one textual edit (which must apply)."""
    assert old in DEMO_TEXT, old
    return DEMO_TEXT.replace(old, new, count)


def toml_network(text: str):
    return network_from_dict(parse_model_text(text), "model.toml")


def raises(fn, *fragments: str, error=ConfigError):
    """Call fn; it must raise ``error`` (a NeurosimError) whose message contains every
    fragment literally. Returns the message."""
    with pytest.raises(error) as info:
        fn()
    assert isinstance(info.value, NeurosimError)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


# ---------------------------------------------------------------------------- graph errors

def test_unknown_population_in_projection_suggests_the_name():
    raises(lambda: Network([X(), H()], [Projection("p", "hiden", "hidden", "basal")]),
           'projection "p" (source): unknown population "hiden".', 'Did you mean "hidden"?',
           'Valid populations: "x", "hidden".')
    raises(lambda: Network([X(), H()], [Projection("p", "x", "hidde", "basal")]),
           'projection "p" (target): unknown population "hidde".', 'Did you mean "hidden"?')
    # and from TOML, with the file and table named
    raises(lambda: toml_network(demo('source = "lower"\ntarget = "upper"',
                                     'source = "lowr"\ntarget = "upper"')),
           "model.toml:", 'projection "lower_upper" (source): unknown population "lowr".',
           'Did you mean "lower"?')


def test_unknown_compartment():
    raises(lambda: Network([X(), H()], [Projection("p", "x", "hidden", "basel")]),
           'projection "p" (target "hidden"): unknown compartment "basel".',
           'Did you mean "basal"?', 'Valid compartments: "soma", "basal", "apical".')
    # interneurons have only a soma
    raises(lambda: Network([X(), InterneuronPopulation("inh", 2)],
                           [Projection("p", "x", "inh", "apical")]),
           'unknown compartment "apical".', 'Valid compartments: "soma".')


def test_explicit_weight_and_mask_shape_mismatch():
    raises(lambda: Network([X(), H()], [Projection("p", "x", "hidden", init=[[0.5] * 3] * 2)]),
           'projection "p": weight has shape (2, 3)', "needs (4, 3)")
    raises(lambda: Network([X(), H()], [Projection("p", "x", "hidden",
                                                   init=torch.zeros(3, 4))]),
           "weight has shape (3, 4)", "needs (4, 3)")
    raises(lambda: Network([X(), H()], [Projection("p", "x", "hidden", mask=[[1, 0]])]),
           'projection "p": mask has shape (1, 2), needs (4, 3)')
    raises(lambda: Network([X(), PyramidalPopulation("h2", 5)],
                           [Projection("p", "h2", "h2", init="identity", mask=None),
                            Projection("q", "x", "h2", init="identity")]),
           'projection "q": init "identity" needs equal sizes')


def test_duplicate_names():
    raises(lambda: Network([X(), H(), PyramidalPopulation("hidden", 2)]),
           'duplicate population name "hidden"', "must be unique")
    raises(lambda: Network([X(), H()], [Projection("p", "x", "hidden"),
                                       Projection("p", "hidden", "hidden")]),
           'projection "p": duplicate name "p"')
    raises(lambda: Network([X(), H()], [Projection("hidden", "x", "hidden")]),
           'duplicate name "hidden"', "differ from population names")
    raises(lambda: toml_network(demo('name = "upper"', 'name = "lower"')),
           "model.toml:", 'duplicate population name "lower"')


def test_input_population_as_projection_target():
    raises(lambda: Network([X(), H()], [Projection("back", "hidden", "x")]),
           'projection "back": target "x" is an input population',
           "target a pyramidal or interneuron population instead")


def test_unknown_activation():
    raises(lambda: H(activation="sigmod"), 'population "hidden": unknown activation "sigmod".',
           'Did you mean "sigmoid"?', "Valid activations: clip, clip[lo,hi], relu")
    raises(lambda: H(activation="clip[1,0]"), 'activation "clip[1,0]": need lo < hi.')
    raises(lambda: toml_network(demo('activation = "relu"', 'activation = "rleu"')),
           '[[population]] #4 "inhibition"', 'unknown activation "rleu"', 'Did you mean "relu"?')


def test_bad_population_and_projection_values():
    raises(lambda: PyramidalPopulation("h", 0), 'population "h": size must be a positive integer')
    raises(lambda: PyramidalPopulation("2h", 3), "must be an identifier")
    raises(lambda: H(leak=-1.0), "need leak >= 0, rate > 0 and noise >= 0")
    raises(lambda: Projection("p", "x", "h", init="glorot"), 'unknown init "glorot"',
           "Valid initialisers:")
    raises(lambda: Network([X()]), "every population is an input")


# ---------------------------------------------------------------------------- TOML errors

@pytest.mark.parametrize("old, new, fragments", [
    ("leak = 0.2", "leek = 0.2",
     ['model.toml [[population]] #2 "lower": unknown key "leek".', 'Did you mean "leak"?',
      "Valid keys: activation, apical, basal,"]),
    ('init = "he_uniform"', 'inti = "he_uniform"',
     ['[[projection]] #1 "stimulus_lower": unknown key "inti".', 'Did you mean "init"?']),
    ('name = "three_compartment_demo"', 'nme = "three_compartment_demo"',
     ['model.toml [network]: unknown key "nme".', 'Did you mean "name"?']),
    ('type = "interneuron"\nsize = 1', 'type = "interneuron"\nsize = 1\napical = 0.5',
     ['"inhibition" (type interneuron): unknown key "apical".']),
    ('type = "interneuron"', 'type = "interneron"',
     ['unknown type "interneron".', 'Did you mean "interneuron"?',
      "Valid types: input, pyramidal, interneuron, infomorphic."]),
    ('name = "upper_lower"\n', '', ['[[projection]] #3: missing required key "name".']),
])
def test_unknown_toml_keys_and_types(old, new, fragments):
    raises(lambda: toml_network(demo(old, new)), *fragments)


def test_unknown_simulation_and_monitor_keys():
    raises(lambda: Simulation.from_model_text(demo('solver = "rk4"', 'solvr = "rk4"'),
                                              "model.toml"),
           'model.toml [simulation]: unknown key "solvr".', 'Did you mean "solver"?')
    text = demo('variable = "u"', 'varable = "u"')
    raises(lambda: monitors_from(parse_model_text(text), toml_network(DEMO_TEXT), "model.toml"),
           'model.toml [[monitor]] #1: unknown key "varable".', 'Did you mean "variable"?')


def test_invalid_toml(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[network\nname = 'x'\n")
    raises(lambda: load_model_file(path), f"{path}: not valid TOML:", "(at line 1, column 9)",
           "Check the line it names")
    raises(lambda: toml_network("[network]\nname = 'x'\n"), "no [[population]] tables",
           "(note the double brackets)")
    raises(lambda: toml_network("[population]\nname = 'x'\n"), "no [[population]] tables")


def test_missing_model_file(tmp_path):
    raises(lambda: load_model_file(tmp_path / "missing.toml"),
           f"model file {tmp_path / 'missing.toml'} does not exist.", "models/ directory")


# ---------------------------------------------------------------------------- solvers, schedules

def test_unknown_solver_name():
    raises(lambda: get_solver("rk5"), 'unknown solver "rk5".', 'Did you mean "rk45"?',
           "Valid solvers: euler, gs-euler, heun, rk4, dopri5")
    raises(lambda: get_solver("gs_euler"), 'Did you mean "gs-euler"?')
    raises(lambda: get_solver("torchdiffeq:dopri6"), 'unknown torchdiffeq method "dopri6".',
           "Did you mean")
    raises(lambda: get_solver("scipy:LSODE"), 'unknown scipy method "lsode".',
           'Did you mean "lsoda"?')
    raises(lambda: get_solver("rk4", rtol=1e-3), 'solver "rk4" takes no options')
    raises(lambda: Simulation.from_model_text(DEMO_TEXT, solver="eular"),
           'unknown solver "eular".', 'Did you mean "euler"?')


@pytest.mark.parametrize("spec, fragments", [
    ({"type": "inverse_tme", "dt": 0.1},
     ['unknown schedule "inverse_tme".', 'Did you mean "inverse_time"?',
      "Valid: constant, inverse_time, slow."]),
    ({"type": "slow", "dt": 0.1, "decy": 0.1},
     ['unknown key "decy" for schedule "slow".', 'Did you mean "decay"?']),
    ({"type": "constant"}, ['schedule "constant" needs dt.']),
    ({"type": "constant", "dt": -0.1}, ["dt must be a positive number, got -0.1."]),
    (-1.0, ["dt must be a positive number, got -1.0."]),
    ("fast", ["expected a step size or a table, got 'fast'."]),
])
def test_bad_schedule(spec, fragments):
    raises(lambda: make_schedule(spec, "[simulation] step"), "[simulation] step:", *fragments)


def test_bad_run_length_and_options():
    sim = Simulation.from_model_text(DEMO_TEXT, step={"type": "slow", "dt": 0.1})
    raises(lambda: sim.run(), "with a decaying step schedule give n_steps")
    raises(lambda: Simulation.from_model_text(DEMO_TEXT.replace("duration = 20.0", "")).run(),
           "give duration (or n_steps)")
    raises(lambda: Simulation.from_model_text(DEMO_TEXT, dtype="float16"),
           '[simulation] dtype (--dtype): must be "float32" or "float64", got \'float16\'.')
    raises(lambda: Simulation.from_model_text(DEMO_TEXT, batch=0),
           "[simulation] batch (--batch): must be a whole number >= 1, got 0.")
    raises(lambda: Simulation.from_model_text(demo("dt = 0.05", "dt = 0.05\nstep = 0.1")),
           "give dt or step, not both.")


def test_noise_needs_a_stochastic_solver():
    text = demo("leak = 0.2", "leak = 0.2\nnoise = 0.1")
    raises(lambda: Simulation.from_model_text(text, solver="rk4").run(n_steps=2),
           'solver "rk4" cannot integrate populations with noise',
           "use a fixed-step solver (euler, gs-euler)", error=SimulationError)


# ---------------------------------------------------------------------------- monitors

@pytest.fixture(scope="module")
def demo_net():
    return toml_network(DEMO_TEXT)


@pytest.mark.parametrize("spec, fragments", [
    (MonitorSpec("lower", "soma", "v"),
     ['monitor (lower/soma): unknown variable "v".', 'Valid variables: "u", "r".']),
    (MonitorSpec("lower", "basal", "u"),
     ['monitor (lower/basal): unknown variable "u".', 'Valid variables: "v".']),
    (MonitorSpec("stimulus", "soma", "u"),
     ['monitor (stimulus/soma): unknown variable "u".', 'Valid variables: "r".']),
    (MonitorSpec("lower", "soma", "u", indices=(0, 24, -1)),
     ['monitor: indices [24, -1] out of range for population "lower" of size 24 '
      "(valid 0..23)."]),
    (MonitorSpec("lowr", "soma", "u"),
     ['monitor: unknown population "lowr".', 'Did you mean "lower"?']),
    (MonitorSpec("lower", "apicl", "v"),
     ['monitor (population "lower"): unknown compartment "apicl".', 'Did you mean "apical"?']),
])
def test_monitor_with_bad_variable_index_or_name(demo_net, spec, fragments):
    raises(lambda: validate_monitor(spec, demo_net), *fragments)


def test_monitor_errors_from_toml_and_from_run(demo_net, tmp_path):
    text = demo('variable = "u"', 'variable = "w"')
    raises(lambda: monitors_from(parse_model_text(text), demo_net, "model.toml"),
           'model.toml [[monitor]] #1 (lower/soma): unknown variable "w".')
    text = demo("indices = [0, 1, 2, 3, 4]", "indices = [0, 99]")
    raises(lambda: monitors_from(parse_model_text(text), demo_net, "model.toml"),
           "model.toml [[monitor]] #1: indices [99] out of range")
    first = 'variable = "u"\nindices = [0, 1, 2, 3, 4]'
    text = demo(first, 'variable = "u"\nevery = 0')
    raises(lambda: monitors_from(parse_model_text(text), demo_net, "model.toml"),
           "model.toml [[monitor]] #1:", "every must be an int >= 1")
    # a bad monitor passed straight to Simulation.run
    from neurosim.io import Recorder
    sim = Simulation.from_model_text(DEMO_TEXT, n_steps=2)
    with Recorder(tmp_path / "r.h5") as rec:
        raises(lambda: sim.run(monitors=[MonitorSpec("upper", "soma", "x")], recorder=rec),
               'unknown variable "x"')
    raises(lambda: MonitorSpec("a/b", "soma", "u"), "MonitorSpec.population must be",
           error=RecordingError)


# ---------------------------------------------------------------------------- inputs, nudges

def test_nudge_on_unknown_or_input_population():
    raises(lambda: Simulation.from_model_text(DEMO_TEXT,
                                              nudge={"uper": {"target": [0.0] * 8, "beta": 1}}),
           '[simulation] nudge: unknown population "uper".', 'Did you mean "upper"?')
    raises(lambda: Simulation.from_model_text(DEMO_TEXT,
                                              nudge={"stimulus": {"target": [0.0] * 12,
                                                                  "beta": 1}}),
           '[simulation] nudge.stimulus: "stimulus" is an input population',
           "nudge one of: lower, upper, inhibition.")
    raises(lambda: Simulation.from_model_text(DEMO_TEXT, nudge={"upper": {"target": [0.0] * 8}}),
           '[simulation] nudge.upper: missing required key "beta".')
    raises(lambda: Simulation.from_model_text(
        DEMO_TEXT, nudge={"upper": {"target": [0.0] * 3, "beta": 0.5}}),
        "[simulation] nudge.upper: target has shape (3,), expected (8,) or (batch, 8)")
    # the engine-level check behind it, for nudges passed to CompiledNetwork.phase directly
    sim = Simulation.from_model_text(DEMO_TEXT)
    raises(lambda: sim.net.phase(sim.net.build_operators(), sim.inputs,
                                 nudges={"upper": (torch.zeros(3), 0.5)}),
           'nudge target for "upper" has 3 columns', "the population has 8 neurons")


def test_wrong_input_shape_or_name():
    raises(lambda: Simulation.from_model_text(DEMO_TEXT,
                                              inputs={"stimulus": {"values": [0.5] * 5}}),
           "[simulation] inputs.stimulus: values have shape (5,), expected (12,) or "
           "(batch=2, 12).")
    raises(lambda: Simulation.from_model_text(DEMO_TEXT,
                                              inputs={"stimulus": {"values": [[0.5] * 12] * 3}}),
           "values have shape (3, 12), expected (12,) or (batch=2, 12).")
    raises(lambda: Simulation.from_model_text(DEMO_TEXT, inputs={"stimulu": [0.5] * 12}),
           '[simulation] inputs: unknown input population "stimulu".', 'Did you mean "stimulus"?')
    raises(lambda: Simulation.from_model_text(DEMO_TEXT, inputs={"stimulus": {"type": "gauss"}}),
           '[simulation] inputs.stimulus: unknown type "gauss"')
    sim = Simulation.from_model_text(DEMO_TEXT)
    raises(lambda: sim.net.clamp_inputs(sim.state, {"stimulus": torch.zeros(2, 5)}),
           'input "stimulus": got shape (2, 5), expected (batch=2, 12).')
    raises(lambda: sim.net.clamp_inputs(sim.state, {"lower": torch.zeros(2, 24)}),
           'population "lower" is not an input population')
    raises(lambda: sim.net.phase(sim.net.build_operators(), {}),
           'input population "stimulus" feeds projection "stimulus_lower" but no input was given')
