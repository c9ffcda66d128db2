"""benchmarks/copi_speed.py's float64 agreement check on tiny sizes (the model file's depth,
784-500x6-10 shrunk to 12-9-8-7-6-5-4-3), so the benchmark's reference and model text keep
matching neurosim's "copi" protocol."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "copi_speed.py"
SIZES = (12, 9, 8, 7, 6, 5, 4, 3)


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("copi_speed", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def batch(n=6):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, SIZES[0], generator=g), torch.randint(0, SIZES[-1], (n,), generator=g)


def test_model_text_is_the_model_file_at_the_default_sizes(bench):
    assert bench.model_text() == bench.MODEL_FILE.read_text()


def test_reference_and_neurosim_make_the_same_updates(bench):
    x, labels = batch()
    check = bench.agreement(x, labels, sizes=SIZES, batch=6)
    assert check["W"] < 1e-10 and check["R"] < 1e-10, check


def test_the_check_sees_a_difference(bench, monkeypatch):
    """In the R-only warm-up epoch neurosim leaves W alone and the reference does not (R's
    second step then differs too: the layers' inputs do)."""
    monkeypatch.setattr(bench, "TRAIN_EPOCH", 0)
    x, labels = batch()
    check = bench.agreement(x, labels, sizes=SIZES, batch=6)
    assert check["W"] > 0.5 and check["R"] > 1e-6, check


def test_gemm_floors_run(bench):
    for which in ("reference", "neurosim"):
        bench.gemm_floor_step(which, sizes=SIZES)()
