"""Recovering from crashes and damaged files.

Training runs keep their last K checkpoints (run.h5 plus checkpoints/epoch_NNNN.h5) and
`neurosim resume` falls back to the newest intact one when run.h5 is damaged, bit-exactly.
A simulation resumed from a checkpoint continues its own recording: the records written after
the checkpoint (before the crash) are dropped and the finished file equals the recording of an
uninterrupted run.

The training runs use the embedded digits with short phases (about 0.3 s an epoch).
"""
from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from neurosim.cli import main as cli
from neurosim.errors import ConfigError
from neurosim.graph import parse_model_text
from neurosim.io import (DamagedCheckpointError, Recorder, RecordingError, kept_checkpoints,
                         load_checkpoint, open_recording)
from neurosim.simulation import Simulation, monitors_from
from neurosim.training import Trainer

ROOT = Path(__file__).resolve().parents[1]
DIGITS_TEXT = (ROOT / "models" / "corinfomax_digits.toml").read_text(encoding="utf-8")
TIMING = {"seconds", "train_seconds"}


def digits_text(**values) -> str:
    """models/corinfomax_digits.toml with short phases and ``values`` replaced."""
    text = DIGITS_TEXT
    for key, value in {"T_free": 12, "T_nudged": 4, **values}.items():
        lines = [line for line in text.splitlines() if line.startswith(f"{key} = ")]
        assert len(lines) == 1, key
        text = text.replace(lines[0], f"{key} = {value}")
    return text


def model_file(tmp_path: Path, text: str | None = None) -> Path:
    path = tmp_path / "digits_fast.toml"
    path.write_text(text or digits_text(), encoding="utf-8")
    return path


def train(tmp_path: Path, run: Path, epochs: int, *flags: str) -> None:
    assert cli(["train", str(model_file(tmp_path)), "--out", str(run), "--epochs", str(epochs),
                "--quiet", *flags]) == 0


def kept(run: Path) -> list[int]:
    return [epoch for epoch, _ in kept_checkpoints(run)]


def csv_columns(path: Path) -> dict[str, list[str]]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {k: [r[k] for r in rows] for k in rows[0]}


def truncate(path: Path) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size // 2)


def overwrite(path: Path) -> None:
    with open(path, "r+b") as fh:       # the superblock: the file is no longer HDF5
        fh.write(b"\xde\xad\xbe\xef" * 16)


def mark_incomplete(path: Path) -> None:
    with h5py.File(path, "r+") as f:
        f.attrs["complete"] = False


def corrupt_weights(path: Path) -> None:
    """Flip bytes inside a weight matrix's data: the file stays valid HDF5, only the CRC-32
    stored with the weights tells."""
    with h5py.File(path, "r") as f:
        name = next(k for k in f["network"])
        offset = f["network"][name].id.get_offset()
    with open(path, "r+b") as fh:
        fh.seek(offset + 16)
        fh.write(b"\x7f\x7f\x7f\x7f")


DAMAGE = {"truncated": truncate, "overwritten": overwrite, "incomplete": mark_incomplete,
          "corrupted weights": corrupt_weights}


def assert_same_training_state(a_dir: Path, b_dir: Path) -> None:
    """Two run directories hold the same training state, bit for bit (timings aside)."""
    a = load_checkpoint(a_dir / "run.h5", kind="training").payload
    b = load_checkpoint(b_dir / "run.h5", kind="training").payload
    assert a["progress"] == b["progress"]
    for group in ("network", "biases"):
        assert list(a[group]) == list(b[group])
        for name, value in a[group].items():
            assert torch.equal(value, b[group][name]), (group, name)
    assert torch.equal(a["rng"]["generators"]["trainer"], b["rng"]["generators"]["trainer"])
    assert list(a["metrics"]) == list(b["metrics"])
    for key in set(a["metrics"]) - TIMING:
        assert torch.equal(a["metrics"][key], b["metrics"][key]), key
    csv_a, csv_b = csv_columns(a_dir / "metrics.csv"), csv_columns(b_dir / "metrics.csv")
    assert list(csv_a) == list(csv_b)
    assert {k: v for k, v in csv_a.items() if k not in TIMING} == \
        {k: v for k, v in csv_b.items() if k not in TIMING}


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """An uninterrupted 4-epoch run (default keep_checkpoints = 3)."""
    tmp = tmp_path_factory.mktemp("straight")
    train(tmp, tmp / "run", 4)
    return tmp / "run"


# --------------------------------------------------------------------------- training
def test_runs_keep_their_last_checkpoints(straight):
    """run.h5 is the latest; checkpoints/ holds the K-1 = 2 before it, each the complete
    checkpoint of its epoch."""
    assert load_checkpoint(straight / "run.h5", kind="training").attrs["epoch"] == 4
    assert kept(straight) == [3, 2]
    for epoch, path in kept_checkpoints(straight):
        assert path == straight / "checkpoints" / f"epoch_{epoch:04d}.h5"
        ckpt = load_checkpoint(path, kind="training")
        assert ckpt.attrs["epoch"] == ckpt.payload["progress"]["epoch"] == epoch
        assert len(ckpt.payload["metrics"]["epoch"]) == epoch
    assert not [p for p in (straight / "checkpoints").iterdir() if p.name.startswith(".")]


def test_keep_checkpoints_flag_and_key(straight, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(straight, run)
    # fewer from now on: the excess is pruned after the next checkpoint; the setting stays
    assert cli(["resume", str(run), "--epochs", "5", "--keep-checkpoints", "2", "--quiet"]) == 0
    assert kept(run) == [4]
    assert cli(["resume", str(run), "--epochs", "6", "--quiet"]) == 0
    assert kept(run) == [5]
    assert load_checkpoint(run / "run.h5").attrs["epoch"] == 6
    # 1: run.h5 only ([training] keep_checkpoints in the model file)
    text = digits_text(threads=1).replace("threads = 1", "threads = 1\nkeep_checkpoints = 1")
    single = tmp_path / "single"
    assert cli(["train", str(model_file(tmp_path, text)), "--out", str(single), "--epochs",
                "2", "--quiet"]) == 0
    assert kept(single) == [] and (single / "run.h5").is_file()
    capsys.readouterr()
    # validated: a positive integer
    try:
        code = cli(["resume", str(run), "--keep-checkpoints", "0"])
    except SystemExit as exit_:                # argparse's own exit
        code = exit_.code
    assert code == 2 and "--keep-checkpoints" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"\[training\] keep_checkpoints: must be a positive "
                                          r"integer, got 0"):
        Trainer.from_model_text(digits_text(), keep_checkpoints=0)
    with pytest.raises(ConfigError, match="keep_checkpoints: must be a positive integer"):
        Trainer.from_model_text(text.replace("keep_checkpoints = 1", 'keep_checkpoints = "3"'))


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_resume_falls_back_past_a_damaged_run_file_bit_exactly(straight, tmp_path, capsys,
                                                               damage):
    """Train 3 epochs, damage run.h5, `neurosim resume --epochs 4`: one warning line naming
    the damaged file and the checkpoint used; the result equals the uninterrupted run."""
    run = tmp_path / "run"
    train(tmp_path, run, 3)
    assert kept(run) == [2, 1]
    DAMAGE[damage](run / "run.h5")
    capsys.readouterr()
    assert cli(["resume", str(run), "--epochs", "4", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("neurosim: warning: ") and err.count("\n") == 1, err
    assert f"{run / 'run.h5'} is damaged" in err
    assert f"continuing from {run / 'checkpoints' / 'epoch_0002.h5'} (epoch 2)" in err
    assert_same_training_state(straight, run)
    assert kept(run) == kept(straight) == [3, 2]
    for epoch, path in kept_checkpoints(run):
        assert load_checkpoint(path).attrs["epoch"] == epoch


def test_fallback_leaves_a_consistent_run_directory(tmp_path, capsys):
    """Resuming without training (the target is reached) still puts the checkpoint used
    back at run.h5 and cuts metrics.csv to its epoch; the same from Python, with `warn`."""
    run = tmp_path / "run"
    train(tmp_path, run, 3)
    truncate(run / "run.h5")
    mark_incomplete(run / "checkpoints" / "epoch_0002.h5")
    capsys.readouterr()
    assert cli(["resume", str(run), "--epochs", "1", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "already has 1 epochs" in captured.out
    assert captured.err.count("\n") == 1
    assert (f"{run / 'run.h5'} is damaged (truncated or not an HDF5 file); "
            f"{run / 'checkpoints' / 'epoch_0002.h5'} is damaged (incomplete); continuing from "
            f"{run / 'checkpoints' / 'epoch_0001.h5'} (epoch 1)") in captured.err
    assert load_checkpoint(run / "run.h5").attrs["epoch"] == 1
    assert csv_columns(run / "metrics.csv")["epoch"] == ["1"]
    # run.h5 is intact now: no warning any more
    messages = []
    trainer = Trainer.resume(run, progress=False, warn=messages.append)
    assert trainer.epoch == 1 and messages == []
    (run / "run.h5").unlink()                           # a missing run.h5 is passed over too
    trainer = Trainer.resume(run, progress=False, warn=messages.append)
    assert trainer.epoch == 1 and len(messages) == 1 and "run.h5 is missing" in messages[0]


def test_a_run_killed_between_its_checkpoint_and_its_metrics_gets_them_back(tmp_path,
                                                                            capsys):
    """save() writes run.h5, then metrics.csv: a run killed between the two (here: metrics.csv
    one epoch short, or gone) gets the checkpoint's history back when it is resumed, also
    when nothing is left to train (a sweep finds such a run finished)."""
    run = tmp_path / "run"
    train(tmp_path, run, 2)
    whole = (run / "metrics.csv").read_text()
    (run / "metrics.csv").write_text("\n".join(whole.splitlines()[:2]) + "\n")
    assert csv_columns(run / "metrics.csv")["epoch"] == ["1"]
    trainer = Trainer.resume(run, progress=False)
    assert trainer.epoch == 2 and (run / "metrics.csv").read_text() == whole
    (run / "metrics.csv").unlink()
    capsys.readouterr()
    assert cli(["resume", str(run), "--epochs", "2", "--quiet"]) == 0
    assert (run / "metrics.csv").read_text() == whole


def test_no_intact_checkpoint_is_one_error_listing_every_file_tried(tmp_path, capsys):
    run = tmp_path / "run"
    train(tmp_path, run, 2)
    overwrite(run / "run.h5")
    truncate(run / "checkpoints" / "epoch_0001.h5")
    capsys.readouterr()
    assert cli(["resume", str(run), "--epochs", "3", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("neurosim: error: no intact checkpoint in") and err.count("\n") == 1
    assert (f"tried {run / 'run.h5'} (truncated or not an HDF5 file), "
            f"{run / 'checkpoints' / 'epoch_0001.h5'} (truncated or not an HDF5 file)") in err
    assert f"neurosim train {run / 'model.toml'} --out {run} --force" in err


def test_damage_messages_name_the_earlier_checkpoints(tmp_path):
    """"use an earlier checkpoint" names the files kept beside a damaged one, newest first."""
    run = tmp_path / "run"
    train(tmp_path, run, 3)
    truncate(run / "run.h5")
    with pytest.raises(DamagedCheckpointError) as err:
        load_checkpoint(run / "run.h5")
    first, second = run / "checkpoints" / "epoch_0002.h5", run / "checkpoints" / "epoch_0001.h5"
    assert f"use an earlier checkpoint kept next to it (newest first: {first}, {second})" \
        in str(err.value)
    assert "`neurosim resume` falls back to them by itself" in str(err.value)
    mark_incomplete(first)
    with pytest.raises(DamagedCheckpointError, match=r"incomplete .* Use an earlier checkpoint "
                                                     r"kept next to it \(newest first: \S+"
                                                     r"epoch_0001\.h5\)"):
        load_checkpoint(first)


def test_a_newer_format_run_file_is_not_passed_over(tmp_path, capsys):
    """Only damage falls back: a run.h5 this neurosim cannot read (another format version)
    stops with its own error, and nothing is changed."""
    run = tmp_path / "run"
    train(tmp_path, run, 2)
    with h5py.File(run / "run.h5", "r+") as f:
        f.attrs["format_version"] = 2
    before = sorted((p.name, p.stat().st_mtime_ns) for p in run.rglob("*"))
    capsys.readouterr()
    assert cli(["resume", str(run), "--epochs", "3", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "newer than version 1" in err and "warning" not in err
    assert sorted((p.name, p.stat().st_mtime_ns) for p in run.rglob("*")) == before


# --------------------------------------------------------------------------- simulation
SIM_TEXT = """
[network]
name = "continue_test"

[[population]]
name = "x"
type = "input"
size = 4

[[population]]
name = "h"
type = "pyramidal"
size = 6
leak = 0.3
basal = 1.0
apical = 0.5
activation = "sigmoid"
noise = 0.2

[[population]]
name = "out"
type = "pyramidal"
size = 3
leak = 0.2
basal = 1.0
apical = 0.5
activation = "tanh"

[[projection]]
name = "x_h"
source = "x"
target = "h"
compartment = "basal"
init = "he_uniform"

[[projection]]
name = "h_out"
source = "h"
target = "out"
compartment = "basal"

[[projection]]
name = "out_h"
source = "out"
target = "h"
compartment = "apical"

[simulation]
solver = "euler"
dt = 0.05
batch = 2
seed = 5
dtype = "float64"

[[monitor]]
population = "h"
compartment = "soma"
variable = "u"

[[monitor]]
population = "h"
compartment = "apical"
variable = "v"
every = 2

[[monitor]]
population = "out"
compartment = "soma"
variable = "r"
every = 3
"""
N_STEPS = 30


def sim_monitors(sim: Simulation, text: str = SIM_TEXT):
    return monitors_from(parse_model_text(text), sim.network, "model")


def read_all(path: Path) -> dict:
    with open_recording(path) as rec:
        assert rec.complete and "aborted" not in rec.attrs
        return {key: rec.read(key) for key in rec.variables()}


def assert_same_recording(expected: Path, got: Path, after: float | None = None) -> None:
    """Equal variables, values and time axes (float64, bit for bit); with ``after``, only
    the expected records taken after that time."""
    a, b = read_all(expected), read_all(got)
    assert list(a) == list(b) and len(a) == 3
    for key, var in a.items():
        keep = slice(None) if after is None else var.time > after
        assert var.values.dtype == b[key].values.dtype == np.float64, key
        assert var.values[keep].tobytes() == b[key].values.tobytes(), key
        assert var.time[keep].tobytes() == b[key].time.tobytes(), key


@pytest.fixture(scope="module")
def full_recording(tmp_path_factory) -> Path:
    """The recording of an uninterrupted run of SIM_TEXT (30 steps)."""
    path = tmp_path_factory.mktemp("full") / "full.h5"
    sim = Simulation.from_model_text(SIM_TEXT)
    with Recorder(path, chunk_size=4, config_text=SIM_TEXT) as rec:
        sim.run(N_STEPS, monitors=sim_monitors(sim), recorder=rec)
    with open_recording(path) as rec:         # the three time axes really differ
        assert [rec.read(k).values.shape[0] for k in rec.variables()] == [31, 16, 11]
    return path


def test_killed_simulation_resumes_into_its_own_recording(full_recording, tmp_path):
    """A process killed (os._exit, nothing flushed) at step 23, checkpoints every 5 steps;
    Simulation.load_checkpoint + a Recorder with append=True: the file then equals the
    uninterrupted run's recording."""
    rec, ck = tmp_path / "rec.h5", tmp_path / "ck.h5"
    code = f"""
        import os, torch
        torch.set_num_threads(1)
        from neurosim.graph import parse_model_text
        from neurosim.io import Recorder
        from neurosim.simulation import Simulation, monitors_from

        class Killed(Recorder):
            def append(self, name, values, t):
                if name == "h/soma/u" and self._monitors[name].count == 24:   # step 23
                    os._exit(3)
                super().append(name, values, t)

            def append_block(self, name, values, times):      # the fused path's records
                for row, t in zip(values, times):
                    self.append(name, row, t)

        text = {SIM_TEXT!r}
        sim = Simulation.from_model_text(text)
        mons = monitors_from(parse_model_text(text), sim.network, "model")
        with Killed({str(rec)!r}, chunk_size=4, config_text=text) as r:
            sim.run({N_STEPS}, monitors=mons, recorder=r, checkpoint={str(ck)!r},
                    checkpoint_every=5)
    """
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr
    assert load_checkpoint(ck).payload["progress"]["step"] == 20
    with open_recording(rec) as cut:
        assert not cut.complete
        # flushed at each checkpoint: at least the records up to step 20 are there
        assert cut.read("h/soma/u").values.shape[0] >= 21

    sim = Simulation.load_checkpoint(ck)
    with Recorder(rec, chunk_size=4, config_text=sim.model_text, append=True) as r:
        sim.run(N_STEPS, monitors=sim_monitors(sim), recorder=r)
    assert_same_recording(full_recording, rec)


def sim_model_file(tmp_path: Path, text: str = SIM_TEXT, name: str = "sim.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_cli_resume_continues_the_same_recording(full_recording, tmp_path, capsys):
    """`simulate --resume CKPT --out SAME.h5` drops the records after the checkpoint's step
    and appends; a different --out starts a new file at the checkpoint's step, which a later
    resume continues in the same way."""
    model, rec, ck, ck20 = (sim_model_file(tmp_path), tmp_path / "rec.h5",
                            tmp_path / "ck.h5", tmp_path / "ck20.h5")
    assert cli(["simulate", str(model), "--out", str(rec), "--steps", "20", "--checkpoint",
                str(ck), "--quiet"]) == 0
    shutil.copy(ck, ck20)
    # the run went on to step 27, then "crashed": its checkpoint was still that of step 20,
    # its recording incomplete (marked so below)
    assert cli(["simulate", "--resume", str(ck), "--out", str(rec), "--steps", "27",
                "--quiet"]) == 0
    assert "recording continued in" in capsys.readouterr().out
    with open_recording(rec) as r:
        assert r.read("h/soma/u").values.shape[0] == 28
    mark_incomplete(rec)
    assert cli(["simulate", "--resume", str(ck20), "--out", str(rec), "--steps", str(N_STEPS),
                "--quiet"]) == 0
    assert_same_recording(full_recording, rec)

    # another --out: a new recording from step 20 on (first_step 20) ...
    other, ck25 = tmp_path / "other.h5", tmp_path / "ck25.h5"
    assert cli(["simulate", "--resume", str(ck20), "--out", str(other), "--steps", "25",
                "--checkpoint", str(ck25), "--quiet"]) == 0
    with open_recording(other) as r:
        assert r.attrs["first_step"] == 20 and r.read("h/soma/u").values.shape[0] == 5
    # ... which a resume from its checkpoint of step 25 continues too, after a "crash" at
    # step 28 (the every=2 and every=3 axes run across both points)
    for steps, records in ((28, 8), (N_STEPS, 10)):
        assert cli(["simulate", "--resume", str(ck25), "--out", str(other), "--steps",
                    str(steps), "--quiet"]) == 0
        with open_recording(other) as r:
            assert r.read("h/soma/u").values.shape[0] == records
        if steps < N_STEPS:
            mark_incomplete(other)          # "crashed" at step 28
    t20 = float(load_checkpoint(ck20).payload["progress"]["t"])
    assert_same_recording(full_recording, other, after=t20)


def test_continuing_refuses_a_recording_of_another_run(tmp_path, capsys):
    """Another model text, other monitors, records missing before the checkpoint: a clear
    error, and the recording is left as it was."""
    model, rec, ck = sim_model_file(tmp_path), tmp_path / "rec.h5", tmp_path / "ck.h5"
    assert cli(["simulate", str(model), "--out", str(rec), "--steps", "12", "--checkpoint",
                str(ck), "--quiet"]) == 0
    before = read_all(rec)

    def unchanged():
        after = read_all(rec)               # complete, not aborted, the same records
        assert list(after) == list(before)
        for key, var in before.items():
            assert var.values.tobytes() == after[key].values.tobytes(), key
            assert var.time.tobytes() == after[key].time.tobytes(), key

    # another model (another seed): its checkpoint does not continue this recording
    other_text = SIM_TEXT.replace("seed = 5", "seed = 6")
    other_ck = tmp_path / "other_ck.h5"
    assert cli(["simulate", str(sim_model_file(tmp_path, other_text, "other.toml")), "--out",
                str(tmp_path / "o.h5"), "--steps", "12", "--checkpoint", str(other_ck),
                "--quiet"]) == 0
    capsys.readouterr()
    assert cli(["simulate", "--resume", str(other_ck), "--out", str(rec), "--steps", "20",
                "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot continue recording {rec}" in err
    assert "another model text" in err
    unchanged()

    # other monitors (Python): one left out, or sampled at another rate
    text_every = SIM_TEXT.replace("every = 3", "every = 4")
    for text, message in ((SIM_TEXT.rsplit("[[monitor]]", 1)[0], "also records out/soma/r"),
                          (text_every, "every = 3 there, 4 here")):
        sim = Simulation.load_checkpoint(ck)
        with pytest.raises(RecordingError, match=message):
            with Recorder(rec, append=True) as r:
                sim.run(20, monitors=sim_monitors(sim, text), recorder=r)
        unchanged()

    # records lost before the checkpoint (cut off, or another run's shorter recording)
    short = tmp_path / "short.h5"
    assert cli(["simulate", str(model), "--out", str(short), "--steps", "6", "--quiet"]) == 0
    capsys.readouterr()
    assert cli(["simulate", "--resume", str(ck), "--out", str(short), "--steps", "20",
                "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "holds 7 records on its time axis every_1, but the run continues after record 13, " \
           "so 6 are missing" in err

    # --force replaces it instead
    assert cli(["simulate", "--resume", str(other_ck), "--out", str(rec), "--steps", "20",
                "--force", "--quiet"]) == 0
    with open_recording(rec) as r:
        assert r.attrs["first_step"] == 12 and r.read("h/soma/u").values.shape[0] == 8


def test_recorder_append_mode_rules(tmp_path):
    path = tmp_path / "rec.h5"
    with pytest.raises(RecordingError, match="it does not exist; create it without append=True"):
        Recorder(path, append=True)
    sim = Simulation.from_model_text(SIM_TEXT)
    with Recorder(path, config_text=SIM_TEXT) as rec:
        sim.run(4, monitors=sim_monitors(sim), recorder=rec)
    with pytest.raises(RecordingError, match="not both"):
        Recorder(path, append=True, overwrite=True)
    with pytest.raises(RecordingError, match="another model text"):
        Recorder(path, append=True, config_text="something else")
    mons = sim_monitors(sim)
    with Recorder(path, append=True) as rec:
        for m in mons:
            rec.add(m.key, m, (2, 6) if m.population == "h" else (2, 3), torch.float64)
        assert rec.resuming and rec.rates == (1, 2, 3)
        with pytest.raises(RecordingError, match=r"call truncate\(\)"):
            rec.append("h/soma/u", torch.zeros(2, 6, dtype=torch.float64), 1.0)
        with pytest.raises(RecordingError, match=r"t=0\.1.*continues from t=0\.15"):
            rec.truncate({1: 3, 2: 2, 3: 1}, last_times={1: 0.15})
    with open_recording(path) as r:             # closed before truncate(): untouched
        assert r.complete and r.read("h/soma/u").values.shape[0] == 5


def test_resume_does_not_cut_a_finished_recording(tmp_path, capsys):
    """A complete recording that goes on past the checkpoint is not continued (that would
    drop its later records): one line naming --force and --out, the file unchanged. It is
    continued where it ends at the checkpoint's step, or when it is incomplete (the recording
    of a crashed run); --force starts a new one at the checkpoint's step."""
    model, rec, ck, ck12 = (sim_model_file(tmp_path), tmp_path / "rec.h5", tmp_path / "ck.h5",
                            tmp_path / "ck12.h5")
    assert cli(["simulate", str(model), "--out", str(rec), "--steps", "12", "--checkpoint",
                str(ck), "--quiet"]) == 0
    shutil.copy(ck, ck12)
    # ends at the checkpoint's step: continued (and the checkpoint moves on with it)
    assert cli(["simulate", "--resume", str(ck), "--out", str(rec), "--steps", "20",
                "--checkpoint", str(ck), "--quiet"]) == 0
    assert "recording continued in" in capsys.readouterr().out
    before = read_all(rec)

    def unchanged():
        after = read_all(rec)
        for key, var in before.items():
            assert var.values.tobytes() == after[key].values.tobytes(), key

    # an older checkpoint into the finished recording: refused, nothing changes
    assert cli(["simulate", "--resume", str(ck12), "--out", str(rec), "--steps", "25",
                "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot continue recording {rec} at step 12" in err
    assert "finished recording that goes on past this step (8 records after it on time axis " \
           "every_1)" in err
    assert "another --out" in err and "--force" in err
    unchanged()
    # the same from Python
    sim = Simulation.load_checkpoint(ck12)
    with pytest.raises(ConfigError, match="finished recording that goes on past this step"):
        with Recorder(rec, append=True, config_text=SIM_TEXT) as r:
            sim.run(25, monitors=sim_monitors(sim), recorder=r)
    unchanged()
    # the recording of a crashed run (incomplete) is continued from the older checkpoint
    mark_incomplete(rec)
    assert cli(["simulate", "--resume", str(ck12), "--out", str(rec), "--steps", "25",
                "--quiet"]) == 0
    with open_recording(rec) as r:
        assert r.complete and r.read("h/soma/u").values.shape[0] == 26
    # --force: a new recording from the checkpoint's step
    assert cli(["simulate", "--resume", str(ck12), "--out", str(rec), "--steps", "25",
                "--force", "--quiet"]) == 0
    with open_recording(rec) as r:
        assert r.attrs["first_step"] == 12 and r.read("h/soma/u").values.shape[0] == 13


def test_continuing_refuses_another_seed_or_other_stimuli(tmp_path):
    """Seed and a digest of the stimuli are root attributes of a recording and of a
    checkpoint: a recording is continued only by a run with the same ones."""
    from neurosim.stimuli import OrnsteinUhlenbeck, Stimulus

    network = Simulation.from_model_text(SIM_TEXT).network

    def simulation(seed=5, sigma=0.5):
        options = Simulation.from_model_text(SIM_TEXT, seed=seed).options
        stimuli = [] if sigma is None else \
            [Stimulus("h", OrnsteinUhlenbeck(sigma=sigma, tau=1.0))]
        return Simulation(network, options, stimuli=stimuli)

    path = tmp_path / "rec.h5"
    sim = simulation()
    attrs = sim.run_attrs()
    assert attrs["seed"] == 5 and len(attrs["stimuli_digest"]) == 16
    assert simulation(sigma=None).run_attrs()["stimuli_digest"] == "none"
    assert simulation(sigma=0.5).run_attrs() == attrs          # the same stimuli, rebuilt
    with Recorder(path) as rec:
        sim.run(6, monitors=sim_monitors(sim), recorder=rec)
    with open_recording(path) as r:
        assert r.attrs["seed"] == 5 and r.attrs["stimuli_digest"] == attrs["stimuli_digest"]
    mark_incomplete(path)
    for other, message in ((simulation(seed=6), "seed = 5 there, 6 here"),
                           (simulation(sigma=0.7), "stimuli_digest = ")):
        with pytest.raises(RecordingError, match=message):
            with Recorder(path, append=True) as rec:
                other.run(6, monitors=sim_monitors(other), recorder=rec)
    with open_recording(path) as r:                 # untouched
        assert r.read("h/soma/u").values.shape[0] == 7
