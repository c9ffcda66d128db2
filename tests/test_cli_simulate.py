"""The ``neurosim`` command line: simulate with several solvers, inspect, plot, resume, and
user errors as one line on stderr with exit status 2.

Most runs call ``neurosim.cli.main`` in this process (the same code as the console script,
without paying a torch import per run); the console script itself runs in a subprocess for
the smoke run and for the missing-file error."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from neurosim.cli import main
from neurosim.io import load_checkpoint, open_recording
from neurosim.sizing import format_bytes

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "models" / "three_compartment.toml"
DEMO_KEYS = ["lower/soma/u", "lower/basal/v", "lower/apical/v", "upper/soma/r",
             "inhibition/soma/r"]
N_STEPS = 400  # duration 20 / dt 0.05 in the model file



def neurosim_command() -> list[str]:
    """The installed console script next to this interpreter, else ``python -m``."""
    script = Path(sys.executable).with_name("neurosim")
    if script.exists():
        return [str(script)]
    found = shutil.which("neurosim")
    return [found] if found else [sys.executable, "-m", "neurosim.cli"]


def run_cli(*args: str, cwd=REPO) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.run([*neurosim_command(), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def final_values(path) -> dict[str, np.ndarray]:
    with open_recording(path) as rec:
        assert rec.complete
        return {key: rec.read(key).values[-1] for key in rec.variables()}


# ---------------------------------------------------------------------------- smoke runs

def test_console_script_simulate_smoke(tmp_path):
    out = tmp_path / "demo.h5"
    proc = run_cli("simulate", "models/three_compartment.toml", "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # --quiet: no progress bar
    assert proc.stdout.strip() == (f"{N_STEPS} steps to t=20 with rk4 ({4 * N_STEPS} "
                                   f"right-hand-side evaluations); recording written to {out} "
                                   f"({format_bytes(out.stat().st_size)})")
    with open_recording(out) as rec:
        assert rec.complete and rec.variables() == DEMO_KEYS
        assert rec.attrs["solver"] == "rk4" and rec.attrs["model"] == "three_compartment_demo"
        assert rec.config_text == DEMO.read_text()
        u = rec.read("lower/soma/u")
        assert u.values.shape == (N_STEPS + 1, 2, 5) and u.time[-1] == pytest.approx(20.0)


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    """The demo model simulated once per solver through the CLI entry point."""
    root = tmp_path_factory.mktemp("cli")
    outputs = {}
    for solver in ("gs-euler", "rk4", "dopri5", "bdf"):
        out = root / f"{solver}.h5"
        assert main(["simulate", str(DEMO), "--out", str(out), "--quiet",
                     "--solver", solver]) == 0
        outputs[solver] = out
    return outputs


@pytest.mark.parametrize("solver, name", [("gs-euler", "gs-euler"), ("rk4", "rk4"),
                                          ("dopri5", "dopri5"), ("bdf", "scipy-bdf")])
def test_simulate_with_each_solver(recordings, solver, name):
    with open_recording(recordings[solver]) as rec:
        assert rec.complete and rec.attrs["solver"] == name
        assert rec.variables() == DEMO_KEYS
        for key in DEMO_KEYS:
            var = rec.read(key)
            assert var.values.shape[0] == N_STEPS + 1
            assert np.all(np.isfinite(var.values))
            np.testing.assert_allclose(var.time, 0.05 * np.arange(N_STEPS + 1), atol=1e-9)


def test_solvers_agree_through_the_cli(recordings):
    """rk4, dopri5 and BDF agree closely (float32); gs-euler is first order (dt = 0.05)."""
    ref = final_values(recordings["rk4"])
    for solver, tol in (("dopri5", 1e-4), ("bdf", 1e-4), ("gs-euler", 0.05)):
        other = final_values(recordings[solver])
        for key in DEMO_KEYS:
            np.testing.assert_allclose(other[key], ref[key], rtol=0, atol=tol,
                                       err_msg=f"{solver} {key}")
    # the dynamics went somewhere: not still at the initial state
    with open_recording(recordings["rk4"]) as rec:
        u = rec.read("lower/soma/u").values
        assert np.abs(u[-1] - u[0]).max() > 0.1


def test_simulate_prints_its_summary(tmp_path, capsys):
    out = tmp_path / "x.h5"
    assert main(["simulate", str(DEMO), "--out", str(out), "--quiet", "--solver", "euler",
                 "--steps", "7", "--dt", "0.1", "--batch", "3", "--dtype", "float64"]) == 0
    captured = capsys.readouterr()
    from neurosim.dynamics import fused
    how = "fused" if fused.library() is not None else f"eager: the fused loop could not be " \
        f"built ({fused.build_error()})"
    assert captured.out.strip() == (
        f"7 steps to t=0.7 with euler (7 right-hand-side evaluations; {how}); recording "
        f"written to {out} ({format_bytes(out.stat().st_size)})")
    with open_recording(out) as rec:
        var = rec.read("upper/soma/r")
        assert var.values.shape == (8, 3, 8) and var.values.dtype == np.float64
        assert rec.attrs["batch"] == 3 and rec.attrs["dt"] == 0.1


def test_simulate_steady_state_reports_convergence(tmp_path, capsys):
    out = tmp_path / "s.h5"
    assert main(["simulate", str(DEMO), "--out", str(out), "--quiet", "--steps", "100000",
                 "--steady-tol", "1e-5", "--dt", "0.1"]) == 0
    line = capsys.readouterr().out
    assert "steady state reached (max |du/dt| = " in line
    steps = int(line.split(" steps")[0])
    assert 10 < steps < 100_000
    with open_recording(out) as rec:
        assert rec.read("lower/soma/u").values.shape[0] == steps + 1


def test_inspect(recordings, capsys):
    assert main(["inspect", str(recordings["rk4"])]) == 0
    text = capsys.readouterr().out
    first = text.splitlines()[0]
    assert first.startswith(f"{recordings['rk4']}  @format='neurosim-recording'")
    assert "@complete=True" in first and "@solver='rk4'" in first
    assert f"u  float32 ({N_STEPS + 1}, 2, 5)" in text
    assert f"every_1  float64 ({N_STEPS + 1},)" in text
    assert "config_text  str" in text


def test_plot_writes_a_png(recordings, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "voltages.png"
    assert main(["plot", str(recordings["gs-euler"]), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}"
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    # default name: next to the recording
    assert main(["plot", str(recordings["rk4"])]) == 0
    assert recordings["rk4"].with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


def test_checkpoint_and_resume_through_the_cli(tmp_path):
    """simulate 10 steps with --checkpoint, --resume to step 25: the same final state and
    records as one 25-step run."""
    common = ["--quiet", "--solver", "gs-euler", "--dtype", "float64"]
    ck = tmp_path / "ck.h5"
    assert main(["simulate", str(DEMO), "--out", str(tmp_path / "a.h5"), "--steps", "10",
                 "--checkpoint", str(ck), "--checkpoint-every", "5", *common]) == 0
    assert load_checkpoint(ck, kind="simulation").payload["progress"]["step"] == 10
    assert main(["simulate", "--resume", str(ck), "--out", str(tmp_path / "b.h5"),
                 "--steps", "25", *common]) == 0
    assert main(["simulate", str(DEMO), "--out", str(tmp_path / "full.h5"), "--steps", "25",
                 *common]) == 0
    full, part_b = final_values(tmp_path / "full.h5"), final_values(tmp_path / "b.h5")
    for key in DEMO_KEYS:
        assert full[key].tobytes() == part_b[key].tobytes(), key
    with open_recording(tmp_path / "a.h5") as a, open_recording(tmp_path / "b.h5") as b, \
            open_recording(tmp_path / "full.h5") as f:
        joined = np.concatenate([a.read("lower/soma/u").values, b.read("lower/soma/u").values])
        assert joined.tobytes() == f.read("lower/soma/u").values.tobytes()


# ---------------------------------------------------------------------------- errors

def test_missing_model_file_is_one_line_and_exit_2(tmp_path):
    proc = run_cli("simulate", "missing.toml", "--out", "x.h5", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("neurosim: error: model file missing.toml does not exist.")
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "x.h5").exists()


@pytest.mark.parametrize("args, message", [
    (["--solver", "rk5"], 'unknown solver "rk5". Did you mean "rk45"?'),
    (["--dt", "-1"], "argument --dt: must be a finite number > 0, got '-1'"),
    (["--device", "cuda"], 'device "cuda" requested but CUDA is not available'),
])
def test_cli_user_errors_are_one_line(tmp_path, capsys, args, message):
    if args[0] == "--device" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert main(["simulate", str(DEMO), "--out", str(tmp_path / "x.h5"), "--quiet",
                 *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith("neurosim: error: ") and message in captured.err


def test_cli_refuses_to_overwrite_without_force(recordings, capsys):
    before = recordings["rk4"].read_bytes()
    assert main(["simulate", str(DEMO), "--out", str(recordings["rk4"]), "--quiet",
                 "--steps", "3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("neurosim: error: recording ") and "already exists" in err
    assert recordings["rk4"].read_bytes() == before


def test_diverging_simulation_is_a_one_line_error(tmp_path, capsys):
    assert main(["simulate", str(DEMO), "--out", str(tmp_path / "d.h5"), "--quiet",
                 "--solver", "euler", "--dt", "20", "--steps", "200"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith('neurosim: error: non-finite soma potential in population "lower", '
                          'compartment "soma", at step ')
    with open_recording(tmp_path / "d.h5") as rec:  # what was recorded is kept, marked cut off
        assert not rec.complete and rec.attrs["aborted"].startswith("SimulationError")
