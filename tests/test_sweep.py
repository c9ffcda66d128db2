"""`neurosim sweep`: the sweep file and its errors, the TOML writer, and sweeps on SQLite
(a grid with 2 worker processes; random and TPE samplers; the median pruner). Each trial is
a set of ordinary run directories: `neurosim table` reads the sweep directory and
`Trainer.resume` loads them. The worker's races (a trial popped twice, a live worker taken
for dead, a worker killed before its first heartbeat), which errors fail a trial for good,
and signals to the sweep are checked by direct calls into neurosim.sweep.study and .run.
PostgreSQL with SIGKILL and resume: test_sweep_postgres.py; Ray: test_sweep_ray.py."""
from __future__ import annotations

import collections
import json
from pathlib import Path

import pytest

from neurosim.cli import main

try:
    import tomllib
except ModuleNotFoundError:      # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]

# a 64-16-10 backprop network on the embedded digits: an epoch takes a fraction of a second
MODEL = """
[network]
name = "tiny"

[[population]]
name = "x"
type = "input"
size = 64

[[population]]
name = "h1"
type = "pyramidal"
size = 16
leak = 0.0
basal = 1.0
apical = 0.0
activation = "relu"

[[population]]
name = "out"
type = "pyramidal"
size = 10
leak = 0.0
basal = 1.0
apical = 0.0
activation = "softmax"

[[projection]]
name = "w1"
source = "x"
target = "h1"
compartment = "basal"
init = "he_uniform"

[[projection]]
name = "w2"
source = "h1"
target = "out"
compartment = "basal"
init = "he_uniform"

[data]
dataset = "digits"

[protocol]
type = "backprop"
loss = "cross_entropy"
optimizer = "sgd"
lr = 0.1
momentum = 0.9

[training]
epochs = 2
batch_size = 64
seed = 0
threads = 1
"""

GRID = """
[sweep]
model = "tiny.toml"
name = "{name}"
seeds = [0, 1]

[space]
"training.epochs" = [{epochs}]
"training.batch_size" = [{batch}]
"population.h1.size" = [8, 16]
"protocol.lr" = [0.05, 0.1]
"""


def write_sweep(directory: Path, text: str, name: str = "sweep.toml", model: str = MODEL) -> Path:
    """The tiny model file and a sweep file beside it."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tiny.toml").write_text(model)
    path = directory / name
    path.write_text(text)
    return path


def grid_sweep(directory: Path, name="grid", epochs=2, batch=64) -> Path:
    """A 2 x 2 grid (h1 size x learning rate) times seeds 0 and 1."""
    return write_sweep(directory, GRID.format(name=name, epochs=epochs, batch=batch))


def completed_by_configuration(url: str, name: str) -> collections.Counter:
    """How many COMPLETE trials the study holds per configuration (its parameters)."""
    import optuna
    from neurosim.sweep.study import check_storage_url
    study = optuna.load_study(study_name=name, storage=check_storage_url(url))
    return collections.Counter(
        tuple(sorted(t.params.items())) for t in study.get_trials()
        if t.state == optuna.trial.TrialState.COMPLETE)


def check_exactly_once(out: Path, url: str, name: str, planned: int, seeds=(0, 1),
                       epochs: int = 2) -> None:
    """Every planned configuration COMPLETE exactly once in the study; one directory per
    trial, each with one finished run directory per seed."""
    counts = completed_by_configuration(url, name)
    assert len(counts) == planned and set(counts.values()) == {1}, counts
    trials = sorted(p for p in (out / "trials").iterdir() if p.is_dir())
    assert [p.name for p in trials] == [f"{i:04d}" for i in range(planned)]
    for trial in trials:
        assert sorted(p.name for p in trial.glob("seed_*")) == [f"seed_{s}" for s in seeds]
        for run in trial.glob("seed_*"):
            rows = (run / "metrics.csv").read_text().splitlines()[1:]
            assert [int(r.split(",")[0]) for r in rows] == list(range(1, epochs + 1)), run


def sqlite_url(out: Path) -> str:
    return f"sqlite:///{out.resolve() / 'study.db'}"


# ---------------------------------------------------------------------------- the file
def test_spec_grid_and_model_text(tmp_path):
    from neurosim.graph import parse_model_text
    from neurosim.sweep import load_sweep
    spec = load_sweep(write_sweep(tmp_path, """
[sweep]
model = "tiny.toml"
seeds = [3, 1]
[space]
"projection.w1.init" = ["he_uniform", "xavier_uniform"]
"population.1.leak" = [0.0, 0.5]
"protocol.momentum" = [0.0]
"training.eval_batch_size" = [500]
"""))
    assert spec.name == "sweep" and spec.sampler == "grid" and spec.planned == 4
    assert spec.seeds == (3, 1) and spec.objective == "peak_test_accuracy"
    grid = spec.grid()
    assert grid[1] == {"projection.w1.init": "he_uniform", "population.1.leak": 0.5,
                       "protocol.momentum": 0.0, "training.eval_batch_size": 500}
    data = parse_model_text(spec.model_text_for(grid[3], seed=1, header="trial 3"))
    assert data["projection"][0]["init"] == "xavier_uniform"
    assert data["population"][1]["leak"] == 0.5 and data["training"]["seed"] == 1
    assert data["training"]["eval_batch_size"] == 500            # a new key in [training]
    # everything else as in the model file
    original = tomllib.loads(MODEL)
    data["projection"][0]["init"] = "he_uniform"
    data["population"][1]["leak"] = 0.0
    data["training"].update(seed=0)
    del data["training"]["eval_batch_size"]
    data["protocol"]["momentum"] = 0.9
    assert data == original


def test_toml_writer_round_trips_every_model_file():
    from neurosim.sweep.toml_write import dumps
    files = sorted((REPO / "models").glob("*.toml")) + sorted((REPO / "examples").glob("*.toml"))
    assert len(files) > 20
    for path in files:
        data = tomllib.loads(path.read_text())
        assert tomllib.loads(dumps(data)) == data, path
    tricky = {"t": {"a b": "quote \" and \\ and \n", "x": 1e-300, "y": -0.0, "n": [[1, 2], []],
                    "i": {"k": {"deep": True}}}, "arr": [{"name": "p"}, {"name": "q"}]}
    assert tomllib.loads(dumps(tricky)) == tricky


def test_toml_writer_escapes_every_control_character():
    """TOML forbids raw control characters in strings, DEL (U+007F) included, which JSON's
    escaping leaves raw; keys and values, U+0000-U+009F and characters beyond the BMP."""
    from neurosim.sweep.toml_write import dumps
    every = "".join(chr(c) for c in range(0xA0)) + "\U0001F600 \U00010348 \U0010FFFD"
    data = {"t": {every: every, "each": [chr(c) for c in range(0xA0)]},
            "arr": [{"name": every}]}
    text = dumps(data)
    assert tomllib.loads(text) == data
    assert "\x7f" not in text and "\\u007f" in text


def test_example_sweep_files_are_valid():
    from neurosim.sweep import load_sweep
    files = sorted((REPO / "models" / "sweeps").glob("*.toml"))
    assert files
    for path in files:
        spec = load_sweep(path)
        assert spec.planned >= 1 and spec.space


BAD = {
    "unknown table": ('[sweep]\nmodel = "tiny.toml"\n[spaces]\n"protocol.lr" = [0.1]\n',
                      ['unknown table "spaces"', 'Did you mean "space"']),
    "no sweep": ('[space]\n"protocol.lr" = [0.1]\n', ["missing [sweep]"]),
    "no model": ('[sweep]\nname = "x"\n[space]\n"protocol.lr" = [0.1]\n', ["model is the"]),
    "missing model file": ('[sweep]\nmodel = "nope.toml"\n[space]\n"protocol.lr" = [0.1]\n',
                           ["nope.toml does not exist"]),
    "unknown sweep key": ('[sweep]\nmodel = "tiny.toml"\nsampeler = "tpe"\n[space]\n'
                          '"protocol.lr" = [0.1]\n', ['unknown key "sampeler"',
                                                      'Did you mean "sampler"']),
    "bad sampler": ('[sweep]\nmodel = "tiny.toml"\nsampler = "tep"\n[space]\n'
                    '"protocol.lr" = [0.1]\n', ['sampler: "tep" is not one of',
                                                'Did you mean "tpe"']),
    "no space": ('[sweep]\nmodel = "tiny.toml"\n', ["missing [space]"]),
    "empty space": ('[sweep]\nmodel = "tiny.toml"\n[space]\n', ["at least one key"]),
    "unknown table key": ('[sweep]\nmodel = "tiny.toml"\n[space]\n"protocl.lr" = [0.1]\n',
                          ['has no table "protocl"', 'Did you mean "protocol"']),
    "unknown nested key": ('[sweep]\nmodel = "tiny.toml"\n[space]\n'
                           '"protocol.lr.x" = [0.1]\n', ['protocol.lr is a value']),
    "unknown projection": ('[sweep]\nmodel = "tiny.toml"\n[space]\n'
                           '"projection.w1x.init" = ["ones"]\n', ['no element "w1x"',
                                                                 'Did you mean "w1"']),
    "bad new key": ('[sweep]\nmodel = "tiny.toml"\n[space]\n"protocol.lrr" = [0.1]\n',
                    ["first configuration", "lrr"]),
    "bad value": ('[sweep]\nmodel = "tiny.toml"\n[space]\n"protocol.optimizer" = ["sdg"]\n',
                  ["first configuration", "sdg"]),
    "wrong type": ('[sweep]\nmodel = "tiny.toml"\n[space]\n"protocol.lr" = ["fast"]\n',
                   ['the value "fast" is text but the model file has a number']),
    "empty list": ('[sweep]\nmodel = "tiny.toml"\n[space]\n"protocol.lr" = []\n',
                   ["the list of values is empty"]),
    "twice": ('[sweep]\nmodel = "tiny.toml"\n[space]\n"protocol.lr" = [0.1, 0.1]\n',
              ["listed twice"]),
    "equal values": ('[sweep]\nmodel = "tiny.toml"\n[space]\n'
                     '"protocol.momentum" = [0, 0.0]\n',
                     ["the values 0 and 0.0 compare equal", "list only one of them"]),
    "equal to a boolean": ('[sweep]\nmodel = "tiny.toml"\n[space]\n'
                           '"training.eval_batch_size" = [500, 1, true]\n',
                           ["the values 1 and true compare equal"]),
    "objective column": ('[sweep]\nmodel = "tiny.toml"\nobjective = "max:train_angle"\n'
                         '[space]\n"protocol.lr" = [0.1]\n',
                         ["objective 'max:train_angle': the runs write no train_angle column",
                          "test_loss"]),
    "range in grid": ('[sweep]\nmodel = "tiny.toml"\n[space]\n'
                      '"protocol.lr" = { low = 0.01, high = 0.1 }\n',
                      ["a range cannot be a grid axis"]),
    "range order": ('[sweep]\nmodel = "tiny.toml"\nsampler = "random"\ntrials = 2\n[space]\n'
                    '"protocol.lr" = { low = 0.1, high = 0.01 }\n', ["must be below high"]),
    "range key": ('[sweep]\nmodel = "tiny.toml"\nsampler = "random"\ntrials = 2\n[space]\n'
                  '"protocol.lr" = { low = 0.01, hi = 0.1 }\n', ['unknown range key "hi"']),
    "log range": ('[sweep]\nmodel = "tiny.toml"\nsampler = "tpe"\ntrials = 2\n[space]\n'
                  '"protocol.lr" = { low = 0.0, high = 0.1, log = true }\n', ["low > 0"]),
    "range on text": ('[sweep]\nmodel = "tiny.toml"\nsampler = "tpe"\ntrials = 2\n[space]\n'
                      '"protocol.optimizer" = { low = 0, high = 1 }\n', ["has text there"]),
    "no trials": ('[sweep]\nmodel = "tiny.toml"\nsampler = "random"\n[space]\n'
                  '"protocol.lr" = [0.1]\n', ['"random" needs trials = N']),
    "grid trials": ('[sweep]\nmodel = "tiny.toml"\ntrials = 5\n[space]\n'
                    '"protocol.lr" = [0.1, 0.2]\n', ["every point of its grid (2)"]),
    "seed in space": ('[sweep]\nmodel = "tiny.toml"\n[space]\n"training.seed" = [1, 2]\n',
                      ["[sweep] seeds"]),
    "bad seeds": ('[sweep]\nmodel = "tiny.toml"\nseeds = [0, -1]\n[space]\n'
                  '"protocol.lr" = [0.1]\n', ["seeds: a non-empty list"]),
    "bad objective": ('[sweep]\nmodel = "tiny.toml"\nobjective = "best of test"\n[space]\n'
                      '"protocol.lr" = [0.1]\n', ["objective: a metrics.csv column"]),
    "bad direction": ('[sweep]\nmodel = "tiny.toml"\ndirection = "up"\n[space]\n'
                      '"protocol.lr" = [0.1]\n', ['direction: "up" is not one of']),
    "not toml": ('[sweep\n', ["not valid TOML"]),
    "bad name": ('[sweep]\nmodel = "tiny.toml"\nname = "a b"\n[space]\n'
                 '"protocol.lr" = [0.1]\n', ["name: letters, digits"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_sweep_files_are_one_line_errors(tmp_path, capsys, case):
    text, fragments = BAD[case]
    path = write_sweep(tmp_path, text)
    out = tmp_path / "out"
    code = main(["sweep", str(path), "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 2, captured
    err = captured.err
    assert err.startswith("neurosim: error: ") and err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    assert not out.exists()                      # nothing written


def test_bad_command_lines(tmp_path, capsys):
    path = grid_sweep(tmp_path)
    for argv, fragment in (
            (["--storage", "mongodb://x"], "use postgresql://"),
            (["--storage", "mysql://user:pw@host/db"], "mysql databases are not supported"),
            (["--storage", "nonsense"], "not a database URL"),
            (["--address", "auto"], "use it with --executor ray"),
            (["--workers", "0"], "--workers: must be a whole number >= 1")):
        out = tmp_path / "out"
        code = main(["sweep", str(path), "--out", str(out), *argv])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and fragment in err, (argv, err)
        assert not out.exists()
    (tmp_path / "afile").write_text("x")
    assert main(["sweep", str(path), "--out", str(tmp_path / "afile")]) == 2
    assert "is a file" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    assert main(["sweep", str(path), "--out", str(tmp_path / "full")]) == 2
    assert "not empty and holds no sweep" in capsys.readouterr().err


def test_missing_optuna_is_one_clear_line(tmp_path, capsys, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "optuna", None)       # import optuna -> ImportError
    path = grid_sweep(tmp_path)
    assert main(["sweep", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "pip install 'neurosim[sweep]'" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_objective_value():
    from neurosim.errors import NeurosimError
    from neurosim.sweep.trial import objective_value
    columns = {"test_accuracy": [0.5, 0.9, 0.8], "test_loss": [1.0, 0.5, 0.7],
               "peak_test_accuracy": [0.5, 0.9, 0.9]}
    assert objective_value(columns, "final_test_accuracy") == 0.8
    assert objective_value(columns, "peak_test_accuracy") == 0.9
    assert objective_value(columns, "min:test_loss") == 0.5
    assert objective_value(columns, "max:test_accuracy") == 0.9
    assert objective_value(columns, "test_loss") == 0.7
    with pytest.raises(NeurosimError, match="no train_angle column"):
        objective_value(columns, "train_angle")


# ---------------------------------------------------------------------------- running
def test_grid_two_workers_sqlite(tmp_path, capsys):
    from neurosim.training import Trainer
    path = grid_sweep(tmp_path)
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--out", str(out), "--workers", "2", "--threads", "1",
                 "--heartbeat", "1"]) == 0
    printed = capsys.readouterr().out
    assert "2 workers x 1 thread" in printed and "best: trial" in printed
    check_exactly_once(out, sqlite_url(out), "grid", planned=4)
    # the summary: every trial complete, the best one named
    summary = (out / "summary.md").read_text()
    assert summary.count("| complete |") == 4 and "Best: trial" in summary
    rows = (out / "summary.csv").read_text().splitlines()
    assert len(rows) == 5 and rows[0].startswith("trial,state,objective,training.epochs")
    # ordinary run directories: the trial's values and the seed in model.toml; resumable
    run = out / "trials" / "0003" / "seed_1"
    model = tomllib.loads((run / "model.toml").read_text())
    assert model["population"][1]["size"] == 16 and model["protocol"]["lr"] == 0.1
    assert model["training"]["seed"] == 1
    trainer = Trainer.resume(run, progress=False)
    assert trainer.epoch == 2 and trainer.config.seed == 1
    info = json.loads((out / "trials" / "0003" / "trial.json").read_text())
    assert info["params"] == {"training.epochs": 2, "training.batch_size": 64,
                              "population.h1.size": 16, "protocol.lr": 0.1}
    # neurosim table takes the sweep directory: one configuration per trial, 2 seeds each
    assert main(["table", str(out)]) == 0
    table = capsys.readouterr().out
    assert table.count("| 2 |") == 4, table
    assert "0003: training.epochs = 2, training.batch_size = 64, population.h1.size = 16, " \
        "protocol.lr = 0.1" in table
    # run again: nothing left to do, nothing trained again
    before = {p: p.stat().st_mtime_ns for p in out.rglob("run.h5")}
    assert main(["sweep", str(path), "--out", str(out), "--workers", "2"]) == 0
    assert "all 4 trials finished before" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("run.h5")} == before
    check_exactly_once(out, sqlite_url(out), "grid", planned=4)
    # the same directory with another sweep file (or another model file): refused
    other = tmp_path / "other"
    grid_sweep(other, epochs=3)
    assert main(["sweep", str(other / "sweep.toml"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "not from this sweep file" in err and err.count("\n") == 1
    assert {p: p.stat().st_mtime_ns for p in out.rglob("run.h5")} == before


def test_random_and_tpe_samplers_reach_the_planned_count(tmp_path, capsys):
    import optuna
    for sampler, extra in (("random", ""), ("tpe", 'pruner = "median"\n'
                                                   "pruner_startup_trials = 1\n")):
        path = write_sweep(tmp_path / sampler, f"""
[sweep]
model = "tiny.toml"
sampler = "{sampler}"
trials = 3
seeds = [0]
objective = "min:test_loss"
direction = "minimize"
{extra}
[space]
"protocol.lr" = {{ low = 0.01, high = 0.3, log = true }}
"population.h1.size" = {{ low = 4, high = 16, step = 4 }}
"protocol.momentum" = [0.0, 0.9]
"training.epochs" = [2]
""")
        out = tmp_path / sampler / "out"
        assert main(["sweep", str(path), "--out", str(out), "--threads", "1"]) == 0, \
            capsys.readouterr().err
        study = optuna.load_study(study_name="sweep", storage=sqlite_url(out))
        finished = [t for t in study.get_trials() if t.state in (
            optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
        assert len(finished) == 3 and len(study.get_trials()) == 3
        for t in finished:
            assert t.params["population.h1.size"] in (4, 8, 12, 16)
            assert 0.01 <= t.params["protocol.lr"] <= 0.3
            if t.state == optuna.trial.TrialState.COMPLETE:
                assert 0 < t.value < 5
                assert json.loads(json.dumps(t.user_attrs["neurosim:seeds"]))["0"] == t.value
        assert sorted(p.name for p in (out / "trials").iterdir()) == ["0000", "0001", "0002"]
        if sampler == "tpe":       # the pruner got each epoch's mean over seeds
            assert all(sorted(t.intermediate_values) in ([1], [1, 2]) for t in finished)


def test_a_failing_configuration_is_recorded_and_the_sweep_goes_on(tmp_path, capsys):
    path = write_sweep(tmp_path, """
[sweep]
model = "tiny.toml"
seeds = [0]
[space]
"training.epochs" = [1]
"protocol.optimizer" = ["sgd", "adam"]       # adam takes no momentum: its trial fails
""")
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--out", str(out), "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert "trial 0001 failed:" in printed and 'optimizer "adam"' in printed
    summary = (out / "summary.md").read_text()
    assert "| 0000 | complete |" in summary and "| 0001 | failed | - |" in summary
    # finished (its failure is its result): a rerun does not try it again
    assert main(["sweep", str(path), "--out", str(out)]) == 0
    assert "all 2 trials finished before" in capsys.readouterr().out


def test_ensemble_trials_train_their_seeds_together(tmp_path, capsys):
    """[sweep] ensemble = true: each trial's seeds train as one batched ensemble, writing the
    same run directories (one epoch time shared by the seeds of a trial); a trial whose seeds
    stopped at different epochs continues seed by seed."""
    from neurosim.sweep import load_sweep
    from neurosim.sweep.trial import TrialRunner
    models = Path(__file__).resolve().parents[1] / "models"
    text = f"""
[sweep]
model = "{models / 'corinfomax_digits.toml'}"
name = "ens"
seeds = [0, 1]
ensemble = true

[space]
"training.epochs" = [1]
"protocol.beta" = [0.5, 1.0]
"""
    path = tmp_path / "sweep.toml"
    path.write_text(text)
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--out", str(out), "--threads", "1"]) == 0
    check_exactly_once(out, sqlite_url(out), "ens", planned=2, epochs=1)
    for trial in ("0000", "0001"):
        seconds = set()
        for s in (0, 1):
            header, row = (out / "trials" / trial / f"seed_{s}" / "metrics.csv").read_text() \
                .splitlines()[:2]
            seconds.add(row.split(",")[header.split(",").index("train_seconds")])
        assert len(seconds) == 1                  # the ensemble's training time, shared
    spec = load_sweep(path)
    runner = TrialRunner(spec, out, threads=1, log=lambda line: None)
    values = {"training.epochs": 1, "protocol.beta": 0.5}
    assert runner.open_ensemble(0, values) is not None          # resumed as one
    (out / "trials" / "0000" / "seed_1" / "run.h5").unlink()
    for kept in (out / "trials" / "0000" / "seed_1").glob("checkpoints/*"):
        kept.unlink()
    assert runner.open_ensemble(0, values) is None              # mixed: seed by seed


def test_ensemble_sweep_of_a_model_that_cannot_run_as_one_is_refused_first(tmp_path, capsys):
    models = Path(__file__).resolve().parents[1] / "models"
    adaptive = tmp_path / "adaptive.toml"          # an adaptive solver: members cannot step together
    adaptive.write_text((models / "corinfomax_digits.toml").read_text().replace(
        'solver = "gs-euler"', 'solver = "dopri5"'))
    path = tmp_path / "sweep.toml"
    path.write_text(f"""
[sweep]
model = "{adaptive}"
name = "bad"
seeds = [0, 1]
ensemble = true

[space]
"training.epochs" = [1]
""")
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "[sweep] ensemble = true (set it to false" in err and 'solver "dopri5"' in err
    assert err.count("\n") == 1 and not out.exists()


# ---------------------------------------------------------------------------- the worker
SMALL = """
[sweep]
model = "tiny.toml"
name = "small"
seeds = [0]
[space]
"training.epochs" = [1]
"protocol.lr" = [0.05, 0.1]
"""
RESULT = {"value": 0.5, "seeds": {0: 0.5}, "epochs": {0: 1}, "seconds": 0.0}


def small_study(tmp_path: Path, heartbeat: int = 1):
    """A 2-point grid in SQLite as a worker sees it: (spec, study, storage, runner, setup)."""
    import optuna
    from neurosim.sweep import load_sweep
    from neurosim.sweep.study import WorkerSetup, make_pruner, make_storage, open_study
    from neurosim.sweep.trial import TrialRunner
    spec = load_sweep(write_sweep(tmp_path, SMALL))
    out = tmp_path / "out"
    out.mkdir()
    url = sqlite_url(out)
    open_study(spec, url, heartbeat)
    storage = make_storage(url, heartbeat)
    study = optuna.load_study(study_name=spec.name, storage=storage, pruner=make_pruner(spec))
    setup = WorkerSetup(spec, str(out), url, 1, heartbeat, quiet=True, check=False)
    runner = TrialRunner(spec, out, threads=1, log=lambda line: None)
    return spec, study, storage, runner, setup


def run_trial(study, storage, taken, runner, setup, log=print) -> bool:
    import optuna
    from neurosim.sweep.study import _run
    return _run(study, storage, *taken, runner, setup, log, optuna)


def states(study) -> list[str]:
    return [t.state.name for t in study.get_trials()]


def test_a_trial_popped_by_two_workers_at_once_runs_once(tmp_path, monkeypatch):
    """SQLite's WAITING -> RUNNING is not atomic: two workers may both pop one trial. Each
    writes its owner token; the one that wrote last runs it, and the other hands it over
    without an error (before: UpdateFinishedTrialError, exit 2), in every order."""
    from neurosim.sweep.study import _claim, _pop_waiting
    spec, study, storage, runner, setup = small_study(tmp_path)
    runs = []
    monkeypatch.setattr(runner, "run", lambda slot, values, **_: runs.append(slot) or RESULT)
    first = _pop_waiting(study, storage, spec)                       # worker A
    second = _claim(study, storage, spec, first[0]._trial_id)        # worker B, same trial
    assert run_trial(study, storage, first, runner, setup) is False and runs == []
    assert run_trial(study, storage, second, runner, setup) is True and runs == [0]
    # B wrote its token while A ran the trial: B finds it finished
    first = _pop_waiting(study, storage, spec)
    late = []

    def run_while_b_takes_it(slot, values, **_):
        late.append(_claim(study, storage, spec, first[0]._trial_id))
        runs.append(slot)
        return RESULT

    monkeypatch.setattr(runner, "run", run_while_b_takes_it)
    assert run_trial(study, storage, first, runner, setup) is True and runs == [0, 1]
    assert run_trial(study, storage, late[0], runner, setup) is False and runs == [0, 1]
    # ... and a token written after the trial finished takes nothing
    assert _claim(study, storage, spec, first[0]._trial_id) is None
    assert states(study) == ["COMPLETE", "COMPLETE"]


@pytest.mark.parametrize("pruner", ["none", "median"])
def test_a_worker_taken_for_dead_hands_its_trial_over(tmp_path, monkeypatch, pruner):
    """Another worker fails a live trial as stale and queues its retry: the live worker's
    next write (its result, or a pruning report) finds the trial finished; it says so in
    one line and returns False, and the retry completes the slot."""
    import dataclasses
    from optuna.trial import TrialState
    from neurosim.sweep.study import RETRY_OF, _pop_waiting, retry_stale
    spec, study, storage, runner, setup = small_study(tmp_path)
    setup.spec = dataclasses.replace(spec, pruner=pruner)
    taken = _pop_waiting(study, storage, spec)
    trial_id = taken[0]._trial_id

    def taken_for_dead(slot, values, report=None, **_):
        storage.set_trial_state_values(trial_id, state=TrialState.FAIL)   # fail_stale_trials
        retry_stale(study, storage.get_trial(trial_id))
        if report is not None:
            report(0.5, 1)
        return RESULT

    monkeypatch.setattr(runner, "run", taken_for_dead)
    lines = []
    assert run_trial(study, storage, taken, runner, setup, lines.append) is False
    assert len(lines) == 1 and "taken for dead" in lines[0], lines
    monkeypatch.setattr(runner, "run", lambda slot, values, **_: RESULT)
    for _ in range(2):                          # slot 1, then the retry of slot 0
        assert run_trial(study, storage, _pop_waiting(study, storage, spec), runner, setup)
    assert states(study) == ["FAIL", "COMPLETE", "COMPLETE"]
    assert study.get_trials()[2].user_attrs[RETRY_OF] == 0


def test_a_trial_killed_before_its_first_heartbeat_is_retried(tmp_path, monkeypatch):
    """A trial left RUNNING without a heartbeat row (its worker killed between taking it and
    its first heartbeat) is failed after the grace period and queued again, so the sweep
    finishes (before: it waited forever); an interruption in that window fails and queues
    the trial at once."""
    from optuna.trial import TrialState
    from neurosim.sweep import study as sweep_study
    from neurosim.sweep.study import RETRY_OF, SLOT, _pop_waiting, fail_dead_trials, work
    spec, study, storage, runner, setup = small_study(tmp_path)
    first = study.get_trials()[0]
    storage.set_trial_state_values(first._trial_id, state=TrialState.RUNNING)   # killed here
    fail_dead_trials(study, storage, grace=60)
    assert states(study) == ["RUNNING", "WAITING"]                  # within the grace period
    fail_dead_trials(study, storage, grace=0)
    assert states(study) == ["FAIL", "WAITING", "WAITING"]
    assert study.get_trials()[2].user_attrs[SLOT] == 0
    assert study.get_trials()[2].user_attrs[RETRY_OF] == 0

    def interrupted(trial_id):
        raise KeyboardInterrupt

    monkeypatch.setattr(storage, "record_heartbeat", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _pop_waiting(study, storage, spec)
    assert states(study) == ["FAIL", "FAIL", "WAITING", "WAITING"]
    assert study.get_trials()[3].user_attrs[SLOT] == 1
    # a whole worker: the trial without a heartbeat is retried after 3 heartbeats (3 s)
    storage = sweep_study.make_storage(setup.storage, setup.heartbeat)
    waiting = study.get_trials(states=(TrialState.WAITING,))[0]
    storage.set_trial_state_values(waiting._trial_id, state=TrialState.RUNNING)
    monkeypatch.setattr(sweep_study.TrialRunner, "run", lambda *a, **k: RESULT)
    assert work(setup) == 2
    assert states(study).count("COMPLETE") == 2


@pytest.mark.parametrize("case", ["configuration", "objective", "data", "disk", "stray run"])
def test_only_the_configurations_own_errors_fail_a_trial_for_good(tmp_path, monkeypatch, case):
    """A configuration or training error fails the trial for good (neurosim:error, the sweep
    goes on). An objective column the runs lack, a data file missing here, a full disk or a
    run directory of another configuration are not the trial's: it is queued again and the
    worker stops with one clear message."""
    from neurosim.data import DataError
    from neurosim.errors import ConfigError
    from neurosim.sweep.study import ERROR, _pop_waiting
    from neurosim.sweep.trial import RetryableError, objective_value
    spec, study, storage, runner, setup = small_study(tmp_path)

    def fails(slot, values, **_):
        if case == "configuration":
            raise ConfigError('protocol "backprop": lr must be > 0, got -1.')
        if case == "objective":
            objective_value({"test_accuracy": [0.5]}, "train_angle", "trial 0000: ")
        if case == "data":
            raise DataError("MNIST not found in /data. Run `neurosim data fetch mnist`.")
        if case == "disk":
            raise OSError(28, "No space left on device", "/out/trials/0000/seed_0/run.h5")
        raise RetryableError("/out/trials/0000/seed_0 holds a run of another configuration")

    monkeypatch.setattr(runner, "run", fails)
    taken = _pop_waiting(study, storage, spec)
    if case == "configuration":
        assert run_trial(study, storage, taken, runner, setup) is True
        assert states(study) == ["FAIL", "WAITING"]
        assert "lr must be > 0" in study.get_trials()[0].user_attrs[ERROR]
        return
    with pytest.raises(RetryableError) as caught:
        run_trial(study, storage, taken, runner, setup)
    message = str(caught.value)
    assert "\n" not in message
    assert {"objective": "the run has no train_angle column", "data": "MNIST not found",
            "disk": "cannot read or write /out/trials/0000/seed_0/run.h5: No space left",
            "stray run": "holds a run of another configuration"}[case] in message
    if case in ("data", "disk"):
        assert "trial 0000 cannot run on" in message and "It is queued again" in message
    assert states(study) == ["FAIL", "WAITING", "WAITING"]       # the slot retried
    assert ERROR not in study.get_trials()[0].user_attrs


def test_trial_directories_outlive_a_renamed_model_file(tmp_path, capsys):
    """Run directories name the sweep's model file in their header comment; after the model
    file was renamed (same text, same fingerprint) they are still this trial's. A directory
    of another configuration is an error that does not fail the trial for good."""
    from neurosim.sweep import load_sweep
    from neurosim.sweep.trial import RetryableError, TrialRunner
    path = write_sweep(tmp_path, SMALL)
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--out", str(out), "--quiet"]) == 0
    before = load_sweep(path)
    (tmp_path / "tiny.toml").rename(tmp_path / "renamed.toml")
    path.write_text(SMALL.replace("tiny.toml", "renamed.toml"))
    spec = load_sweep(path)
    assert spec.digest == before.digest
    runner = TrialRunner(spec, out, threads=1, log=lambda line: None)
    values = spec.grid()[0]
    assert "tiny.toml" in (out / "trials" / "0000" / "seed_0" / "model.toml").read_text()
    result = runner.run(0, values)
    assert result["epochs"] == {0: 1} and 0 < result["value"] <= 1
    with pytest.raises(RetryableError, match="holds a run of another configuration"):
        runner.run(1, values)


def test_each_worker_checks_the_first_configuration_before_taking_a_trial(tmp_path,
                                                                          monkeypatch):
    """A worker (a process, a Ray task on another machine) builds the first configuration
    itself first: one that cannot (its data missing there) stops without taking a trial."""
    import socket
    from neurosim.data import DataError
    from neurosim.errors import NeurosimError
    from neurosim.sweep import study as sweep_study
    spec, study, storage, runner, setup = small_study(tmp_path)
    setup.check = True

    def no_data(spec):
        raise DataError("MNIST not found in /data. Run `neurosim data fetch mnist`.")

    monkeypatch.setattr(sweep_study, "check_first", no_data)
    with pytest.raises(NeurosimError, match=f"^on {socket.gethostname()}: MNIST not found"):
        sweep_study.work(setup)
    assert states(study) == ["WAITING", "WAITING"]


def test_storage_is_checked_before_anything_is_written(tmp_path, capsys):
    """A study storage that cannot be opened writes nothing; a sweep directory is continued
    only with the storage it recorded (which the error names, password masked)."""
    import socket
    from neurosim.sweep import load_sweep
    from neurosim.sweep.run import _write_state
    pytest.importorskip("psycopg2")
    path = grid_sweep(tmp_path)
    out = tmp_path / "out"
    with socket.socket() as s:                  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = main(["sweep", str(path), "--out", str(out), "--storage",
                 f"postgresql://nobody@127.0.0.1:{port}/none"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot open the study storage" in err and err.count("\n") == 1
    assert not out.exists()
    spec = load_sweep(path)
    _write_state(spec, out, sqlite_url(out))                 # as an earlier run left it
    other = tmp_path / "other.db"
    assert main(["sweep", str(path), "--out", str(out), "--storage", f"sqlite:///{other}"]) == 2
    err = capsys.readouterr().err
    assert f"holds a sweep whose study is in {sqlite_url(out)}" in err and \
        "give another --out" in err and err.count("\n") == 1
    assert not other.exists()
    _write_state(spec, out, "postgresql://user:secret@db:5432/sweeps")
    assert main(["sweep", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "study is in postgresql://user:***@db:5432/sweeps" in err and "secret" not in err
    assert "pass --storage postgresql://user:***@db:5432/sweeps" in err
    assert not (out / "study.db").exists()


def test_a_signal_to_the_sweep_stops_its_worker_processes():
    """SIGTERM (or SIGINT) to the sweep's own process only is passed on to its worker
    processes; those still running after the wait are terminated, none is left behind, and
    the sweep ends as interrupted. A worker takes the first signal as KeyboardInterrupt (it
    then queues its trial again) and ignores the copies that follow."""
    import multiprocessing
    import os
    import signal
    import threading
    import time
    from neurosim.sweep.run import _run_processes
    from neurosim.sweep.study import _interrupt_once
    before = {n: signal.getsignal(n) for n in (signal.SIGINT, signal.SIGTERM)}

    def terminate_when_started():
        deadline = time.monotonic() + 30
        while signal.getsignal(signal.SIGTERM) == before[signal.SIGTERM] and \
                time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(1.0)                          # both workers started
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=terminate_when_started, daemon=True).start()
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        _run_processes([60, 60], target=time.sleep, wait=2)
    assert time.monotonic() - start < 20
    assert multiprocessing.active_children() == []
    assert {n: signal.getsignal(n) for n in before} == before
    try:                                       # a worker's handler
        for number in before:
            signal.signal(number, _interrupt_once)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        os.kill(os.getpid(), signal.SIGINT)      # ignored now
        time.sleep(0.1)
    finally:
        for number, handler in before.items():
            signal.signal(number, handler)


def test_ray_without_an_address_starts_its_own_cluster(monkeypatch):
    """No --address (or "local"): ray.init(address="local"), never attaching by accident
    to a cluster that happens to run on this machine."""
    from neurosim.errors import NeurosimError
    from neurosim.sweep import run
    calls = []

    class NoRay:
        def init(self, **kwargs):
            calls.append(kwargs)
            raise RuntimeError("no Ray here")

    monkeypatch.setattr(run, "_require_ray", NoRay)
    for address in (None, "local"):
        with pytest.raises(NeurosimError, match="cannot start a Ray cluster on this machine"):
            run._run_ray(None, "out", "sqlite:///x.db", 2, 1, address, 1, False, True, print)
    assert [(c["address"], c["num_cpus"]) for c in calls] == [("local", 2), ("local", 2)]
