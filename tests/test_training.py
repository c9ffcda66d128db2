"""Training: user-written plasticity rules, exact resume (in a fresh process), the command
line, learning-rate schedules, model-file errors and the weight-angle metric.

Everything trains CorInfoMax on the embedded 8x8 digits (no download); the whole file runs
in well under a minute on 2 CPU cores.
"""
from __future__ import annotations

import csv
import functools
import importlib.util
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from neurosim.cli import main as cli
from neurosim.errors import ConfigError
from neurosim.graph import parse_model_text
from neurosim.io import load_checkpoint
from neurosim.plasticity import RULES, PlasticityRule, SynapseContext, register_rule
from neurosim.schedules import make_epoch_schedule
from neurosim.training import Trainer, training_config, weight_angle

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "models" / "corinfomax_digits.toml"
DIGITS_TEXT = DIGITS.read_text(encoding="utf-8")
TIMING = {"seconds", "train_seconds"}


# one torch thread (tests/conftest.py); the fresh-process resume below uses the same count

@functools.lru_cache(maxsize=1)
def _example():
    """examples/custom_rule.py as a module (its template expansion helper is reused here)."""
    spec = importlib.util.spec_from_file_location("custom_rule_example",
                                                  ROOT / "examples" / "custom_rule.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def digits_text(make_rule=None, **training) -> str:
    """models/corinfomax_digits.toml, its template expanded when ``make_rule`` replaces the
    ep_contrastive rules, with [training] values replaced by ``training``."""
    if make_rule is None:
        text = DIGITS_TEXT
    else:
        text = _example().model_text_with_rule(DIGITS, make_rule)
    for key, value in training.items():
        lines = [line for line in text.splitlines() if line.startswith(f"{key} = ")]
        assert len(lines) == 1, key
        text = text.replace(lines[0], f"{key} = {value}")
    return text


# --------------------------------------------------------------------------- custom rules
@register_rule
class MomentumEPForTest(PlasticityRule):
    """EP contrastive update with heavy-ball momentum; the velocity is checkpointed state."""

    name = "test_ep_momentum"

    def __init__(self, lr: float, momentum: float = 0.5):
        self.lr, self.momentum = float(lr), float(momentum)
        self.velocity = None

    def update(self, ctx: SynapseContext) -> None:
        W = ctx.weight
        grad = torch.zeros_like(W)
        for phase, sign in (("nudged", 1.0), ("free", -1.0)):
            pre, post = ctx.pre(phase), ctx.post(phase)
            grad += sign * (post - pre @ W.T).T @ pre / ctx.batch_size
        if self.velocity is None:
            self.velocity = torch.zeros_like(W)
        self.velocity.mul_(self.momentum).add_(grad / ctx.beta)
        W.add_(self.velocity, alpha=self.lr * ctx.lr_scale)

    def state_dict(self) -> dict:
        return {} if self.velocity is None else {"velocity": self.velocity.clone()}

    def load_state_dict(self, state) -> None:
        self.velocity = state["velocity"].clone() if "velocity" in state else None


@register_rule
class StraightforwardEP(PlasticityRule):
    """The spec's EP update written literally, phase by phase, with per-phase matrices:
    dW = (lr / beta) [ <e^beta (r_pre^beta)^T> - <e^0 (r_pre^0)^T> ], e = r_post - W r_pre."""

    name = "test_straightforward_ep"

    def __init__(self, lr: float):
        self.lr = float(lr)

    def update(self, ctx: SynapseContext) -> None:
        W = ctx.weight.clone()                        # the pre-update weight
        pre_n, post_n = ctx.pre("nudged"), ctx.post("nudged")
        pre_f, post_f = ctx.pre("free"), ctx.post("free")
        e_n = post_n - pre_n @ W.T
        e_f = post_f - pre_f @ W.T
        outer_n = sum(torch.outer(e_n[b], pre_n[b]) for b in range(ctx.batch_size))
        outer_f = sum(torch.outer(e_f[b], pre_f[b]) for b in range(ctx.batch_size))
        ctx.weight += self.lr * ctx.lr_scale / ctx.beta * (outer_n - outer_f) / ctx.batch_size


@register_rule
class Probe(PlasticityRule):
    """Records what a rule receives (docs/plasticity.md, "What a rule receives")."""

    name = "test_probe"
    seen: dict = {}

    def __init__(self, lr: float):
        self.lr = lr

    def update(self, ctx: SynapseContext) -> None:
        Probe.seen[ctx.projection.name] = dict(
            phases=ctx.phases, beta=ctx.beta, batch=ctx.batch_size, lr_scale=ctx.lr_scale,
            clamped=ctx.pre_clamped, weight=ctx.weight.clone(),
            pre={p: ctx.pre(p).clone() for p in ctx.phases},
            post={p: ctx.post(p).clone() for p in ctx.phases},
            basal={p: ctx.potential(p, "basal").clone() for p in ctx.phases},
            soma={p: ctx.potential(p).clone() for p in ctx.phases},
            stacked=(ctx.stacked_pre().clone(), ctx.stacked_post().clone()))


def test_what_a_rule_receives():
    trainer = Trainer.from_model_text(digits_text(lambda old: {"type": "test_probe", "lr": old["lr"]},
                                  T_free=12, T_nudged=4), dtype="float64", progress=False)
    ds = trainer.dataset
    x, labels = ds.train_x[:8], ds.train_y[:8]
    before = _weights(trainer)
    Probe.seen.clear()
    with torch.inference_mode():
        result = trainer.protocol.train_step(x, trainer._one_hot(labels),
                                             torch.Generator().manual_seed(0), 0.7)
    assert list(Probe.seen) == ["ff1", "fb1", "ff2"]          # declaration order
    for name, seen in Probe.seen.items():
        assert seen["phases"] == ("nudged", "free") and seen["batch"] == 8
        assert seen["beta"] == result.beta and abs(seen["beta"]) == 1.0
        assert seen["lr_scale"] == 0.7 and torch.equal(seen["weight"], before[name])
        assert seen["clamped"] == (name == "ff1")
        pre, post = seen["stacked"]
        assert torch.equal(pre, torch.cat([seen["pre"]["nudged"], seen["pre"]["free"]]))
        assert torch.equal(post, torch.cat([seen["post"]["nudged"], seen["post"]["free"]]))
        for phase in ("nudged", "free"):       # r = clip(u), the activation of A-inf
            assert torch.equal(seen["post"][phase], seen["soma"][phase].clamp(0, 1))
    ff1, ff2 = Probe.seen["ff1"], Probe.seen["ff2"]
    assert torch.equal(ff1["pre"]["nudged"], x) and torch.equal(ff1["pre"]["free"], x)
    assert torch.equal(ff2["post"]["free"], result.free_output)
    assert torch.equal(ff2["pre"]["free"], ff1["post"]["free"])              # r_h1
    for phase in ("nudged", "free"):       # out's basal dendrite: v_B = W_ff2 r_h1
        assert torch.allclose(ff2["basal"][phase], ff2["pre"][phase] @ before["ff2"].T,
                              rtol=0, atol=1e-12)
    assert not torch.equal(ff2["post"]["nudged"], ff2["post"]["free"])    # the nudge acted


def _weights(trainer: Trainer) -> dict:
    return {k: v.clone() for k, v in trainer.net.weights.items()}


def test_training_with_custom_rule_learns_and_its_state_survives_resume(tmp_path):
    text = digits_text(lambda old: {"type": "test_ep_momentum", "lr": old["lr"] * 0.5,
                                    "momentum": 0.5})
    assert "test_ep_momentum" in text and "ep_contrastive" not in text
    a = Trainer.from_model_text(text, progress=False)
    assert [type(r) for r in a.network.projection("ff1").rules] == [MomentumEPForTest]
    a.fit(tmp_path / "a", epochs=2, log=None)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    a.fit(tmp_path / "a", epochs=3, log=None)
    assert a.history.columns["test_accuracy"][-1] > 0.5     # chance is 0.1
    assert a.history.columns["test_accuracy"][-1] > a.history.columns["test_accuracy"][0]

    # the velocities went through run.h5 and came back into the rebuilt rules
    saved = load_checkpoint(tmp_path / "b" / "run.h5", kind="training").payload["rules"]
    assert sorted(saved) == ["fb1.0", "ff1.0", "ff2.0"]
    b = Trainer.resume(tmp_path / "b", progress=False)
    for key, state in saved.items():
        proj, index = key.split(".")
        rule = b.network.projection(proj).rules[int(index)]
        assert isinstance(rule, MomentumEPForTest)
        assert torch.equal(rule.velocity, state["velocity"]) and rule.velocity.abs().max() > 0
    # ... so that continuing from the checkpoint is the uninterrupted run, bit for bit
    b.fit(tmp_path / "b", epochs=3, log=None)
    for name, w in a.net.weights.items():
        assert torch.equal(w, b.net.weights[name]), name
    for key in ("ff1.0", "fb1.0", "ff2.0"):
        proj, index = key.split(".")
        assert torch.equal(a.network.projection(proj).rules[0].velocity,
                           b.network.projection(proj).rules[0].velocity)


def test_example_script_trains_with_the_import_path_rule(tmp_path, capsys):
    run = tmp_path / "momentum"
    _example().main(["--epochs", "1", "--out", str(run)])
    assert "MomentumEP(lr=2.0, momentum=0.5, weight_decay=0.0001)" in capsys.readouterr().out
    assert 'type = "momentum_rule:MomentumEP"' in (run / "model.toml").read_text()
    ckpt = load_checkpoint(run / "run.h5", kind="training")
    assert ckpt.payload["rules"]["ff1.0"]["velocity"].shape == (300, 64)
    assert float(ckpt.payload["metrics"]["test_accuracy"][0]) > 0.3


@pytest.mark.parametrize("beta", [1.0, -0.5])
def test_straightforward_ep_rule_equals_builtin_ep_contrastive(beta):
    common = dict(dtype="float64", random_sign=False, beta=beta, T_free=12, T_nudged=6)
    builtin = Trainer.from_model_text(digits_text(lambda old: old), progress=False, **common)
    literal = Trainer.from_model_text(digits_text(lambda old: {**old, "type": "test_straightforward_ep"}),
                      progress=False, **common)
    assert isinstance(literal.network.projection("ff2").rules[0], StraightforwardEP)
    before = _weights(builtin)
    for name, w in before.items():                  # same seed, same initial weights
        assert torch.equal(w, literal.net.weights[name])
    ds = builtin.dataset
    x, labels = ds.train_x[:20], ds.train_y[:20]
    for trainer in (builtin, literal):
        with torch.inference_mode():
            trainer.protocol.train_step(x, trainer._one_hot(labels), torch.Generator(), 0.9)
    for name in ("ff1", "fb1", "ff2"):              # ff1: clamped input (shortcut path)
        w_builtin, w_literal = builtin.net.weights[name], literal.net.weights[name]
        assert (w_builtin - before[name]).abs().max() > 1e-4, name
        assert (w_builtin - w_literal).abs().max() < 1e-10, name
    for name in ("lat1", "lat2"):                   # untouched rules run identically
        assert torch.equal(builtin.net.weights[name], literal.net.weights[name])


# --------------------------------------------------------------------------- exact resume
FAST = dict(T_free=12, T_nudged=4)


def _csv_columns(path: Path) -> dict[str, list[str]]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {k: [r[k] for r in rows] for k in rows[0]}


def test_resume_in_a_fresh_process_is_bit_identical(tmp_path):
    text = digits_text(**FAST)
    straight = Trainer.from_model_text(text, progress=False)
    straight.fit(tmp_path / "straight", epochs=2, log=None)

    Trainer.from_model_text(text, progress=False).fit(tmp_path / "split", epochs=1, log=None)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "neurosim.cli", "resume",
                           str(tmp_path / "split"), "--epochs", "2", "--quiet"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "epoch 2:" in done.stdout

    a = load_checkpoint(tmp_path / "straight" / "run.h5", kind="training")
    b = load_checkpoint(tmp_path / "split" / "run.h5", kind="training")
    assert a.config_text == b.config_text == text
    steps = 2 * math.ceil(1437 / 20)                   # 1,437 training digits, batches of 20
    assert a.payload["progress"] == b.payload["progress"] == {"epoch": 2, "steps": steps}
    assert sorted(a.payload["network"]) == sorted(b.payload["network"])
    for name, w in a.payload["network"].items():
        assert torch.equal(w, b.payload["network"][name]), name
    assert torch.equal(a.payload["rng"]["generators"]["trainer"],
                       b.payload["rng"]["generators"]["trainer"])
    metrics_a, metrics_b = a.payload["metrics"], b.payload["metrics"]
    assert list(metrics_a) == list(metrics_b)
    for key in set(metrics_a) - TIMING:
        assert torch.equal(metrics_a[key], metrics_b[key]), key
    csv_a = _csv_columns(tmp_path / "straight" / "metrics.csv")
    csv_b = _csv_columns(tmp_path / "split" / "metrics.csv")
    assert list(csv_a) == list(csv_b) and len(csv_a["epoch"]) == 2
    assert {k: v for k, v in csv_a.items() if k not in TIMING} == \
        {k: v for k, v in csv_b.items() if k not in TIMING}
    assert (tmp_path / "split" / "model.toml").read_text(encoding="utf-8") == text


# --------------------------------------------------------------------------- command line
def test_cli_train_refuse_resume_plot_inspect(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli(["train", str(DIGITS), "--out", str(run), "--epochs", "1", "--quiet"]) == 0
    header = (run / "metrics.csv").read_text().splitlines()[0]
    assert header.startswith("epoch,train_accuracy,test_accuracy")
    assert {"train_loss", "test_loss", "angle_ff2_fb1", "corrinfo_h1", "corrinfo_out",
            "lr_scale", "seconds"} <= set(header.split(","))
    assert (run / "run.h5").is_file()
    assert (run / "model.toml").read_text(encoding="utf-8") == DIGITS_TEXT
    capsys.readouterr()

    stamp = (run / "run.h5").stat().st_mtime_ns
    assert cli(["train", str(DIGITS), "--out", str(run), "--epochs", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "neurosim resume" in err and "--force" in err
    assert err.startswith("neurosim: error:") and "Traceback" not in err
    assert (run / "run.h5").stat().st_mtime_ns == stamp          # nothing was touched

    assert cli(["resume", str(run), "--epochs", "2", "--quiet"]) == 0
    rows = (run / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[1].startswith("1,") and rows[2].startswith("2,")
    assert math.isclose(float(_csv_columns(run / "metrics.csv")["lr_scale"][1]), 0.95)
    capsys.readouterr()
    assert cli(["resume", str(run), "--epochs", "2", "--quiet"]) == 0     # nothing to do
    assert "already has 2 epochs" in capsys.readouterr().out

    assert cli(["plot", str(run)]) == 0
    png = run / "training.png"
    assert str(png) in capsys.readouterr().out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert cli(["inspect", str(run / "run.h5")]) == 0
    out = capsys.readouterr().out
    for group in ("network/", "rng/", "progress/", "metrics/", "options/", "config_text"):
        assert group in out, group
    assert "ff1  tensor float32 (300, 64)" in out and "@kind='training'" in out


def test_cli_reports_model_errors_without_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text(DIGITS_TEXT.replace('template = "corinfomax"', 'template = "corinfomx"'))
    assert cli(["train", str(bad), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert 'unknown template "corinfomx"' in err and 'Did you mean "corinfomax"' in err
    assert not (tmp_path / "run").exists()


def test_failed_start_leaves_no_stale_model_file(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text(DIGITS_TEXT.replace("sizes = [64, 300, 10]", "sizes = [60, 50, 10]"))
    run = tmp_path / "run"
    assert cli(["train", str(bad), "--out", str(run), "--epochs", "1", "--quiet"]) == 2
    assert "64 inputs" in capsys.readouterr().err
    assert not run.exists()
    # an earlier start's model.toml never stays next to another run's weights
    run.mkdir()
    (run / "model.toml").write_text("# something else\n")
    Trainer.from_model_text(digits_text(**FAST), progress=False).fit(run, epochs=1, log=None)
    assert (run / "model.toml").read_text() == digits_text(**FAST)


# --------------------------------------------------------------------------- schedules
def test_lr_schedule_two_segments():
    schedule = make_epoch_schedule({"type": "piecewise_exponential",
                                    "segments": [[0, 0.95], [15, 0.9]]}, "test")
    for epoch in range(40):
        expected = 0.95 ** epoch if epoch < 15 else 0.9 ** epoch
        assert schedule(epoch) == expected, epoch
    assert schedule(0) == 1.0
    assert schedule(15) < schedule(14) * 0.5          # the published jump at E1
    assert make_epoch_schedule(None, "test")(7) == 1.0
    assert make_epoch_schedule({"type": "constant"}, "test")(7) == 1.0


def test_lr_schedule_fashion_mnist_three_segments():
    path = ROOT / "models" / "corinfomax_ainf_fashion_mnist.toml"
    config = training_config(parse_model_text(path.read_text(), str(path)), str(path))
    schedule = config.lr_schedule
    assert schedule.segments == ((0, 0.95), (20, 0.9), (25, 0.8))
    for epoch in range(50):
        factor = 0.95 if epoch < 20 else 0.9 if epoch < 25 else 0.8
        assert schedule(epoch) == factor ** epoch, epoch


@pytest.mark.parametrize("segments,match", [
    ([[1, 0.9]], "must start at epoch 0"),
    ([[0, 0.9], [0, 0.8]], "increase"),
    ([0.9], "pairs"),
])
def test_lr_schedule_errors(segments, match):
    with pytest.raises(ConfigError, match=match):
        make_epoch_schedule({"segments": segments}, "model [training] lr_schedule")


# --------------------------------------------------------------------------- user errors
def _raises(text: str, *fragments: str, fit_dir=None) -> str:
    with pytest.raises(ConfigError) as info:
        trainer = Trainer.from_model_text(text, where="m.toml", progress=False)
        if fit_dir is not None:
            trainer.fit(fit_dir, epochs=1, log=None)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


def test_unknown_template():
    _raises(DIGITS_TEXT.replace('"corinfomax"', '"corinfomx"'), "m.toml [model] template",
            'unknown template "corinfomx"', 'Did you mean "corinfomax"', "Available: corinfomax")


def test_unknown_model_key_with_hint():
    _raises(DIGITS_TEXT.replace("lam = 0.99999", "lamda = 0.99999"), "m.toml [model]",
            'unknown key "lamda"', 'Did you mean "lam"', "Valid keys:")


def test_unknown_training_key_with_hint():
    _raises(DIGITS_TEXT.replace("epochs = 40", "epoch = 40"), "m.toml [training]",
            'unknown key "epoch"', 'Did you mean "epochs"')


def test_unknown_rule_type_with_hint():
    text = digits_text(lambda old: {**old, "type": "ep_contrastiv"})
    _raises(text, '"ff1" rules[0]', 'unknown rule type "ep_contrastiv"',
            'Did you mean "ep_contrastive"', "module:ClassName")


def test_rule_with_unknown_parameter():
    text = digits_text(lambda old: {"type": "ep_contrastive", "learning_rate": old["lr"]})
    _raises(text, '"ff1" rules[0]', 'rule "ep_contrastive" has no parameter "learning_rate"',
            "Parameters: lr")
    text = digits_text(lambda old: {"type": "test_ep_momentum", "lr": 0.1, "momentun": 0.5})
    _raises(text, 'has no parameter "momentun"', 'Did you mean "momentum"')


def test_rule_import_path_that_does_not_exist():
    text = digits_text(lambda old: {"type": "no_such_module:Rule", "lr": 0.1})
    _raises(text, 'cannot import rule "no_such_module:Rule"')


def test_dataset_and_network_sizes_disagree(tmp_path):
    text = DIGITS_TEXT.replace("sizes = [64, 300, 10]", "sizes = [60, 50, 10]")
    _raises(text, 'dataset "digits" has 64 inputs and 10 classes', 'input "x" has 60',
            "fix sizes", fit_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_missing_data_table():
    text = DIGITS_TEXT.replace('[data]\ndataset = "digits"\n', "")
    assert "[data]" not in text
    _raises(text, "m.toml: missing [data] table", 'dataset = "digits"')


# --------------------------------------------------------------------------- metrics
def test_weight_angle():
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        a = torch.randn(20, 30, generator=g)
        assert weight_angle(a, a) == 0.0
        assert weight_angle(a, 2 * a) == 0.0             # scale-free
        assert weight_angle(a, -a) == 180.0
    assert weight_angle(torch.eye(3), torch.tensor([[0., 1, 0], [-1, 0, 0], [0, 0, 0]])) == 90.0
    q, _ = torch.linalg.qr(torch.randn(8, 8, dtype=torch.float64, generator=g))
    assert weight_angle(q[:, :4], q[:, 4:]) == pytest.approx(90.0, abs=1e-12)
    a, b = torch.randn(5, 6, generator=g), torch.randn(5, 6, generator=g)
    cos = float((a.double() * b.double()).sum() / (a.double().norm() * b.double().norm()))
    assert weight_angle(a, b) == pytest.approx(math.degrees(math.acos(cos)), abs=1e-9)


def test_registered_rules_are_listed():
    assert {"ep_contrastive", "corinfomax_lateral", "test_ep_momentum"} <= set(RULES)


def test_template_rule_override_fills_learning_rates():
    from neurosim.models import corinfomax_graph
    graph = corinfomax_graph([64, 20, 10], mu_ff=[1.0, 0.7], mu_fb=[0.15],
                             ff_rule={"type": "test_ep_momentum", "momentum": 0.5})
    rules = {p["name"]: p["rules"] for p in graph["projection"] if p.get("rules")}
    assert rules["ff1"] == [{"type": "test_ep_momentum", "momentum": 0.5, "lr": 1.0}]
    assert rules["ff2"][0]["lr"] == 0.7
    assert rules["fb1"] == [{"type": "ep_contrastive", "lr": 0.15}]
    with pytest.raises(ConfigError, match='unknown rule type "ep_contrastiv".*Did you mean'):
        corinfomax_graph([64, 20, 10], fb_rule={"type": "ep_contrastiv"})


# --------------------------------------------------------------------------- correlative information
def test_correlative_information_matches_an_independent_computation():
    """corrinfo_<layer> = log det(<r r^T> + eps I) over the test set's free-phase activities,
    recomputed here in numpy from a free phase run sample by sample."""
    import numpy as np
    trainer = Trainer.from_model_text(digits_text(epochs=1), progress=False)
    row = trainer.train_epoch()
    ds, net = trainer.dataset, trainer.net
    layers = ["h1", "out"]                 # the pyramidal populations
    activities = {layer: [] for layer in layers}
    with torch.inference_mode():
        for i in range(len(ds.test_x)):
            state = trainer.protocol.relax(ds.test_x[i:i + 1])
            for layer in activities:
                activities[layer].append(net.r_of(state, layer)[0].double().numpy().copy())
    for layer, rows in activities.items():
        r = np.stack(rows)
        moment = r.T @ r / len(r) + 1e-3 * np.eye(r.shape[1])
        sign, logdet = np.linalg.slogdet(moment)
        assert sign == 1
        assert math.isclose(row[f"corrinfo_{layer}"], logdet, rel_tol=1e-4), layer
    # it measures something: well above the floor of 300 silent neurons, 300 log(eps)
    assert row["corrinfo_h1"] > 300 * math.log(1e-3) + 100
    text = digits_text(epochs=1, metrics='["weight_angle"]')
    off = Trainer.from_model_text(text, progress=False)
    assert not any(k.startswith("corrinfo_") for k in off.train_epoch())


@pytest.mark.parametrize("value, message", [
    ("0", "eps must be a positive number"),
    ('"small"', "eps must be a positive number"),
])
def test_correlative_information_settings_are_checked(value, message):
    text = digits_text(metrics=f'[{{ type = "correlative_information", eps = {value} }}]')
    _raises(text, "m.toml [training] metrics[0]", message)
    text = digits_text(metrics='["correlative_informaton"]')
    _raises(text, 'unknown metric "correlative_informaton"', 'Did you mean "correlative_information"')


def test_legacy_model_files_keep_ep_settings_in_training():
    """A model file written before [protocol] existed still trains the same run."""
    head, rest = DIGITS_TEXT.split("[protocol]\n")
    block, training = rest.split("\n\n", 1)
    settings = [line for line in block.splitlines() if not line.startswith("type =")]
    legacy = head + training.replace('metrics = ["weight_angle", "correlative_information"]\n',
                                     "\n".join(settings) + "\n")
    assert "[protocol]" not in legacy and "T_free = 30" in legacy
    data = parse_model_text(legacy, "legacy")
    assert "T_free" in data["training"]
    old = Trainer.from_model_text(legacy.replace("epochs = 40", "epochs = 1"), progress=False)
    new = Trainer.from_model_text(digits_text(epochs=1), progress=False)
    assert old.protocol.config() == new.protocol.config()
    assert [type(m) for m in old.metrics] == [type(m) for m in new.metrics]
    with pytest.raises(ConfigError, match="protocol settings belong in the \\[protocol\\] table"):
        Trainer.from_model_text(DIGITS_TEXT.replace("threads = 1", "threads = 1\nT_free = 3"),
                                progress=False)
