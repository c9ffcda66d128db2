"""`neurosim plot` selections (neurons, samples, compartments, weights, time window) and their
errors, `neurosim inspect RUN_DIR`, progress bars in non-interactive logs, and the README's
main job leaving the committed reference runs alone.

Recordings are written with the Python API (Recorder + MonitorSpec, whose values encode
time, sample and neuron, so every drawn line can be checked; and one Simulation run). Plots
are checked on the matplotlib figure itself (Agg backend), captured when it is closed.
"""
from __future__ import annotations

import csv
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib")
import matplotlib.pyplot as plt  # noqa: E402

from neurosim.cli import main as cli  # noqa: E402
from neurosim.errors import ConfigError  # noqa: E402
from neurosim.io import MonitorSpec, Recorder  # noqa: E402
from neurosim.plotting import plot_path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "models" / "corinfomax_digits.toml"
TIMES = np.round(np.arange(10) * 0.1, 10)       # 0.0, 0.1, ..., 0.9
H1_IDS = (2, 5, 7)                              # h1/soma/u records only these neurons


def _neuron_value(t, sample, neuron):
    return 100.0 * t + 10.0 * sample + neuron


def _weight_value(t, post, pre):
    return t + 10.0 * post + pre


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> Path:
    """h1/soma/u (neurons 2, 5, 7 of 8), h1/apical/v (all 8), out/soma/r (2), and weights
    w12 (2 x 3) and big (5 x 4 = 20 synapses); batch 3, ten records at t = 0, 0.1, ..."""
    path = tmp_path_factory.mktemp("plot") / "rec.h5"
    specs = {
        "h1/soma/u": (MonitorSpec("h1", "soma", "u", indices=H1_IDS, units="mV"), list(H1_IDS)),
        "h1/apical/v": (MonitorSpec("h1", "apical", "v"), list(range(8))),
        "out/soma/r": (MonitorSpec("out", "soma", "r"), [0, 1]),
    }
    weights = {"w12": (2, 3), "big": (5, 4)}
    with Recorder(path, chunk_size=4, attrs={"model": "tiny", "solver": "euler"}) as rec:
        for key, (spec, _) in specs.items():
            rec.add(key, spec, (3, len(specs[key][1])))
        for name, shape in weights.items():
            rec.add(f"{name}/synapses/w", MonitorSpec(name, "synapses", "w"), shape,
                    axes=("post", "pre"))
        for t in TIMES:
            for key, (_, ids) in specs.items():
                values = [[_neuron_value(t, s, i) for i in ids] for s in range(3)]
                rec.append(key, torch.tensor(values), float(t))
            for name, (posts, pres) in weights.items():
                values = [[_weight_value(t, i, j) for j in range(pres)] for i in range(posts)]
                rec.append(f"{name}/synapses/w", torch.tensor(values), float(t))
    return path


@pytest.fixture
def drawn(monkeypatch):
    """Call plot_path; return {panel label: [(line label, x, y)]} and the figure's title."""
    figures, close = [], plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: figures.append(fig))

    def draw(path, out, **selection):
        notes = []
        plot_path(path, out, log=notes.append, **selection)
        fig = figures[-1]
        panels = {ax.get_ylabel().split("\n")[0]: [(line.get_label(), line.get_xdata(),
                                                    line.get_ydata()) for line in ax.get_lines()]
                  for ax in fig.axes}
        return panels, fig._suptitle.get_text(), notes
    yield draw
    for fig in figures:
        close(fig)


# ----------------------------------------------------------------------------- selections
def test_default_draws_sample_0_first_neurons_and_small_weight_matrices(recording, tmp_path,
                                                                         drawn):
    panels, title, notes = drawn(recording, tmp_path / "all.png")
    assert (tmp_path / "all.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(panels) == ["h1/soma/u", "h1/apical/v", "out/soma/r", "w12/synapses/w (post:pre)"]
    u = panels["h1/soma/u"]
    assert [label for label, _, _ in u] == ["neuron 2", "neuron 5", "neuron 7"]   # real ids
    for (_, x, y), neuron in zip(u, H1_IDS):
        np.testing.assert_allclose(x, TIMES)
        np.testing.assert_allclose(y, _neuron_value(TIMES, 0, neuron), rtol=1e-6)
    assert len(panels["h1/apical/v"]) == 8
    w = panels["w12/synapses/w (post:pre)"]
    assert [label for label, _, _ in w] == ["0:0", "0:1", "0:2", "1:0", "1:1", "1:2"]
    np.testing.assert_allclose(w[5][2], _weight_value(TIMES, 1, 2), rtol=1e-6)
    # the 20-synapse matrix is left out, with a note that says how to draw it
    assert len(notes) == 1 and "big/synapses/w: 5 x 4 = 20 synapses" in notes[0]
    assert "--synapses POST:PRE" in notes[0]
    assert "tiny - solver euler (sample 0, first 10 recorded neurons)" == title


def test_populations_compartments_variables_choose_neuron_panels_only(recording, tmp_path,
                                                                      drawn):
    panels, _, notes = drawn(recording, tmp_path / "a.png", populations=["h1"],
                             compartments=["apical"])
    assert list(panels) == ["h1/apical/v"] and notes == []        # no weights: not named
    panels, _, _ = drawn(recording, tmp_path / "b.png", variables=["u", "r"])
    assert list(panels) == ["h1/soma/u", "out/soma/r"]
    panels, _, _ = drawn(recording, tmp_path / "c.png", populations="out")   # one name: a str
    assert list(panels) == ["out/soma/r"]


def test_neurons_map_through_the_monitor_indices(recording, tmp_path, drawn):
    panels, title, _ = drawn(recording, tmp_path / "n.png", populations=["h1"],
                             compartments=["soma"], neurons=[7, 2])
    lines = panels["h1/soma/u"]
    assert [label for label, _, _ in lines] == ["neuron 7", "neuron 2"]
    np.testing.assert_allclose(lines[0][2], _neuron_value(TIMES, 0, 7), rtol=1e-6)
    np.testing.assert_allclose(lines[1][2], _neuron_value(TIMES, 0, 2), rtol=1e-6)
    assert "neurons 7, 2" in title
    # all neurons recorded: the id is the column
    panels, _, _ = drawn(recording, tmp_path / "m.png", compartments=["apical"], neurons=[6])
    np.testing.assert_allclose(panels["h1/apical/v"][0][2], _neuron_value(TIMES, 0, 6),
                               rtol=1e-6)


def test_samples_and_time_window(recording, tmp_path, drawn):
    panels, title, _ = drawn(recording, tmp_path / "s.png", populations=["out"],
                             samples=[2, 1], t_start=0.2, t_stop=0.5)
    lines = panels["out/soma/r"]
    assert [label for label, _, _ in lines] == ["neuron 0, sample 2", "neuron 1, sample 2",
                                                "neuron 0, sample 1", "neuron 1, sample 1"]
    window = TIMES[2:6]                                 # both ends included
    for (label, x, y) in lines:
        neuron, sample = (int(n) for n in re.findall(r"\d+", label))
        np.testing.assert_allclose(x, window)
        np.testing.assert_allclose(y, _neuron_value(window, sample, neuron), rtol=1e-6)
    assert "samples 2, 1" in title and "t in [0.2, 0.5]" in title
    panels, _, _ = drawn(recording, tmp_path / "t.png", populations=["out"], t_start=0.75)
    np.testing.assert_allclose(panels["out/soma/r"][0][1], TIMES[8:])


def test_weights_selected_by_projection_and_synapse(recording, tmp_path, drawn):
    panels, title, notes = drawn(recording, tmp_path / "w.png", projections=["big"],
                                 synapses=["4:3", (0, 1)])
    assert list(panels) == ["big/synapses/w (post:pre)"] and notes == []   # weights only
    lines = panels["big/synapses/w (post:pre)"]
    assert [label for label, _, _ in lines] == ["4:3", "0:1"]
    np.testing.assert_allclose(lines[0][2], _weight_value(TIMES, 4, 3), rtol=1e-6)
    assert "synapses 4:3, 0:1" in title and "sample" not in title
    # naming neuron and weight flags together draws both
    panels, _, _ = drawn(recording, tmp_path / "b.png", populations=["out"],
                         projections=["w12"])
    assert list(panels) == ["out/soma/r", "w12/synapses/w (post:pre)"]


def test_neurons_without_populations_draw_what_each_panel_recorded(recording, tmp_path,
                                                                   drawn):
    """--neurons 0 1 2 3 4 over panels that recorded different neurons: each draws those it
    has (h1/soma/u only neuron 2 of 2, 5, 7), a note names what it lacks."""
    panels, title, notes = drawn(recording, tmp_path / "n.png", neurons=[0, 1, 2, 3, 4])
    assert list(panels) == ["h1/soma/u", "h1/apical/v", "out/soma/r"]
    assert [label for label, _, _ in panels["h1/soma/u"]] == ["neuron 2"]
    np.testing.assert_allclose(panels["h1/soma/u"][0][2], _neuron_value(TIMES, 0, 2), rtol=1e-6)
    assert [label for label, _, _ in panels["h1/apical/v"]] == [f"neuron {i}" for i in range(5)]
    assert [label for label, _, _ in panels["out/soma/r"]] == ["neuron 0", "neuron 1"]
    assert notes == ["note: h1/soma/u: --neurons 0, 1, 3, 4 not recorded (its monitor "
                     "recorded only neurons 2, 5, 7); drawn: 2.",
                     'note: out/soma/r: --neurons 2..4 not recorded (population "out" has 2 '
                     "neurons (valid: 0, 1)); drawn: 0, 1."]
    assert "neurons 0, 1, 2, 3, 4" in title
    # a panel with none of them is left out (noted); only none anywhere is an error
    panels, _, notes = drawn(recording, tmp_path / "m.png", neurons=[6, 7])
    assert list(panels) == ["h1/soma/u", "h1/apical/v"]
    assert notes == ["note: h1/soma/u: --neurons 6 not recorded (its monitor recorded only "
                     "neurons 2, 5, 7); drawn: 7.",
                     'note: out/soma/r: none of --neurons 6, 7 recorded (population "out" has 2 '
                     "neurons (valid: 0, 1)); not plotted."]


def test_stimulus_recorded_for_some_neurons(tmp_path, capsys):
    """A stimulus on neurons 0 and 2 of "y" is recorded for those two only: --neurons 0..4
    draws them beside y's own recording; naming the population keeps the strict check."""
    import neurosim.graph as g
    from neurosim.simulation import Simulation, SimulationOptions
    from neurosim.stimuli import Step, Stimulus
    net = g.Network([g.InputPopulation("x", 2),
                     g.InterneuronPopulation("y", 5, leak=1.0, activation="linear")],
                    [g.Projection("w", "x", "y", init="ones")], name="stim")
    sim = Simulation(net, SimulationOptions(solver="rk4", step=0.1, n_steps=5),
                     stimuli=[Stimulus("y", Step(1.0), indices=[0, 2], name="s")])
    path = tmp_path / "stim.h5"
    with Recorder(path, attrs={"model": "stim", "solver": "rk4"}) as rec:
        sim.run(monitors=[MonitorSpec("y", "soma", "u")], recorder=rec)
    out = tmp_path / "stim.png"
    assert cli(["plot", str(path), "--neurons", "0", "1", "2", "3", "4", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert out.exists() and "note: y/soma/stimulus_s: --neurons 1, 3, 4 not recorded" in \
        captured.out
    assert cli(["plot", str(path), "--populations", "y", "--neurons", "1", "--out",
                str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "neuron 1 of population \"y\" is not recorded in " \
        "y/soma/stimulus_s: its monitor recorded only neurons 0, 2" in err


def test_a_named_projection_is_drawn_in_full_up_to_100_synapses(recording, tmp_path, drawn,
                                                               capsys):
    panels, _, notes = drawn(recording, tmp_path / "big.png", projections=["big"])
    lines = panels["big/synapses/w (post:pre)"]
    assert len(lines) == 20 and notes == []                 # 5 x 4 > 16, named: all drawn
    assert lines[-1][0] == "4:3"
    np.testing.assert_allclose(lines[-1][2], _weight_value(TIMES, 4, 3), rtol=1e-6)
    # unnamed, it is still left out with a note
    _, _, notes = drawn(recording, tmp_path / "all.png")
    assert len(notes) == 1 and "big/synapses/w" in notes[0]
    huge = tmp_path / "huge.h5"
    with Recorder(huge) as rec:
        rec.add("h/synapses/w", MonitorSpec("h", "synapses", "w"), (11, 10), axes=("post", "pre"))
        rec.append("h/synapses/w", torch.zeros(11, 10), 0.0)
    assert cli(["plot", str(huge), "--projections", "h", "--out", str(tmp_path / "h.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--projections h: h/synapses/w has 11 x 10 = 110 " \
        "synapses, more than the 100 drawn at once; choose some with --synapses POST:PRE" in err


def test_plot_format_follows_the_extension(recording, tmp_path, capsys):
    for suffix, magic in ((".svg", b"<?xml"), (".pdf", b"%PDF")):
        out = tmp_path / f"p{suffix}"
        assert cli(["plot", str(recording), "--out", str(out)]) == 0
        assert out.read_bytes().startswith(magic)
    capsys.readouterr()
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(ROOT / "runs" / "digits" / "metrics.csv", run / "metrics.csv")
    assert cli(["plot", str(run), "--out", str(tmp_path / "curves")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--out " in err and "has no file extension" in err
    assert "Traceback" not in err and not (tmp_path / "curves").exists()


def test_weight_monitor_of_a_simulation(tmp_path, drawn):
    from neurosim.graph import load_model_file
    from neurosim.simulation import SYNAPSES, Simulation, weight_monitor
    from neurosim import plotting
    assert plotting._SYNAPSES == SYNAPSES
    model = load_model_file(ROOT / "models" / "three_compartment.toml")
    sim = Simulation.from_model_text(model.text, where=str(model.path), n_steps=6)
    monitors = [MonitorSpec("upper", "soma", "r"), weight_monitor("lower_upper", every=2),
                weight_monitor("upper_lower", every=3)]
    path = tmp_path / "sim.h5"
    with Recorder(path, attrs={"model": "demo", "solver": sim.solver.name}) as rec:
        sim.run(monitors=monitors, recorder=rec)
    panels, _, notes = drawn(path, tmp_path / "sim.png")
    assert list(panels) == ["upper/soma/r"]                # 8 x 24 and 24 x 8 weights: too many
    assert len(notes) == 2 and "8 x 24 = 192 synapses" in notes[0]
    panels, _, _ = drawn(path, tmp_path / "w.png", projections=["upper_lower"],
                         synapses=["23:7"])
    (label, x, y), = panels["upper_lower/synapses/w (post:pre)"]
    np.testing.assert_allclose(x, [0.0, 0.15, 0.3], atol=1e-9)     # steps 0, 3, 6 of 0.05
    assert y[0] == pytest.approx(float(sim.net.weights["upper_lower"][23, 7]))


def test_read_loads_only_the_part_asked_for(recording):
    from neurosim.io import RecordingError, open_recording
    with open_recording(recording) as rec:
        empty = rec.read("h1/apical/v", rows=slice(0, 0))
        assert empty.values.shape == (0, 3, 8) and empty.time.shape == (0,)
        part = rec.read("h1/apical/v", rows=slice(2, 5), index=(1, [3, 6]))
        np.testing.assert_allclose(part.time, TIMES[2:5])
        expected = [[_neuron_value(t, 1, i) for i in (3, 6)] for t in TIMES[2:5]]
        np.testing.assert_allclose(part.values, expected, rtol=1e-6)
        assert rec.read("w12/synapses/w", index=(1,)).values.shape == (10, 3)
        with pytest.raises(RecordingError, match=r"cannot select .* records of shape \(3, 8\)"):
            rec.read("h1/apical/v", index=(3,))


# ----------------------------------------------------------------------------- bad selections
BAD = [
    (["--populations", "h11"], ['--populations: unknown population "h11"', 'Did you mean "h1"?',
                               'Valid populations: "h1", "out"']),
    (["--compartments", "apicl"], ["--compartments", 'Did you mean "apical"?',
                                   'Valid compartments: "soma", "apical"']),
    (["--variables", "uu"], ["--variables", 'Did you mean "u"?', 'Valid variables: "u", "v", "r"']),
    (["--populations", "out", "--compartments", "apical"],
     ["no recording matches --populations out --compartments apical", "recorded: h1/soma/u"]),
    (["--populations", "h1", "--neurons", "3"],
     ['--neurons: neuron 3 of population "h1" is not recorded in h1/soma/u',
      "recorded only neurons 2, 5, 7"]),
    (["--neurons", "9"], ["--neurons: none of neurons 9 is recorded in any chosen recording",
                          "h1/soma/u: 2, 5, 7; h1/apical/v: 0..7; out/soma/r: 0, 1",
                          "--populations"]),
    (["--compartments", "apical", "--neurons", "8"],
     ['population "h1" has 8 neurons (valid: 0..7)']),
    (["--samples", "3"], ["--samples: sample 3 is not recorded", "3 samples (valid: 0..2)"]),
    (["--populations", "big"], ['--populations: "big" is a projection (recorded weights); '
                                'choose it with --projections.']),
    (["--projections", "out"], ['--projections: "out" is a population; choose it with '
                                "--populations."]),
    (["--projections", "w21"], ['--projections: unknown projection "w21"',
                                'Did you mean "w12"?', 'Valid projections: "w12", "big"']),
    (["--projections", "w12", "--synapses", "2:0"],
     ["--synapses: synapse 2:0 is not in w12/synapses/w, a 2 x 3 matrix (post 0..1, pre 0..2)"]),
    (["--synapses", "4:0"], ["--synapses", "choose the projection with --projections"]),
    (["--synapses", "1-2"], ["--synapses takes POST:PRE pairs", "'1-2'"]),
    (["--out", "x.txt"], ['--out x.txt: ".txt" is not an image format; end the file name with '
                          ".png", "supported: ", "pdf", "svg"]),
    (["--t-start", "5"], ["--t-start 5: h1/soma/u has no records in that window",
                          "t = 0 .. 0.9"]),
    (["--t-start", "0.5", "--t-stop", "0.1"], ["--t-start (0.5) must not be after --t-stop (0.1)"]),
]


@pytest.mark.parametrize("args, fragments", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_selection_is_one_error_line_with_status_2(recording, tmp_path, capsys, args,
                                                       fragments):
    out = tmp_path / "bad.png"
    assert cli(["plot", str(recording), "--out", str(out), *args]) == 2
    captured = capsys.readouterr()
    err = captured.err
    assert err.startswith("neurosim: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and not out.exists()
    for fragment in fragments:
        assert fragment in err, (fragment, err)


def test_bad_selection_from_python_raises_config_error(recording, tmp_path):
    with pytest.raises(ConfigError, match=r'unknown plot selection "neuron"\. Did you mean '
                                          r'"neurons"\?'):
        plot_path(recording, tmp_path / "x.png", neuron=[1])
    with pytest.raises(ConfigError, match="--neurons takes one or more integer indices"):
        plot_path(recording, tmp_path / "x.png", neurons=["1"])
    with pytest.raises(ConfigError, match="--t-stop takes a finite time"):
        plot_path(recording, tmp_path / "x.png", t_stop=float("nan"))


def test_weight_or_neuron_flags_on_recordings_without_them(tmp_path, capsys):
    only_weights = tmp_path / "w.h5"
    with Recorder(only_weights) as rec:
        rec.add("w/synapses/w", MonitorSpec("w", "synapses", "w"), (1, 2), axes=("post", "pre"))
        rec.append("w/synapses/w", torch.zeros(1, 2), 0.0)
    assert cli(["plot", str(only_weights), "--neurons", "0"]) == 2
    err = capsys.readouterr().err
    assert "--neurons: the recording holds no neuron variables, only weights (w/synapses/w)" \
        in err and "--projections" in err
    assert cli(["plot", str(only_weights), "--synapses", "0:1"]) == 0
    assert "wrote" in capsys.readouterr().out


def test_selection_flags_on_a_run_directory_are_an_error(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(ROOT / "runs" / "digits" / "metrics.csv", run / "metrics.csv")
    assert cli(["plot", str(run), "--neurons", "1", "--t-stop", "3"]) == 2
    err = capsys.readouterr().err
    assert "is a training run directory" in err and "--neurons, --t-stop" in err
    assert cli(["plot", str(run)]) == 0 and (run / "training.png").exists()
    capsys.readouterr()
    assert cli(["plot", str(run), "--out", str(tmp_path / "missing" / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "cannot write the plot" in err and "Traceback" not in err


# ----------------------------------------------------------------------------- inspect RUN_DIR
def _fast_digits(tmp_path: Path, epochs: int = 3) -> Path:
    text = DIGITS.read_text(encoding="utf-8")
    for old, new in (("T_free = 30", "T_free = 12"), ("T_nudged = 10", "T_nudged = 4"),
                     ("epochs = 40", f"epochs = {epochs}")):
        assert text.count(old) == 1
        text = text.replace(old, new)
    model = tmp_path / "digits_fast.toml"
    model.write_text(text, encoding="utf-8")
    return model


def _summary(output: str) -> dict[str, str]:
    """{label: value} of `neurosim inspect RUN_DIR` (label, two or more spaces, value)."""
    return dict(re.split(r"\s{2,}", line, maxsplit=1) for line in output.splitlines())


def test_inspect_run_directory(tmp_path, capsys):
    from neurosim.training import Trainer
    model = _fast_digits(tmp_path)
    run = tmp_path / "run"
    Trainer.from_model_file(model, progress=False, seed=3).fit(run, epochs=2, log=None)
    with open(run / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    test = [float(r["test_accuracy"]) for r in rows]
    best = max(range(len(test)), key=lambda i: (test[i], -i))

    assert cli(["inspect", str(run)]) == 0
    out = capsys.readouterr().out
    info = _summary(out)
    assert info["run"] == str(run)
    assert info["model"] == 'corinfomax_A-inf_64-300-10 (template "corinfomax")'
    assert info["model file"].startswith(str(run / "model.toml"))
    assert str(tmp_path) in info["model file"]                      # where the model came from
    assert info["protocol"].startswith("ep (T_free=12, T_nudged=4, beta=1.0")
    assert info["dataset"] == "digits"
    assert info["epochs"].startswith("2 done of 3 planned")
    assert f"neurosim resume {run}" in info["epochs"]
    assert info["seed"] == "3" and info["overrides"].startswith("seed=3")
    assert info["test accuracy"] == (f"best {100 * test[best]:.2f} % (epoch {best + 1}), "
                                     f"last {100 * test[-1]:.2f} % (epoch 2)")
    assert info["train accuracy"].startswith("best ") and "running" in info["train accuracy"]
    assert "validation accuracy" not in info
    assert info["metrics"].startswith("at epoch 2: ") and "angle_ff2_fb1=" in info["metrics"]
    seconds = sum(float(r["seconds"]) for r in rows)
    assert info["training time"].startswith(f"{seconds:.1f} s over 2 epochs")
    assert info["checkpoint"].startswith(f"{run / 'run.h5'} (after epoch 2, written ")
    assert info["per epoch"].startswith(str(run / "metrics.csv"))

    # a summary kept without its checkpoint (like the committed reference runs)
    summary = tmp_path / "summary"
    summary.mkdir()
    for name in ("metrics.csv", "model.toml"):
        shutil.copy(run / name, summary / name)
    assert cli(["inspect", str(summary)]) == 0
    kept = _summary(capsys.readouterr().out)
    assert kept["test accuracy"] == info["test accuracy"]
    assert kept["epochs"].startswith("2 done of 3 planned")          # seed 3 was not recorded
    assert kept["checkpoint"].startswith("none (run.h5 is absent")

    # FILE.h5 still lists the file
    assert cli(["inspect", str(run / "run.h5")]) == 0
    listing = capsys.readouterr().out
    assert "network/" in listing and "ff1  tensor float32 (300, 64)" in listing

    assert cli(["inspect", str(tmp_path)]) == 2                      # not a run directory
    err = capsys.readouterr().err
    assert "is not a training run directory: it holds neither run.h5 nor metrics.csv" in err


def test_inspect_run_directory_with_a_damaged_checkpoint(tmp_path, capsys):
    """A damaged run.h5: the summary comes from metrics.csv, model.toml and the newest intact
    kept checkpoint, naming the damaged file and the checkpoint resume falls back to."""
    from neurosim.io import load_newest
    from neurosim.training import Trainer
    model = _fast_digits(tmp_path)
    run = tmp_path / "run"
    Trainer.from_model_file(model, progress=False, seed=3).fit(run, epochs=2, log=None)
    kept = run / "checkpoints" / "epoch_0001.h5"
    assert kept.is_file()
    assert cli(["inspect", str(run)]) == 0
    intact = _summary(capsys.readouterr().out)
    data = (run / "run.h5").read_bytes()
    (run / "run.h5").write_bytes(data[:len(data) // 2])            # truncated

    assert cli(["inspect", str(run)]) == 0
    captured = capsys.readouterr()
    info = _summary(captured.out)
    assert captured.err == ""
    assert load_newest(run, kind="training")[0].path == kept        # where resume goes
    assert info["checkpoint"].startswith(
        f"{run / 'run.h5'} is damaged (truncated or not an HDF5 file); `neurosim resume {run}` "
        f"falls back to {kept} (after epoch 1, written ")
    assert info["epochs"].startswith(f"2 done of 3 planned (run.h5 is damaged: `neurosim resume "
                                     f"{run}` continues from epoch 1; epoch 2 is trained again)")
    for label in ("model", "protocol", "dataset", "seed", "overrides", "test accuracy",
                  "train accuracy", "metrics", "training time"):
        assert info[label] == intact[label], label           # metrics.csv: both epochs

    kept.write_bytes(b"not a checkpoint")
    assert cli(["inspect", str(run)]) == 0
    info = _summary(capsys.readouterr().out)
    assert info["checkpoint"] == (
        f"{run / 'run.h5'} is damaged (truncated or not an HDF5 file); {kept} is damaged "
        "(truncated or not an HDF5 file); no intact checkpoint is left, so the run cannot be "
        f"resumed (start it again with `neurosim train {run / 'model.toml'} --out {run} "
        "--force`)")
    assert info["test accuracy"] == intact["test accuracy"]
    assert info["epochs"].startswith("2 done of 3 planned")


OJA_MODEL = """
[network]
name = "oja_pca"

[[population]]
name = "x"
type = "input"
size = 4

[[population]]
name = "y"
type = "interneuron"
size = 1
leak = 1.0
activation = "linear"

[[projection]]
name = "w"
source = "x"
target = "y"
init = "normal"
scale = 0.3
rules = [{ type = "oja:Oja", lr = 0.01 }]

[data]
path = "gauss.npz"

[protocol]
type = "relax"
T = 3
step = 1.0

[training]
epochs = 2
batch_size = 50
seed = 0
output = "y"
threads = 1
metrics = [{ type = "principal_alignment", projection = "w" }]
"""


def test_inspect_unsupervised_run_shows_metrics_and_no_accuracy(tmp_path, capsys):
    shutil.copy(ROOT / "examples" / "oja.py", tmp_path / "oja.py")
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((400, 4)) * [2.0, 1.0, 0.5, 0.2]).astype(np.float32)
    np.savez(tmp_path / "gauss.npz", train_x=x[:300], test_x=x[300:])
    (tmp_path / "oja.toml").write_text(OJA_MODEL)
    run = tmp_path / "run"
    assert cli(["train", str(tmp_path / "oja.toml"), "--out", str(run), "--quiet"]) == 0
    capsys.readouterr()
    assert cli(["inspect", str(run)]) == 0
    out = capsys.readouterr().out
    info = _summary(out)
    assert "accuracy" not in out.replace("no accuracy measured", "") and "%" not in out
    assert info["model"] == "oja_pca" and info["protocol"].startswith("relax (")
    assert info["dataset"].startswith("gauss.npz")
    assert info["epochs"].startswith("2 done of 2 planned")
    metrics = info["metrics"]
    assert metrics.startswith("no accuracy measured; at epoch 2: ")
    assert "pc_alignment_w=" in metrics
    assert "train_rate_y=" in metrics


# ----------------------------------------------------------------------------- progress bars
def _console() -> list[str]:
    script = Path(sys.executable).with_name("neurosim")
    return [str(script)] if script.exists() else [sys.executable, "-m", "neurosim.cli"]


def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def test_no_bar_redraws_when_stderr_is_a_file(tmp_path):
    """`neurosim train ... > log 2>&1` without --quiet: the epoch lines, no tqdm redraws."""
    model = _fast_digits(tmp_path, epochs=2)
    log = tmp_path / "train.log"
    with open(log, "wb") as fh:
        done = subprocess.run([*_console(), "train", str(model), "--out", str(tmp_path / "run")],
                              stdout=fh, stderr=subprocess.STDOUT, env=_env(), timeout=300)
    text = log.read_bytes()
    assert done.returncode == 0, text
    assert b"\r" not in text and b"batch/s" not in text
    lines = text.decode().splitlines()
    assert [line.split(":")[0] for line in lines if line.startswith("epoch ")] == \
        ["epoch 1", "epoch 2"]

    done = subprocess.run([*_console(), "simulate", str(ROOT / "models" / "three_compartment.toml"),
                           "--steps", "40", "--out", str(tmp_path / "sim.h5")],
                          capture_output=True, env=_env(), timeout=300)     # pipes
    assert done.returncode == 0, done.stderr
    assert b"\r" not in done.stderr + done.stdout and b"step/s" not in done.stderr
    assert done.stdout.startswith(b"40 steps to t=2")


def test_bar_is_drawn_on_a_terminal(tmp_path):
    pty = pytest.importorskip("pty")                 # POSIX pseudo-terminals
    fcntl, termios = pytest.importorskip("fcntl"), pytest.importorskip("termios")
    master, slave = pty.openpty()
    # an 80-column terminal (a fresh pseudo-terminal has 0 columns: tqdm would draw nothing)
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    try:
        proc = subprocess.Popen([*_console(), "simulate",
                                 str(ROOT / "models" / "three_compartment.toml"),
                                 "--steps", "40", "--out", str(tmp_path / "sim.h5")],
                                stdout=subprocess.PIPE, stderr=slave, env=_env())
        os.close(slave)
        slave = None
        chunks = []
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:              # EIO: the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        stdout, _ = proc.communicate(timeout=300)
    finally:
        os.close(master)
        if slave is not None:
            os.close(slave)
    assert proc.returncode == 0
    assert b"\r" in b"".join(chunks) and b"simulate" in b"".join(chunks)
    assert stdout.startswith(b"40 steps to t=2")


# ----------------------------------------------------------------------------- README main job
def test_readme_main_job_writes_only_ignored_paths():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    job = next(line for line in readme.splitlines()
               if "neurosim train models/corinfomax_digits.toml" in line and "pip install" in line)
    outputs = re.findall(r"--out (\S+)", job) + re.findall(r"neurosim plot (\S+)", job)
    assert outputs and all(out.startswith("runs/local/") for out in outputs), outputs
    ignore = (ROOT / ".gitignore").read_text(encoding="utf-8").splitlines()
    assert "runs/local/" in ignore
    # after every rule that re-includes files below runs/ (a later "!" rule would win)
    assert all(not line.startswith("!") for line in ignore[ignore.index("runs/local/"):])
    # the committed reference the main job used to overwrite is still there
    assert (ROOT / "runs" / "digits" / "metrics.csv").exists()
