"""`neurosim sweep --executor ray`: the grid sweep of test_sweep.py as Ray tasks on a local
Ray cluster with 2 worker processes (``--address local``); every trial completes exactly
once and the trials are ordinary run directories. Ray starts in a subprocess (its start-up
takes seconds, so this is the one Ray test)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from test_sweep import check_exactly_once, grid_sweep, sqlite_url

pytest.importorskip("optuna")
pytest.importorskip("ray")


def test_grid_sweep_on_a_local_ray_cluster(tmp_path):
    path = grid_sweep(tmp_path, name="ray")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "neurosim.cli", "sweep", str(path), "--out", str(out),
               "--executor", "ray", "--address", "local", "--workers", "2", "--threads", "1",
               "--heartbeat", "1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 Ray tasks x 1 thread on 1 node" in done.stdout, done.stdout
    assert done.stdout.count(" done: peak_test_accuracy ") == 4, done.stdout
    check_exactly_once(out, sqlite_url(out), "ray", planned=4)
    assert (out / "summary.md").read_text().count("| complete |") == 4
