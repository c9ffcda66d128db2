"""`neurosim sweep`: the sweep file and its errors, the TOML writer, and sweeps on SQLite
(a grid with 2 worker processes; random and TPE samplers; the median pruner). Each trial is
a set of ordinary run directories: `neurosim table` reads the sweep directory and
`Trainer.resume` loads them. PostgreSQL with SIGKILL and resume: test_sweep_postgres.py;
Ray: test_sweep_ray.py."""
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
    path = tmp_path / "sweep.toml"
    path.write_text(f"""
[sweep]
model = "{models / 'infomorphic_digits.toml'}"
name = "bad"
seeds = [0, 1]
ensemble = true

[space]
"training.epochs" = [1]
""")
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "[sweep] ensemble = true (set it to false" in err and 'protocol "infomorphic"' in err
    assert err.count("\n") == 1 and not out.exists()
