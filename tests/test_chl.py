"""Contrastive Hebbian learning, a protocol and rule written outside the package
(examples/chl.py), trained from a model file that names them as "chl:Class"."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import torch

from neurosim.cli import main as cli
from neurosim.io import load_checkpoint
from neurosim.training import Trainer

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "examples" / "chl_digits.toml"


def _rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_chl_trains_digits_to_90_percent_from_the_command_line(tmp_path):
    run = tmp_path / "chl"
    assert cli(["train", str(MODEL), "--out", str(run), "--quiet"]) == 0
    rows = _rows(run)
    assert len(rows) == 20
    assert float(rows[-1]["test_accuracy"]) >= 0.90
    assert all(float(r["angle_ff2_fb"]) < 1e-9 for r in rows)       # feedback stays tied


def test_one_chl_step_is_the_contrastive_hebbian_update():
    trainer = Trainer.from_model_file(MODEL, progress=False, dtype="float64")
    ds, net, protocol = trainer.dataset, trainer.net, trainer.protocol
    assert type(protocol).__module__ == "chl" and protocol.phases == ("free", "clamped")
    x, labels = ds.train_x[:16], ds.train_y[:16]
    target = trainer._one_hot(labels)
    before = {k: v.clone() for k, v in net.weights.items()}
    with torch.inference_mode():
        free = protocol.infer(x)
        h_f, o_f = net.r_of(free, "h").clone(), net.r_of(free, "out").clone()
        protocol.train_step(x, target, torch.Generator())
        clamped = protocol._state("clamped", 16)
        h_c, o_c = net.r_of(clamped, "h"), net.r_of(clamped, "out")
    assert torch.equal(o_c, target)                     # the output was held at the target
    assert not torch.allclose(h_c, h_f)                 # and the hidden layer moved
    expected_ff1 = before["ff1"] + 0.1 / 16 * (h_c.T @ x - h_f.T @ x)
    expected_ff2 = before["ff2"] + 0.05 / 16 * (o_c.T @ h_c - o_f.T @ h_f)
    assert torch.allclose(net.weights["ff1"], expected_ff1, atol=1e-12, rtol=0)
    assert torch.allclose(net.weights["ff2"], expected_ff2, atol=1e-12, rtol=0)
    assert torch.equal(net.weights["fb"], net.weights["ff2"].T)


def test_chl_resume_in_a_fresh_process_is_bit_identical(tmp_path):
    straight = Trainer.from_model_file(MODEL, progress=False, epochs=2)
    straight.fit(tmp_path / "a", log=None)
    Trainer.from_model_file(MODEL, progress=False, epochs=2).fit(tmp_path / "b", epochs=1,
                                                                 log=None)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "neurosim.cli", "resume", str(tmp_path / "b"),
                           "--quiet"], capture_output=True, text=True, env=env, timeout=120,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    a = load_checkpoint(tmp_path / "a" / "run.h5").payload
    b = load_checkpoint(tmp_path / "b" / "run.h5").payload
    for name, w in a["network"].items():
        assert torch.equal(w, b["network"][name]), name
    assert a["metrics"]["test_accuracy"].tolist() == b["metrics"]["test_accuracy"].tolist()
