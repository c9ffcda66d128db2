"""The "feedback_angle" epoch metric (angle between (W_L ... W_1)^T and a protocol's fixed
feedback matrix F) against an independent numpy computation, its 0 / 180 degree edge cases,
its errors, and a short training run that writes angle_F and test_loss to metrics.csv and
plots them.

The protocol here is a stand-in with ``F`` and ``chain`` (no dependence on the PEPITA
protocol's file); everything runs in a few seconds on one CPU core.
"""
from __future__ import annotations

import csv
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from neurosim.errors import ConfigError
from neurosim.metrics import METRICS, FeedbackAngle, MetricContext, chain_product, \
    feedback_angle
from neurosim.protocols import LearningProtocol, StepOutput
from neurosim.training import Trainer

ME = __name__                 # this module, as "module:Class" paths name it


# --------------------------------------------------------------------------- stand-ins
def fake_protocol(weights: dict, F, name: str = "fake") -> SimpleNamespace:
    """An object with what the metric reads: F, chain (objects with .name), net.weights."""
    net = SimpleNamespace(weights=weights)
    chain = [SimpleNamespace(name=k) for k in weights]         # insertion order: W_1 .. W_L
    return SimpleNamespace(name=name, F=F, chain=chain, net=net)


def random_chain(sizes, seed=0, dtype=torch.float64) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {f"w{i + 1}": torch.randn(sizes[i + 1], sizes[i], generator=g, dtype=dtype)
            for i in range(len(sizes) - 1)}


def numpy_angle(weights: dict, F) -> float:
    """Independent reference: M = W_L ... W_1 with numpy's matmul in float64, then the angle
    atan2(|F_perp|, <F, M^T_hat>) of F against the unit matrix M^T / |M|, F_perp the part of F
    orthogonal to it (accurate at every angle, unlike acos of the cosine)."""
    mats = [np.asarray(w, dtype=np.float64) for w in weights.values()]
    product = np.linalg.multi_dot(mats[::-1]) if len(mats) > 1 else mats[0]
    a = product.T / np.linalg.norm(product)
    f = np.asarray(F, dtype=np.float64)
    along = float(np.sum(a * f))
    perp = float(np.linalg.norm(f - along * a))
    return math.degrees(math.atan2(perp, along))


def evaluate(metric: FeedbackAngle, protocol) -> dict:
    metric.reset(MetricContext(protocol.net, protocol))
    return metric.compute()


# --------------------------------------------------------------------------- values
@pytest.mark.parametrize("sizes", [(7, 5), (7, 6, 3), (9, 8, 6, 4)])
def test_angle_matches_numpy(sizes):
    weights = random_chain(sizes, seed=len(sizes))
    F = torch.randn(sizes[0], sizes[-1], generator=torch.Generator().manual_seed(1),
                    dtype=torch.float64)
    protocol = fake_protocol(weights, F)
    expected = numpy_angle(weights, F.numpy())
    metric = METRICS.build("feedback_angle", "test")
    assert isinstance(metric, FeedbackAngle)
    row = evaluate(metric, protocol)
    assert list(row) == ["angle_F"]
    assert row["angle_F"] == pytest.approx(expected, abs=1e-9)
    # and the cosine definition cos = tr(M F) / (|M| |F|) at this generic angle
    product = chain_product(weights, protocol.chain).numpy()
    cos = np.trace(product @ F.numpy()) / (np.linalg.norm(product) * np.linalg.norm(F.numpy()))
    assert row["angle_F"] == pytest.approx(math.degrees(math.acos(cos)), abs=1e-7)


def test_product_order_is_output_side_first():
    weights = random_chain((5, 4, 3), seed=3)
    product = chain_product(weights, [SimpleNamespace(name="w1"), SimpleNamespace(name="w2")])
    assert product.shape == (3, 5)
    assert torch.allclose(product, weights["w2"] @ weights["w1"], atol=1e-12)
    assert torch.equal(chain_product(weights, ["w1", "w2"]), product)    # names work too


@pytest.mark.parametrize("sign, expected", [(1.0, 0.0), (-1.0, 180.0)])
def test_aligned_and_opposite_are_exact(sign, expected):
    weights = random_chain((8, 6, 3), seed=5)
    product = weights["w2"] @ weights["w1"]
    F = sign * 3.7 * product.T                 # (W_2 W_1)^T, scaled: 0 or 180 degrees
    angle = feedback_angle(weights, [SimpleNamespace(name="w1"), SimpleNamespace(name="w2")], F)
    assert angle == pytest.approx(expected, abs=1e-9)
    assert numpy_angle(weights, F.numpy()) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("theta", [1e-7, 1e-4, math.pi / 2, math.pi - 1e-4, math.pi - 1e-7])
def test_tiny_angles_near_0_and_180_are_accurate(theta):
    """F built at a known angle theta from (W_2 W_1)^T: cos(theta) A + sin(theta) P with A
    the unit product and P a unit matrix orthogonal to it (acos of the rounded cosine would
    be off by ~1e-6 degrees here; the metric is not)."""
    weights = random_chain((6, 5, 4), seed=7)
    a = (weights["w2"] @ weights["w1"]).T
    a = a / a.norm()
    p = torch.randn(a.shape, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    p = p - (p * a).sum() * a
    p = p / p.norm()
    F = 0.01 * (math.cos(theta) * a + math.sin(theta) * p)
    angle = feedback_angle(weights, ["w1", "w2"], F)
    assert angle == pytest.approx(math.degrees(theta), rel=1e-6, abs=1e-12)
    assert numpy_angle(weights, F.numpy()) == pytest.approx(math.degrees(theta), rel=1e-6,
                                                             abs=1e-12)


def test_float32_weights_are_measured_in_float64():
    weights64 = random_chain((12, 10, 4), seed=9)
    weights32 = {k: w.float() for k, w in weights64.items()}
    F = torch.randn(12, 4, generator=torch.Generator().manual_seed(2))
    expected = numpy_angle(weights32, F.numpy())        # the float32 values, in float64
    assert feedback_angle(weights32, ["w1", "w2"], F) == pytest.approx(expected, abs=1e-9)


def test_zero_matrix_gives_nan():
    weights = random_chain((4, 3, 2), seed=1)
    assert math.isnan(feedback_angle(weights, ["w1", "w2"], torch.zeros(4, 2)))
    weights["w1"].zero_()
    assert math.isnan(feedback_angle(weights, ["w1", "w2"], torch.ones(4, 2)))


# --------------------------------------------------------------------------- errors
def test_protocol_without_F_is_a_clear_config_error():
    weights = random_chain((4, 3, 2))
    metric = FeedbackAngle()
    for protocol in (SimpleNamespace(name="ep", net=SimpleNamespace(weights=weights)),
                     fake_protocol(weights, None, name="relax")):
        with pytest.raises(ConfigError, match=r"fixed feedback matrix F \(pepita\)") as err:
            metric.reset(MetricContext(protocol.net, protocol))
        assert f'"{protocol.name}"' in str(err.value)
        with pytest.raises(ConfigError, match="fixed feedback matrix F"):
            metric.check_protocol(protocol)


def test_F_of_the_wrong_shape_is_a_config_error():
    weights = random_chain((4, 3, 2))
    protocol = fake_protocol(weights, torch.zeros(2, 4))
    with pytest.raises(ConfigError, match=r"F has shape \(2, 4\).*F must be 4 x 2"):
        FeedbackAngle().check_protocol(protocol)


def test_trainer_refuses_the_metric_for_a_protocol_without_F():
    from pathlib import Path
    text = (Path(__file__).resolve().parents[1] / "models" / "corinfomax_digits.toml").read_text()
    old = 'metrics = ["weight_angle", "correlative_information"]'
    assert text.count(old) == 1
    with pytest.raises(ConfigError) as err:
        Trainer.from_model_text(text.replace(old, 'metrics = ["feedback_angle"]'),
                                progress=False)
    message = str(err.value)
    assert "[training] metrics[0]" in message and "fixed feedback matrix F (pepita)" in message
    assert '"ep"' in message


# --------------------------------------------------------------------------- in a run
class StubFeedback(LearningProtocol):
    """A feed-forward chain with a fixed F (d x C) and a toy rule that pulls W_1 towards the
    direction (F e)^T x, so that the angle moves; inference is one forward sweep."""

    name = "test_stub_feedback"
    phases = ()

    def __init__(self, lr: float = 0.5):
        self.lr = lr

    def setup(self) -> None:
        chain, population = [], self.output
        while population != self.input:
            (q,) = self.net.network.incoming(population)
            chain.append(q)
            population = q.source
        self.chain = chain[::-1]
        d, c = self.net.slots[self.input].size, self.net.slots[self.output].size
        g = torch.Generator().manual_seed(self.seed)
        self.F = 0.05 * torch.randn(d, c, generator=g).to(self.net.dtype)

    def infer(self, x):
        return self.net.feedforward({self.input: x})[0]

    def train_step(self, x, target, generator, lr_scale=1.0, *, epoch=0, step=0):
        state = self.infer(x)
        out = self.net.r_of(state, self.output).clone()
        w1 = self.net.weights[self.chain[0].name]
        w2 = self.net.weights[self.chain[1].name]
        w1.add_(w2.T @ (out - target).T @ x, alpha=-self.lr * lr_scale / len(x))
        return StepOutput(out)


STUB_TEXT = f"""
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
type = "{ME}:StubFeedback"

[training]
epochs = 2
batch_size = 32
seed = 0
threads = 1
metrics = ["feedback_angle"]
"""


def test_run_writes_angle_F_and_test_loss_and_plots_them(tmp_path):
    pytest.importorskip("matplotlib")
    from neurosim.plotting import plot_run
    trainer = Trainer.from_model_text(STUB_TEXT, progress=False)
    protocol = trainer.protocol
    weights = {q.name: trainer.net.weights[q.name] for q in protocol.chain}
    row = trainer.evaluate(trainer.dataset.test_x, trainer.dataset.test_y, "test",
                           trainer.metrics)
    assert row["angle_F"] == pytest.approx(numpy_angle(weights, protocol.F.numpy()), abs=1e-9)
    assert {"test_accuracy", "test_loss"} <= set(row)
    run = tmp_path / "run"
    trainer.fit(run, log=lambda *_: None)
    with open(run / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2
    assert {"train_loss", "test_loss", "angle_F"} <= set(rows[0])
    final = numpy_angle(weights, protocol.F.numpy())
    assert float(rows[-1]["angle_F"]) == pytest.approx(final, rel=1e-5)    # csv: 6 digits
    assert all(0.0 <= float(r["angle_F"]) <= 180.0 and math.isfinite(float(r["test_loss"]))
               for r in rows)
    png = plot_run(run, tmp_path / "training.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
