"""Data-parallel training (neurosim.training.distributed): two gloo processes, each on half of
every batch, give the same weights and metrics as one process on the whole batch (float64)."""
from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from neurosim.errors import ConfigError
from neurosim.training import Trainer
from neurosim.training.distributed import DataParallel, check_batch_linear

MODELS = Path(__file__).resolve().parents[1] / "models"


def model_text(extra_rule: str = "") -> str:
    """COPI-BP on the digits, 1425 training rows (12 held out) in batches of 50 (the last of
    25 rows: shards of 12 and 13), R alone in the first epoch only."""
    text = (MODELS / "copi_bp_digits.toml").read_text()
    text = text.replace('[data]\ndataset = "digits"', '[data]\ndataset = "digits"\nvalidation = 12')
    assert "validation = 12" in text
    text = text.replace("warmup = { epochs = 5,", "warmup = { epochs = 1,")   # W from epoch 2
    if extra_rule:
        text = text.replace('form = "left"', f'form = "left", {extra_rule}')
    return text


def train(text: str, epochs: int, parallel: bool = False):
    trainer = Trainer.from_model_text(text, progress=False, dtype="float64")
    if parallel:
        trainer.protocol = DataParallel(trainer.protocol)
    rows = [trainer.train_epoch() for _ in range(epochs)]
    weights = {k: v.clone() for k, v in trainer.net.weights.items()}
    return weights, rows


def _worker(rank: int, world: int, port: int, out: str, text: str, epochs: int) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        torch.set_num_threads(1)
        weights, rows = train(text, epochs, parallel=True)
        torch.save({"weights": weights, "rows": rows}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one_process_on_the_whole_batch(tmp_path):
    text, epochs = model_text(), 2           # epoch 1: R alone; epoch 2: W and R
    single_weights, single_rows = train(text, epochs)
    context = mp.spawn(_worker, args=(2, free_port(), str(tmp_path), text, epochs), nprocs=2,
                       join=False)
    deadline = time.monotonic() + 300
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the two training processes did not finish within 300 s")
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        for name, w in single_weights.items():
            assert torch.allclose(got["weights"][name], w, rtol=0, atol=1e-12), (rank, name)
        for ours, theirs in zip(got["rows"], single_rows):
            for key in ("train_accuracy", "train_loss", "validation_accuracy",
                        "test_accuracy", "test_loss"):
                assert ours[key] == pytest.approx(theirs[key], rel=0, abs=1e-9), (rank, key)
    moved = single_weights["w1"] - Trainer.from_model_text(
        text, progress=False, dtype="float64").net.weights["w1"]
    assert moved.abs().max() > 1e-3               # the comparison saw real learning


def test_protocols_and_rules_that_are_not_batch_linear_are_refused():
    trainer = Trainer.from_model_text(model_text("power_scaled = true"), progress=False,
                                      dtype="float64")
    with pytest.raises(ConfigError, match='rule "decorrelation".*not batch-linear'):
        check_batch_linear(trainer.protocol)
    adam = Trainer.from_model_text((MODELS / "bp_adam_digits.toml").read_text(),
                                   progress=False, dtype="float64")
    with pytest.raises(ConfigError, match='protocol "backprop" does not declare'):
        check_batch_linear(adam.protocol)
    if not dist.is_initialized():
        with pytest.raises(ConfigError, match="needs torch.distributed initialised"):
            DataParallel(trainer.protocol)


def test_neurosim_train_distributed_under_torchrun_equals_one_process(tmp_path):
    """`torchrun --nproc-per-node 2 -m neurosim.cli train ... --distributed` writes (from its
    first process) the run one process writes."""
    import csv
    import subprocess
    import sys
    model = tmp_path / "copi.toml"
    model.write_text(model_text().replace("epochs = 40", "epochs = 2"))
    common = [str(model), "--dtype", "float64", "--threads", "1", "--quiet"]
    subprocess.run([sys.executable, "-m", "neurosim.cli", "train", *common, "--out",
                    str(tmp_path / "one")], check=True, capture_output=True)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--master-port", str(free_port()), "-m", "neurosim.cli", "train",
                           *common, "--out", str(tmp_path / "two"), "--distributed"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    runs = []
    for name in ("one", "two"):
        with open(tmp_path / name / "metrics.csv", newline="") as fh:
            runs.append(list(csv.DictReader(fh)))
    assert len(runs[0]) == len(runs[1]) == 2
    for a, b in zip(*runs):
        for key in a:
            if "seconds" not in key:
                assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-9, abs=1e-12), key
    one = Trainer.resume(tmp_path / "one", progress=False)
    two = Trainer.resume(tmp_path / "two", progress=False)
    for name, w in one.net.weights.items():
        assert torch.allclose(two.net.weights[name], w, rtol=0, atol=1e-12), name


def test_distributed_without_torchrun_is_a_clear_error(tmp_path, monkeypatch, capsys):
    from neurosim.cli import main
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    model = tmp_path / "copi.toml"
    model.write_text(model_text())
    assert main(["train", str(model), "--out", str(tmp_path / "run"), "--distributed"]) == 2
    assert "start the processes with torchrun" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
