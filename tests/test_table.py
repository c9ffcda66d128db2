"""`neurosim table`: grouping runs by configuration, mean +- std over seeds, the published
number, CSV / Markdown / plot outputs and clear errors."""
from __future__ import annotations

import csv
import statistics

import pytest

from neurosim.cli import main
from neurosim.errors import ConfigError, NeurosimError
from neurosim.graph import parse_model_text
from neurosim.table import group, make_table, rows

MODEL = '''
[network]
name = "{name}"

[[population]]
name = "x"
type = "input"
size = 4

[[population]]
name = "out"
type = "interneuron"
size = 2
activation = "linear"
leak = 1.0

[[projection]]
name = "w"
source = "x"
target = "out"
init = "xavier_normal"

[protocol]
type = "backprop"
lr = {lr}

[training]
epochs = 3
seed = {seed}
threads = {threads}
{reference}'''

REFERENCE = '''
[reference]
source = "Somebody et al., 2024, Table 2"
test_accuracy = 91.5
'''


def write_run(directory, name, seed, accuracies, lr=0.1, threads=1, reference=""):
    """A run directory with model.toml and metrics.csv (test accuracy per epoch, 2 s each)."""
    directory.mkdir(parents=True)
    (directory / "model.toml").write_text(MODEL.format(name=name, seed=seed, lr=lr,
                                                       threads=threads, reference=reference))
    with open(directory / "metrics.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["epoch", "train_accuracy", "test_accuracy", "seconds"])
        for epoch, accuracy in enumerate(accuracies, 1):
            writer.writerow([epoch, 0.5, accuracy, 2.0])
    return directory


@pytest.fixture
def runs(tmp_path):
    """Three seeds of configuration "a" (with a reference; threads differ, which does not
    count), two of "b" (another learning rate, same network name), one of "c"."""
    a = [[0.80, 0.90, 0.85], [0.82, 0.88, 0.89], [0.70, 0.86, 0.86]]
    for seed, curve in enumerate(a):
        write_run(tmp_path / "sweep" / f"a{seed}", "a", seed, curve, threads=1 + seed,
                  reference=REFERENCE)
    write_run(tmp_path / "sweep" / "b0", "a", 0, [0.5, 0.6, 0.7], lr=0.3)
    write_run(tmp_path / "sweep" / "b1", "a", 1, [0.5, 0.6, 0.5], lr=0.3)
    write_run(tmp_path / "other" / "c", "c", 7, [0.4, 0.3, 0.2])
    return tmp_path, a


def test_groups_runs_by_configuration_and_averages_over_seeds(runs):
    root, a = runs
    configs = group([root / "sweep", root / "other" / "c"])
    assert [c.name for c in configs] == ["a (a)", "a (b)", "c"]
    assert [len(c.runs) for c in configs] == [3, 2, 1]
    table = rows(configs)
    first = table[0]
    finals = [100 * curve[-1] for curve in a]
    peaks = [100 * max(curve) for curve in a]
    assert first["final_test_mean"] == pytest.approx(statistics.fmean(finals))
    assert first["final_test_std"] == pytest.approx(statistics.stdev(finals))
    assert first["peak_test_mean"] == pytest.approx(statistics.fmean(peaks))
    assert first["peak_epoch_mean"] == pytest.approx(statistics.fmean([2, 3, 2]))
    assert first["minutes_mean"] == pytest.approx(6 / 60)
    assert first["seeds"] == "0 1 2"
    assert first["published"] == 91.5 and "Table 2" in first["source"]
    assert table[1]["peak_epoch_mean"] == pytest.approx(statistics.fmean([3, 2]))
    assert table[2]["final_test_std"] is None            # one seed: no spread
    assert table[2]["published"] is None


def test_the_command_writes_markdown_csv_and_plot(runs, capsys):
    root, _ = runs
    out_csv, out_md, out_png = root / "t.csv", root / "t.md", root / "t.png"
    assert main(["table", str(root / "sweep"), "--csv", str(out_csv), "--markdown",
                 str(out_md), "--plot", str(out_png)]) == 0
    printed = capsys.readouterr().out
    assert "| a (a) | 3 | 86.67 ± 2.08 |" in printed
    assert "91.5 (Somebody et al., 2024, Table 2)" in printed
    assert out_md.read_text() in printed
    with open(out_csv, newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [r["configuration"] for r in table] == ["a (a)", "a (b)"]
    assert float(table[0]["final_test_mean"]) == pytest.approx(86.6666666667)
    assert out_png.stat().st_size > 1000


def test_clear_errors(tmp_path):
    with pytest.raises(NeurosimError, match="does not exist"):
        make_table([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(NeurosimError, match="holds no run directory"):
        make_table([tmp_path / "empty"])
    run = write_run(tmp_path / "r", "r", 0, [0.5])
    (run / "metrics.csv").write_text("epoch,train_accuracy,seconds\n1,0.5,1.0\n")
    with pytest.raises(NeurosimError, match="no test_accuracy column"):
        make_table([run])
    assert main(["table", str(tmp_path / "missing")]) != 0


@pytest.mark.parametrize("table,message", [
    ('[reference]\nsource = "x"\ntest_accuracy = 101\n', "percent"),
    ('[reference]\ntest_accuracy = 90\n', "name the source"),
    ('[reference]\nsource = "x"\ntest_accuracy = 90\nyear = 2024\n', "unknown key 'year'"),
    ('[reference]\nsource = 3\ntest_accuracy = 90\n', "source is text"),
])
def test_a_bad_reference_table_is_refused_when_the_model_is_read(table, message):
    with pytest.raises(ConfigError, match=message):
        parse_model_text(MODEL.format(name="m", lr=0.1, seed=0, threads=1, reference=table),
                         "m.toml")


def test_overrides_duplicates_unfinished_and_a_last_epoch_without_accuracy(tmp_path,
                                                                            monkeypatch):
    import h5py
    a = write_run(tmp_path / "a", "n|et", 0, [0.5, 0.55, 0.6])
    b = write_run(tmp_path / "b", "n|et", 0, [0.7, 0.8, float("nan")])
    with h5py.File(b / "run.h5", "w") as fh:              # `neurosim train --seed 4`
        fh.attrs["overrides_json"] = '{"seed": 4, "threads": 2}'
    c = write_run(tmp_path / "c", "n|et", 0, [0.4])        # stopped after 1 of 3 epochs
    with h5py.File(c / "run.h5", "w") as fh:
        fh.attrs["overrides_json"] = '{"seed": 5}'
    monkeypatch.chdir(tmp_path)
    (config,) = group([a, "a", b, c])                      # "a" is a again: counted once
    assert [r.seed for r in config.runs] == [0, 4, 5]
    row = rows([config])[0]
    assert row["n"] == 3 and row["unfinished"] == 1
    # b's last epoch has no accuracy: its final is undefined, not its first epoch's
    assert row["final_test_mean"] == pytest.approx(statistics.fmean([60.0, 40.0]))
    text = make_table([tmp_path])
    assert "| n\\|et | 3 (1 unfinished) |" in text


def test_output_paths_are_checked_before_anything_is_read(tmp_path):
    write_run(tmp_path / "r", "r", 0, [0.5])
    with pytest.raises(NeurosimError, match="--csv .*does not exist"):
        make_table([tmp_path], csv_out=tmp_path / "missing" / "t.csv")
    with pytest.raises(ConfigError, match="--plot"):
        make_table([tmp_path], plot_out=tmp_path / "t.txt")
    assert not (tmp_path / "t.txt").exists()
