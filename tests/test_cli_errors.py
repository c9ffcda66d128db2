"""Every bad input to ``neurosim simulate`` / ``train`` / ``resume`` is one line on stderr
(what is wrong, the flag or model-file key, how to fix it), exit status 2, no traceback, and
nothing lost: an earlier recording or run directory keeps its bytes and modification time.

Most commands run in this process (``neurosim.cli.main``); two go through the console
script. Every command here is refused before any simulation or training starts, so the file
runs in seconds."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from neurosim import sizing
from neurosim.cli import main
from neurosim.errors import ConfigError
from neurosim.graph import (InputPopulation, InterneuronPopulation, Network, Projection,
                            PyramidalPopulation)
from neurosim.simulation import Simulation, simulation_options

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "models" / "three_compartment.toml"
DEMO_TEXT = DEMO.read_text()
DIGITS = REPO / "models" / "corinfomax_digits.toml"
DIGITS_TEXT = DIGITS.read_text()
NAN, INF = float("nan"), float("inf")


# ---------------------------------------------------------------------------- helpers
def snapshot(*paths) -> dict:
    """Bytes and modification time of every file at or below ``paths``."""
    state = {}
    for path in map(Path, paths):
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for f in files:
            state[str(f)] = (f.read_bytes(), f.stat().st_mtime_ns)
    assert state, paths
    return state


def refused(capsys, argv, *fragments) -> str:
    """Run the CLI; it must exit 2 with one line on stderr holding every fragment."""
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    err = captured.err
    assert code == 2, err
    assert captured.out == ""
    assert err.startswith("neurosim: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    return err


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> Path:
    """An earlier recording that no refused command may touch (the commands below pass
    --force, so a command that went ahead would replace it)."""
    out = tmp_path_factory.mktemp("earlier") / "earlier.h5"
    assert main(["simulate", str(DEMO), "--out", str(out), "--steps", "2", "--quiet"]) == 0
    return out


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """An earlier training run directory (its files are stand-ins: refused commands never
    read them)."""
    run = tmp_path / "earlier_run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "run.h5").write_bytes(b"earlier checkpoint")
    (run / "metrics.csv").write_text("epoch,test_accuracy\n1,0.5\n")
    (run / "model.toml").write_text(DIGITS_TEXT)
    return run


def simulate_refused(capsys, recording, args, *fragments, model=DEMO) -> str:
    before = snapshot(recording)
    err = refused(capsys, ["simulate", model, "--out", recording, "--force", "--quiet", *args],
                  *fragments)
    assert snapshot(recording) == before
    return err


# ---------------------------------------------------------------------------- simulate flags
@pytest.mark.parametrize("args, fragments", [
    (["--duration", "-1"], ["argument --duration: must be a finite number > 0, got '-1'"]),
    (["--duration", "0"], ["argument --duration: must be a finite number > 0, got '0'"]),
    (["--duration", "nan"], ["argument --duration: must be a finite number > 0, got 'nan'"]),
    (["--duration", "inf"], ["argument --duration:"]),
    (["--steps", "-5"], ["argument --steps: must be a whole number >= 1, got '-5'"]),
    (["--steps", "0"], ["argument --steps: must be a whole number >= 1, got '0'"]),
    (["--steps", "abc"], ["argument --steps:", "'abc'"]),
    (["--steps", "5", "--duration", "3"], ["argument --duration: not allowed with argument "
                                           "--steps"]),
    (["--duration", "3", "--steps", "5"], ["argument --steps: not allowed with argument "
                                           "--duration"]),
    (["--rtol=-1e-6"], ["argument --rtol: must be a finite number > 0, got '-1e-6'"]),
    (["--rtol", "-1e-6"], ["argument --rtol: expected one argument"]),     # read as a flag
    (["--atol", "-1"], ["argument --atol: must be a finite number > 0"]),
    (["--steady-tol", "-1"], ["argument --steady-tol: must be a finite number > 0"]),
    (["--dt", "0"], ["argument --dt: must be a finite number > 0, got '0'"]),
    (["--dt", "-0.1"], ["argument --dt: must be a finite number > 0, got '-0.1'"]),
    (["--dt", "nan"], ["argument --dt: must be a finite number > 0, got 'nan'"]),
    (["--batch", "0"], ["argument --batch: must be a whole number >= 1, got '0'"]),
    (["--batch", "2.5"], ["argument --batch:"]),
    (["--device", "tpu"], ['argument --device: "tpu" is not a device; use cpu, cuda or cuda:N']),
    (["--seed", "-1"], ["argument --seed: must be a whole number >= 0"]),
    (["--chunk-size", "0"], ["argument --chunk-size: must be a whole number >= 1"]),
    (["--checkpoint-every", "0"], ["argument --checkpoint-every: must be a whole number >= 1"]),
    (["--plasticity", "sometimes"], ["argument --plasticity:"]),
    (["--dtype", "float16"], ["argument --dtype: invalid choice: 'float16'"]),
    (["--durations", "3"], ["unrecognized arguments: --durations 3 (see `neurosim --help`)"]),
], ids=lambda v: " ".join(v) if isinstance(v, list) and v[0].startswith("-") else "")
def test_simulate_bad_flag(recording, capsys, args, fragments):
    err = simulate_refused(capsys, recording, args, *fragments)
    assert err.rstrip().endswith("--help`).")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_requested_without_cuda(recording, run_dir, capsys):
    simulate_refused(capsys, recording, ["--device", "cuda"],
                     'device "cuda" requested but CUDA is not available', "--device cpu")
    before = snapshot(run_dir)
    refused(capsys, ["train", DIGITS, "--out", run_dir, "--force", "--quiet", "--device",
                     "cuda"], '[training] device (--device): "cuda" requested but CUDA is not',
            "--device cpu")
    assert snapshot(run_dir) == before


def test_simulate_needs_exactly_one_model_source(recording, capsys):
    refused(capsys, ["simulate", "--out", recording, "--quiet"], "needs a MODEL.toml")
    simulate_refused(capsys, recording, ["--resume", recording], "MODEL.toml or --resume",
                     "not both")


# ---------------------------------------------------------------------------- model files
@pytest.mark.parametrize("command", ["simulate", "train"])
@pytest.mark.parametrize("kind, fragment", [
    ("binary", "is not a text (TOML) file: byte 128 is not UTF-8"),
    ("nul", "is a binary file, not TOML text"),
    ("directory", "is a directory; give the path of a model file (TOML)"),
])
def test_model_file_that_is_not_toml(tmp_path, capsys, command, kind, fragment):
    model = tmp_path / "model.toml"
    if kind == "binary":
        model.write_bytes(bytes(range(256)) * 4)
    elif kind == "nul":
        model.write_bytes(b"\x00\x01\x02 [network]\n")
    else:
        model.mkdir()
    out = tmp_path / ("x.h5" if command == "simulate" else "run")
    refused(capsys, [command, model, "--out", out, "--quiet"], f"model file {model} {fragment}")
    assert not out.exists()


# ---------------------------------------------------------------------------- outputs
def test_out_in_a_missing_directory(tmp_path, capsys):
    out = tmp_path / "missing" / "x.h5"
    refused(capsys, ["simulate", DEMO, "--out", out, "--quiet"],
            f"--out {out}: directory {out.parent} does not exist; create it first")
    assert not out.parent.exists()


def test_out_below_a_file(tmp_path, recording, capsys):
    out = recording / "x.h5"
    before = snapshot(recording)
    refused(capsys, ["simulate", DEMO, "--out", out, "--quiet"],
            f"--out {out}: {recording} is a file, not a directory")
    assert snapshot(recording) == before


def test_out_is_an_existing_directory(tmp_path, capsys):
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "keep.txt").write_text("keep")
    before = snapshot(folder)
    refused(capsys, ["simulate", DEMO, "--out", folder, "--force", "--quiet"],
            f"--out {folder} is a directory; give a file path, e.g. --out {folder / 'run.h5'}")
    assert snapshot(folder) == before


def _unwritable_directory(tmp_path) -> Path:
    """A directory this process cannot write to (root ignores permission bits: /proc/1)."""
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        return locked
    if Path("/proc/1").is_dir() and not os.access("/proc/1", os.W_OK):
        return Path("/proc/1")
    pytest.skip("no unwritable directory for root here")


def test_out_in_an_unwritable_directory(tmp_path, capsys):
    locked = _unwritable_directory(tmp_path)
    out = locked / "x.h5"
    refused(capsys, ["simulate", DEMO, "--out", out, "--quiet"],
            f"--out {out}: directory {locked} is not writable")
    assert not out.exists()
    run = locked / "run"
    refused(capsys, ["train", DIGITS, "--out", run, "--quiet"],
            f"--out {run}: directory {locked} is not writable")
    assert not run.exists()


def test_existing_recording_needs_force_and_the_message_names_it(recording, capsys):
    before = snapshot(recording)
    err = refused(capsys, ["simulate", DEMO, "--out", recording, "--quiet", "--steps", "2"],
                  f"recording {recording} already exists; choose another --out or pass --force "
                  "to replace it.")
    assert "overwrite=" not in err
    assert snapshot(recording) == before


@pytest.mark.parametrize("case", ["missing directory", "directory", "existing", "same as out"])
def test_checkpoint_checked_before_anything_is_written(tmp_path, recording, capsys, case):
    out = tmp_path / "new.h5"
    checkpoint, fragment = {
        "missing directory": (tmp_path / "none" / "c.h5", "directory"),
        "directory": (tmp_path, "is a directory; give a file path, e.g. --checkpoint "),
        "existing": (recording, f"checkpoint {recording} already exists; choose another "
                                "--checkpoint or pass --force"),
        "same as out": (out, f"--checkpoint and --out both name {out}"),
    }[case]
    before = snapshot(recording)
    refused(capsys, ["simulate", DEMO, "--out", out, "--checkpoint", checkpoint, "--quiet"],
            "--checkpoint", fragment)
    assert not out.exists()                   # the recording was not started
    assert snapshot(recording) == before


@pytest.mark.parametrize("command, flag", [("simulate", "--out"), ("simulate", "--checkpoint"),
                                           ("train", "--out")])
def test_output_may_not_be_the_model_file(tmp_path, capsys, command, flag):
    """Not even with --force, and however the path is spelled."""
    model = tmp_path / "model.toml"
    model.write_text(DEMO_TEXT if command == "simulate" else DIGITS_TEXT)
    before = snapshot(model)
    spelled = tmp_path / "." / "model.toml"
    args = ["--out", tmp_path / "r.h5", "--checkpoint", spelled] if flag == "--checkpoint" \
        else ["--out", spelled]
    what = "a training run is a directory" if command == "train" else \
        f"write the {'checkpoint' if flag == '--checkpoint' else 'recording'} to another file"
    refused(capsys, [command, model, *args, "--force", "--quiet"],
            f"{flag} {spelled} is the model file", what)
    assert snapshot(model) == before
    assert not (tmp_path / "r.h5").exists()


def test_out_may_not_be_the_checkpoint_being_resumed(tmp_path, capsys):
    checkpoint = tmp_path / "ck.h5"
    assert main(["simulate", str(DEMO), "--out", str(tmp_path / "a.h5"), "--steps", "2",
                 "--checkpoint", str(checkpoint), "--quiet"]) == 0
    capsys.readouterr()
    before = snapshot(checkpoint)
    refused(capsys, ["simulate", "--resume", checkpoint, "--out", checkpoint, "--force",
                     "--quiet"], f"--out {checkpoint} is the checkpoint given to --resume")
    assert snapshot(checkpoint) == before


# ---------------------------------------------------------------------------- train, resume
@pytest.mark.parametrize("args, fragment", [
    (["--epochs", "0"], "argument --epochs: must be a whole number >= 1, got '0'"),
    (["--epochs", "-1"], "argument --epochs: must be a whole number >= 1, got '-1'"),
    (["--epochs", "two"], "argument --epochs:"),
    (["--batch-size", "0"], "argument --batch-size: must be a whole number >= 1"),
    (["--batch-size", "-3"], "argument --batch-size: must be a whole number >= 1"),
    (["--threads", "0"], "argument --threads: must be a whole number >= 1"),
    (["--threads", "-2"], "argument --threads: must be a whole number >= 1"),
    (["--seed", "-1"], "argument --seed: must be a whole number >= 0"),
    (["--device", "tpu"], 'argument --device: "tpu" is not a device'),
], ids=lambda v: " ".join(v) if isinstance(v, list) and v[0].startswith("-") else "")
def test_train_bad_flag(run_dir, capsys, args, fragment):
    before = snapshot(run_dir)
    err = refused(capsys, ["train", DIGITS, "--out", run_dir, "--force", "--quiet", *args],
                  fragment)
    assert err.rstrip().endswith("(see `neurosim train --help`).")
    assert snapshot(run_dir) == before


@pytest.mark.parametrize("args, flag", [(["--epochs", "0"], "--epochs"),
                                        (["--threads", "-1"], "--threads"),
                                        (["--device", "tpu"], "--device")],
                         ids=["--epochs 0", "--threads -1", "--device tpu"])
def test_resume_bad_flag(run_dir, capsys, args, flag):
    before = snapshot(run_dir)
    refused(capsys, ["resume", run_dir, "--quiet", *args], f"argument {flag}:")
    assert snapshot(run_dir) == before


def test_train_with_zero_epochs_claims_nothing(tmp_path, capsys):
    model = tmp_path / "zero.toml"
    model.write_text(DIGITS_TEXT.replace("epochs = 40", "epochs = 0"))
    run = tmp_path / "run"
    refused(capsys, ["train", model, "--out", run, "--quiet"],
            f"{model} [training] epochs is 0: nothing to train", "--epochs N")
    assert not run.exists()


def test_train_out_that_is_a_file_or_holds_a_run(tmp_path, recording, run_dir, capsys):
    before = snapshot(recording)
    refused(capsys, ["train", DIGITS, "--out", recording, "--force", "--quiet"],
            f"--out {recording} is a file; a training run is a directory")
    assert snapshot(recording) == before
    before = snapshot(run_dir)
    refused(capsys, ["train", DIGITS, "--out", run_dir, "--quiet"],
            f"{run_dir} already holds a run", "neurosim resume", "--force")
    assert snapshot(run_dir) == before


# ---------------------------------------------------------------------------- NaN, inf, range
INHIBITION = 'leak = 1.0\nactivation = "relu"'
SIM_TABLE = "seed = 0\n"
WEIGHTS_1x24 = "[[" + ", ".join(["0.1"] * 5 + ["nan"] + ["0.1"] * 18) + "]]"


MODEL_VALUES = [
    ("leak = 0.2", "leak = nan", '[[population]] #2 "lower" leak: nan is not a finite number'),
    ("apical = 0.6", "apical = inf", '[[population]] #2 "lower" apical: inf'),
    ("basal = 1.0", "basal = -inf", '[[population]] #2 "lower" basal: -inf'),
    (INHIBITION, INHIBITION + "\nrate = inf", '[[population]] #4 "inhibition" rate: inf'),
    (INHIBITION, INHIBITION + "\nnoise = nan", '[[population]] #4 "inhibition" noise: nan'),
    (INHIBITION, INHIBITION + "\nbias = -inf", '[[population]] #4 "inhibition" bias: -inf'),
    (INHIBITION, INHIBITION + "\nbias = [nan]", '[[population]] #4 "inhibition" bias[0]: nan'),
    (INHIBITION, INHIBITION + "\nfixed_step = inf",
     '[[population]] #4 "inhibition" fixed_step: inf'),
    ("scale = 0.1\n", "scale = nan\n", '[[projection]] #4 "lower_lateral" scale: nan'),
    ("gain = -1.0", "gain = -inf", '[[projection]] #6 "inhibition_lower" gain: -inf'),
    ('init = "ones"\nscale = 0.1', f"init = {WEIGHTS_1x24}",
     '[[projection]] #5 "lower_inhibition" init[0][5]: nan'),
    ("duration = 20.0", "duration = nan", "[simulation] duration: nan"),
    ("dt = 0.05", "dt = inf", "[simulation] dt: inf"),
    (SIM_TABLE, SIM_TABLE + "rtol = nan\n", "[simulation] rtol: nan"),
    (SIM_TABLE, SIM_TABLE + "steady_tol = inf\n", "[simulation] steady_tol: inf"),
    ("high = 1.0", "high = inf", "[simulation] inputs.stimulus.high: inf"),
    ('{ type = "uniform", low = 0.0, high = 1.0 }', "[" + ", ".join(["0.5"] * 11 + ["nan"]) + "]",
     "[simulation] inputs.stimulus[11]: nan"),
    (SIM_TABLE, SIM_TABLE + "nudge = { upper = { target = [0.0, nan], beta = 0.5 } }\n",
     "[simulation] nudge.upper.target[1]: nan"),
    (SIM_TABLE, SIM_TABLE + "nudge = { upper = { target = 0.5, beta = inf } }\n",
     "[simulation] nudge.upper.beta: inf"),
    # numbers out of range, named by key (and flag)
    ("seed = 0", "seed = -1", "[simulation] seed (--seed): must be a whole number >= 0"),
    (SIM_TABLE, SIM_TABLE + "rtol = -1e-6\n", "[simulation] rtol (--rtol): must be a finite"),
    (SIM_TABLE, SIM_TABLE + "checkpoint_every = 0\n", "[simulation] checkpoint_every "
                                                      "(--checkpoint-every)"),
    (SIM_TABLE, SIM_TABLE + 'device = "tpu"\n', '[simulation] device (--device): "tpu" is not'),
    ("batch = 2", "batch = 0", "[simulation] batch (--batch): must be a whole number >= 1, got 0"),
    (SIM_TABLE, SIM_TABLE + 'dtype = "float16"\n', '[simulation] dtype (--dtype): must be '
                                                   '"float32" or "float64"'),
    (SIM_TABLE, SIM_TABLE + "n_steps = 10\n", "[simulation]: give duration or n_steps, not "
                                              "both"),
]


@pytest.mark.parametrize("old, new, key", MODEL_VALUES,
                         ids=[key.split(":")[0].split(" (")[0] for _, _, key in MODEL_VALUES])
def test_model_value_refused_naming_its_key(tmp_path, recording, capsys, old, new, key):
    assert old in DEMO_TEXT
    model = tmp_path / "model.toml"
    model.write_text(DEMO_TEXT.replace(old, new, 1))
    err = simulate_refused(capsys, recording, ["--steps", "2"], f"{model} {key}"
                           if not key.startswith("[simulation]:") else key, model=model)
    assert "step size" not in err and "dt)" not in err      # not blamed on the step size


@pytest.mark.parametrize("old, new, key", [
    ("eps = 0.15", "eps = nan", "[model] eps: nan"),
    ("beta = 1.0", "beta = inf", "[protocol] beta: inf"),
    ("[[0, 0.95]]", "[[0, nan]]", "[training] lr_schedule.segments[0][1]: nan"),
    ('dataset = "digits"', 'dataset = "digits"\nvalidation = nan', "[data] validation: nan"),
])
def test_training_value_refused_naming_its_key(tmp_path, run_dir, capsys, old, new, key):
    assert old in DIGITS_TEXT
    model = tmp_path / "model.toml"
    model.write_text(DIGITS_TEXT.replace(old, new, 1))
    before = snapshot(run_dir)
    refused(capsys, ["train", model, "--out", run_dir, "--force", "--quiet"], f"{model} {key}")
    assert snapshot(run_dir) == before


def test_python_built_graphs_and_options_refuse_nan_and_inf():
    with pytest.raises(ConfigError, match='population "h": leak must be a finite number, got '
                                          "nan"):
        PyramidalPopulation("h", 3, leak=NAN)
    with pytest.raises(ConfigError, match=r"bias\[1\] must be a finite number, got inf"):
        InterneuronPopulation("i", 2, bias=[0.0, INF])
    with pytest.raises(ConfigError, match=r'"d" \(dendrites.d\) must be a finite number'):
        PyramidalPopulation("h", 3, dendrites={"d": NAN})
    with pytest.raises(ConfigError, match='projection "p": gain must be a finite number'):
        Projection("p", "x", "h", gain=INF)
    weights = torch.zeros(3, 2)
    weights[2, 1] = NAN
    with pytest.raises(ConfigError, match=r'projection "x_h": init \(explicit weights\) gave '
                                          r"weight \[2, 1\] = nan"):
        Network([InputPopulation("x", 2), InterneuronPopulation("h", 3)],
                [Projection("x_h", "x", "h", init=weights)])
    with pytest.raises(ConfigError, match=r"m \[simulation\] duration: nan is not a finite"):
        simulation_options({}, "m", duration=NAN)
    with pytest.raises(ConfigError, match=r"\[simulation\] n_steps \(--steps\): must be a whole "
                                          "number >= 1, got 0"):
        Simulation.from_model_text(DEMO_TEXT, n_steps=0)
    # a --duration override replaces the file's n_steps (it used to be ignored)
    text = DEMO_TEXT.replace("duration = 20.0", "n_steps = 7")
    assert simulation_options({"simulation": {"n_steps": 7}}, "m", duration=2.0).n_steps is None
    assert Simulation.from_model_text(text, duration=1.0).options.total_steps() == 20


# ---------------------------------------------------------------------------- size
def test_simulation_refused_when_memory_is_short(tmp_path, recording, capsys, monkeypatch):
    monkeypatch.setattr(sizing, "available_memory", lambda device="cpu": 10_000)
    err = simulate_refused(capsys, recording, ["--steps", "2"],
                           "this simulation needs about ", "of memory but 10 kB is available",
                           "pass --no-size-check to start anyway")
    assert '" needs ' in err                    # the largest items, named
    out = tmp_path / "x.h5"
    assert main(["simulate", str(DEMO), "--out", str(out), "--steps", "2", "--quiet",
                 "--no-size-check"]) == 0
    assert out.is_file()


def test_simulation_refused_when_the_disk_is_short(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sizing, "free_disk", lambda directory: 1000)
    out = tmp_path / "x.h5"
    refused(capsys, ["simulate", DEMO, "--out", out, "--quiet"],
            f"writes about ", f"to {tmp_path} but only 1 kB is free there (recording ",
            "every, indices", "--no-size-check")
    assert not out.exists()


def test_training_refused_when_memory_or_disk_is_short(tmp_path, run_dir, capsys, monkeypatch):
    before = snapshot(run_dir)
    monkeypatch.setattr(sizing, "available_memory", lambda device="cpu": 10_000)
    refused(capsys, ["train", DIGITS, "--out", run_dir, "--force", "--quiet"],
            "this training run needs about ", 'projection "', "--batch-size",
            "--no-size-check")
    monkeypatch.setattr(sizing, "available_memory", lambda device="cpu": 10**12)
    monkeypatch.setattr(sizing, "free_disk", lambda directory: 10)
    refused(capsys, ["train", DIGITS, "--out", run_dir, "--force", "--quiet"],
            "this training run writes about ", f"to {run_dir}", "checkpoint", "--no-size-check")
    assert snapshot(run_dir) == before


def _allocations_fail_fast() -> bool:
    """A 480 GB allocation fails at once here (not overcommitted, not that much memory)."""
    try:
        mode = Path("/proc/sys/vm/overcommit_memory").read_text().strip()
        total = next(int(line.split()[1]) for line in open("/proc/meminfo")
                     if line.startswith("MemTotal:")) * 1024
    except (OSError, StopIteration, ValueError):
        return False
    return mode != "1" and total < 200e9


BIG = """
[[population]]
name = "x"
type = "input"
size = {n_in}

[[population]]
name = "h"
type = "interneuron"
size = {n_h}

[[projection]]
name = "x_h"
source = "x"
target = "h"

[simulation]
solver = "euler"
n_steps = 2
"""


@pytest.mark.skipif(not _allocations_fail_fast(), reason="huge allocations may succeed here")
def test_too_large_projection_or_population_is_named(tmp_path, capsys):
    model = tmp_path / "big.toml"
    model.write_text(BIG.format(n_in=200_000, n_h=300_000))
    out = tmp_path / "big.h5"
    refused(capsys, ["simulate", model, "--out", out, "--quiet"],
            'projection "x_h" needs 300000 x 200000 float32 weights = 240 GB',
            "--no-size-check")
    refused(capsys, ["simulate", model, "--out", out, "--quiet", "--no-size-check"],
            'projection "x_h" needs 300000 x 200000 float64 weights = 480 GB while it is '
            "initialised")
    model.write_text(BIG.format(n_in=2, n_h=10**11))
    refused(capsys, ["simulate", model, "--out", out, "--quiet", "--no-size-check"],
            "cannot allocate memory", 'population "h" needs 100000000000 neurons')
    assert not out.exists()


# ---------------------------------------------------------------------------- console script
def _console(*args: str, cwd) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("neurosim")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "neurosim.cli"]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.run([*command, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


def test_console_script_errors_are_one_line(tmp_path):
    shutil.copy(DEMO, tmp_path / "demo.toml")
    (tmp_path / "blob.toml").write_bytes(bytes(range(256)))
    for args, fragment in ((["demo.toml", "--duration", "nan"], "argument --duration"),
                           (["blob.toml"], "model file blob.toml is not a text (TOML) file")):
        proc = _console("simulate", *args, "--out", "x.h5", "--quiet", cwd=tmp_path)
        assert proc.returncode == 2 and proc.stdout == ""
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.startswith("neurosim: error: ") and fragment in proc.stderr
        assert not (tmp_path / "x.h5").exists()


# ---------------------------------------------------------------------------- during a run
def test_a_failing_disk_is_one_line(tmp_path, capsys, monkeypatch):
    def full(self, *args, **kwargs):
        raise OSError(28, "No space left on device", str(tmp_path / "r.h5"))
    monkeypatch.setattr(Simulation, "run", full)
    refused(capsys, ["simulate", DEMO, "--out", tmp_path / "r.h5", "--steps", "2", "--quiet"],
            "No space left on device", str(tmp_path / "r.h5"))


def test_resume_with_a_new_end_in_either_form(tmp_path):
    ckpt, out = tmp_path / "c.h5", tmp_path / "r.h5"
    assert main(["simulate", str(DEMO), "--steps", "10", "--checkpoint", str(ckpt), "--out",
                 str(out), "--quiet"]) == 0
    for flag, value, steps in (("--duration", "1.0", 20), ("--steps", "30", 30)):
        sim = Simulation.load_checkpoint(ckpt, **{"duration" if flag == "--duration" else
                                                  "n_steps": float(value) if flag ==
                                                  "--duration" else int(value)})
        assert sim.options.total_steps() == steps, flag
        # each into a recording of its own: the first one's goes on past the checkpoint
        assert main(["simulate", "--resume", str(ckpt), flag, value, "--out",
                     str(tmp_path / f"r{steps}.h5"), "--quiet"]) == 0


def test_resume_refuses_options_the_checkpoint_fixes_and_an_end_behind_it(tmp_path, capsys):
    """batch, seed, dtype and dt are the checkpoint's: another value is one line naming the
    flag (the same value is accepted); an end at or before the checkpoint's step is one line
    naming its step, with nothing run or written."""
    ckpt, out = tmp_path / "c.h5", tmp_path / "r.h5"
    assert main(["simulate", str(DEMO), "--steps", "10", "--checkpoint", str(ckpt), "--out",
                 str(out), "--quiet"]) == 0
    capsys.readouterr()
    before = snapshot(ckpt, out)
    new = tmp_path / "new.h5"
    for args, fragment in (
            (["--seed", "1"], "seed (--seed) cannot change on resume: the checkpoint's run has "
                              "seed = 0"),
            (["--batch", "3"], "batch (--batch) cannot change on resume: the checkpoint's run "
                               "has batch = 2"),
            (["--dtype", "float64"], "dtype (--dtype) cannot change on resume"),
            (["--dt", "0.01"], "dt (--dt) cannot change on resume: the checkpoint's run has "
                               "dt = 0.05"),
            (["--steps", "5"], "the checkpoint is already at step 10 (t=0.5), so n_steps "
                               "(--steps) = 5 leaves nothing to run; give a larger end"),
            (["--steps", "10"], "already at step 10"),
            (["--duration", "0.25"], "so duration (--duration) = 0.25 (step 5) leaves nothing "
                                     "to run"),
            ([], f"checkpoint {ckpt} is already at step 10 (t=0.5), the end of its run; give a "
                 "larger --steps or --duration")):
        refused(capsys, ["simulate", "--resume", ckpt, "--out", new, "--quiet", *args],
                str(ckpt), fragment)
        assert not new.exists()
    assert snapshot(ckpt, out) == before
    # the checkpoint's own values, repeated, are fine
    assert main(["simulate", "--resume", str(ckpt), "--out", str(new), "--steps", "12",
                 "--seed", "0", "--batch", "2", "--dt", "0.05", "--dtype", "float32",
                 "--quiet"]) == 0
