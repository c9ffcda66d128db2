"""`neurosim sweep` with its study in a real PostgreSQL server on loopback: 2 workers,
the whole sweep killed with SIGKILL mid-way, then started again with the same command.
Every planned trial completes exactly once, and the trial that was running when the sweep
died continues from its checkpoints (the epochs it had finished are not trained again).

The server is a throwaway cluster in a temporary directory (initdb, pg_ctl on a free port),
run as the ``postgres`` user when the tests run as root (PostgreSQL refuses root). Without
the server binaries (Debian: apt-get install postgresql) the test is skipped, unless
NEUROSIM_REQUIRE_POSTGRES=1 (set by .ci/run, which installs them) makes that a failure."""
from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from neurosim.sweep.study import check_storage_url
from test_sweep import check_exactly_once, completed_by_configuration, grid_sweep

pytest.importorskip("optuna")
pytest.importorskip("psycopg2")


def _server_binaries() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    which = shutil.which("pg_ctl")
    return Path(which).parent if which else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    """postgresql://postgres@127.0.0.1:PORT/sweep on a throwaway cluster."""
    bin_dir = _server_binaries()
    if bin_dir is None:
        message = "PostgreSQL server binaries not found (apt-get install postgresql)"
        if os.environ.get("NEUROSIM_REQUIRE_POSTGRES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    as_user: list[str] = []
    root = tempfile.mkdtemp(prefix="neurosim-pg-")
    if os.geteuid() == 0:                      # the server refuses to run as root
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres")
    data, log, port = f"{root}/data", f"{root}/server.log", _free_port()

    def run(*command):
        subprocess.run([*as_user, *map(str, command)], check=True, capture_output=True,
                       timeout=120, cwd=root)

    try:
        run(bin_dir / "initdb", "-D", data, "-A", "trust", "-U", "postgres", "--no-sync")
        run(bin_dir / "pg_ctl", "-D", data, "-l", log, "-w", "-t", "60", "-o",
            f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
        run(bin_dir / "createdb", "-h", "127.0.0.1", "-p", port, "-U", "postgres", "sweep")
    except subprocess.CalledProcessError as err:
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"could not start PostgreSQL: {err.stderr.decode(errors='replace')}")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/sweep"
    finally:
        subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", data, "-m", "immediate",
                        "stop"], capture_output=True, timeout=60, cwd=root)
        shutil.rmtree(root, ignore_errors=True)


def _metrics(out: Path) -> dict:
    """{run directory: metrics.csv lines} for every run started so far."""
    found = {}
    for path in out.glob("trials/*/seed_*/metrics.csv"):
        try:
            found[path.parent] = path.read_text().splitlines()
        except FileNotFoundError:
            continue
    return found


def test_killed_sweep_resumes_every_trial_exactly_once(tmp_path, postgres_url):
    import optuna
    epochs = 4
    # batch size 1: an epoch takes about a second, so the sweep can be killed mid-trial
    path = grid_sweep(tmp_path, name="killed", epochs=epochs, batch=1)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "neurosim.cli", "sweep", str(path), "--out", str(out),
               "--storage", postgres_url, "--workers", "2", "--threads", "1",
               "--heartbeat", "1"]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             start_new_session=True, text=True)
    # wait until one trial is COMPLETE and a seed of another has a checkpoint but is
    # unfinished, then kill the whole process group (the command and its workers)
    deadline, interrupted = time.monotonic() + 240, {}
    try:
        while time.monotonic() < deadline:
            assert first.poll() is None, first.communicate()[0]
            done = sum(completed_by_configuration(postgres_url, "killed").values()) \
                if (out / "trials").exists() else 0
            runs = _metrics(out)
            interrupted = {run: lines for run, lines in runs.items()
                           if 1 <= len(lines) - 1 < epochs and (run / "run.h5").exists()}
            if done >= 1 and interrupted:
                break
            time.sleep(0.1)
        else:
            pytest.fail("the sweep never had a finished trial and a running one at once")
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    before = _metrics(out)                     # what the runs had when they died
    assert all(before[run][:len(lines)] == lines for run, lines in interrupted.items())
    study = optuna.load_study(study_name="killed", storage=check_storage_url(postgres_url))
    assert any(t.state == optuna.trial.TrialState.RUNNING for t in study.get_trials())

    second = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    check_exactly_once(out, postgres_url, "killed", planned=4, epochs=epochs)
    # the interrupted runs continued from their checkpoints: the rows of the epochs they
    # had finished are unchanged (a fresh start would have measured new times), and the
    # retry said so
    after = _metrics(out)
    for run, lines in before.items():
        assert after[run][:len(lines)] == lines, (run, lines, after[run])
    assert any(f"{run.name} continues from its checkpoint at epoch" in second.stdout
               for run in interrupted), second.stdout
    # the killed trials were failed for lack of heartbeats and retried under their slots
    study = optuna.load_study(study_name="killed", storage=check_storage_url(postgres_url))
    retried = [t for t in study.get_trials() if "neurosim:retry_of" in t.user_attrs]
    assert retried and all(t.state == optuna.trial.TrialState.COMPLETE for t in retried)
    assert len(list((out / "trials").iterdir())) == 4
