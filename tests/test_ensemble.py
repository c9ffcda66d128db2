"""Seed ensembles (neurosim.training.ensemble): M members trained as one batched network give
each member's own separate run (float64: weights and every metric to rounding), write
ordinary run directories, resume exactly, and refuse what they cannot run."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from neurosim.errors import ConfigError, NeurosimError
from neurosim.plasticity import PlasticityRule
from neurosim.training import Trainer
from neurosim.training.ensemble import Ensemble, member_dir, summary_line

MODELS = Path(__file__).resolve().parents[1] / "models"
TEXT = (MODELS / "corinfomax_digits.toml").read_text()
SEEDS = [0, 1, 2]


def _columns(row):
    return {k: v for k, v in row.items() if "seconds" not in k}


def _compare(separate: Trainer, member: Trainer, tol: float = 1e-10) -> None:
    """Equal up to float64 rounding: the batched products sum in another order than the
    separate runs' (differences of ~1e-15 per product grow to ~1e-11 over 2 epochs)."""
    for name, w in separate.net.weights.items():
        scale = max(1.0, float(w.abs().max()))
        assert float((member.net.weights[name] - w).abs().max()) <= tol * scale, name
    for name, b in separate.net.biases.items():
        bound = tol * max(1.0, float(b.abs().max()))
        assert float((member.net.biases[name] - b).abs().max()) <= bound
    rows_a, rows_b = list(separate.history.rows()), list(member.history.rows())
    assert len(rows_a) == len(rows_b)
    for a, b in zip(rows_a, rows_b):
        a, b = _columns(a), _columns(b)
        assert a.keys() == b.keys()
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-9, abs=1e-9), key
    assert torch.equal(separate.generator.get_state(), member.generator.get_state())
    assert separate.steps == member.steps



def _ensemble_and_separate(text: str, seeds, epochs: int, out, **kwargs):
    """An ensemble of ``seeds`` trained ``epochs`` into ``out`` and the same seeds trained
    one by one (float64)."""
    kwargs = dict(progress=False, base_dir=MODELS, dtype="float64", **kwargs)
    ensemble = Ensemble.from_model_text(text, seeds, epochs=epochs, **kwargs)
    ensemble.fit(out, log=None)
    separate = []
    for seed in seeds:
        trainer = Trainer.from_model_text(text, seed=seed, epochs=epochs, **kwargs)
        for _ in range(epochs):
            trainer.train_epoch()
        separate.append(trainer)
    return ensemble, separate


def _check_resume_is_exact(text: str, whole: Ensemble, out) -> None:
    """One epoch, a resume to ``whole``'s epochs: the same weights bit for bit."""
    part = Ensemble.from_model_text(text, whole.seeds, epochs=1, progress=False,
                                    base_dir=MODELS, dtype="float64")
    part.fit(out, log=None)
    resumed = Ensemble.resume(out, progress=False, epochs=whole.epoch)
    resumed.fit(out, log=None)
    for a, b in zip(whole.members, resumed.members):
        for name in a.net.weights:
            assert torch.equal(a.net.weights[name], b.net.weights[name]), name

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Three members (seeds 0, 1, 2) for 2 epochs, float64, as an ensemble and separately."""
    out = tmp_path_factory.mktemp("ensemble")
    ensemble = Ensemble.from_model_text(TEXT, SEEDS, progress=False, base_dir=MODELS,
                                        epochs=2, dtype="float64")
    lines = []
    ensemble.fit(out, log=lines.append)
    separate = []
    for seed in SEEDS:
        trainer = Trainer.from_model_text(TEXT, progress=False, base_dir=MODELS, epochs=2,
                                          dtype="float64", seed=seed)
        trainer.fit(out.parent / f"separate_{out.name}_{seed}", log=None)
        separate.append(trainer)
    return ensemble, separate, out, lines


def test_three_members_equal_three_separate_runs(trained):
    ensemble, separate, _, _ = trained
    for trainer, member in zip(separate, ensemble.members):
        _compare(trainer, member)
    # the members really differ (different seeds), so the check above can fail
    first, second = (m.net.weights["ff1"] for m in ensemble.members[:2])
    assert float((first - second).abs().max()) > 1e-3


def test_members_write_ordinary_run_directories(trained):
    ensemble, separate, out, lines = trained
    assert len(lines) == 2 and lines[-1].startswith("epoch 2 (3 members)  test_accuracy")
    for seed, trainer in zip(SEEDS, separate):
        directory = member_dir(out, seed)
        assert (directory / "model.toml").read_text() == TEXT
        assert (directory / "metrics.csv").is_file()
        resumed = Trainer.resume(directory, progress=False)
        assert resumed.epoch == 2 and resumed.config.seed == seed
        for name, w in trainer.net.weights.items():
            assert torch.allclose(resumed.net.weights[name], w, rtol=0, atol=1e-10)


def test_resume_continues_exactly(tmp_path):
    kwargs = dict(progress=False, base_dir=MODELS, dtype="float64")
    whole = Ensemble.from_model_text(TEXT, [3, 4], epochs=2, **kwargs)
    whole.fit(tmp_path / "whole", log=None)
    part = Ensemble.from_model_text(TEXT, [3, 4], epochs=1, **kwargs)
    part.fit(tmp_path / "part", log=None)
    resumed = Ensemble.resume(tmp_path / "part", progress=False, epochs=2)
    assert resumed.seeds == [3, 4] and resumed.epoch == 1
    resumed.fit(tmp_path / "part", log=None)
    for a, b in zip(whole.members, resumed.members):
        for name in a.net.weights:
            assert torch.equal(a.net.weights[name], b.net.weights[name])
        assert [_columns(r) for r in a.history.rows()] == [_columns(r) for r in b.history.rows()]


def test_validation_split_and_jacobi_solver_match_separate_runs():
    """Each member holds out its own validation rows (seeded by its seed), the Jacobi
    Euler solver (right-hand side path) steps members together, and members in groups
    (one stacked network per group) train as alone."""
    text = TEXT.replace('dataset = "digits"', 'dataset = "digits"\nvalidation = 100')
    kwargs = dict(progress=False, base_dir=MODELS, epochs=1, dtype="float64", solver="euler")
    ensemble = Ensemble.from_model_text(text, [5, 6, 7], group_size=2, **kwargs)
    assert [part for part, _ in ensemble.groups] == [slice(0, 2), slice(2, 3)]
    ensemble.train_epoch()
    for seed, member in zip([5, 6, 7], ensemble.members):
        trainer = Trainer.from_model_text(text, seed=seed, **kwargs)
        trainer.train_epoch()
        assert "validation_accuracy" in trainer.history.columns
        _compare(trainer, member)
    assert not torch.equal(*(m.validation_indices for m in ensemble.members[:2]))


def test_summary_line():
    rows = [{"epoch": 3, "test_accuracy": 0.9, "seconds": 2.0},
            {"epoch": 3, "test_accuracy": 0.8, "seconds": 2.0}]
    assert summary_line(rows) == ("epoch 3 (2 members)  test_accuracy 85.00 +- 7.07 % "
                                  "(min 80.00, max 90.00)  2.0 s")


@pytest.mark.parametrize("model, overrides, message", [
    ("corinfomax_digits.toml", {"solver": "dopri5"}, 'solver "dopri5" adapts its steps'),
])
def test_refuses_what_it_cannot_run(model, overrides, message):
    with pytest.raises(ConfigError, match=message):
        Ensemble.from_model_text((MODELS / model).read_text(), [0, 1], progress=False,
                                 base_dir=MODELS, **overrides)


def test_refuses_bad_members_and_seeds(tmp_path):
    with pytest.raises(ConfigError, match="repeat a seed"):
        Ensemble.from_model_text(TEXT, [1, 1], progress=False, base_dir=MODELS)
    with pytest.raises(ConfigError, match="non-empty list of integers"):
        Ensemble.from_model_text(TEXT, [], progress=False, base_dir=MODELS)
    a = Trainer.from_model_text(TEXT, progress=False, base_dir=MODELS, seed=0)
    b = Trainer.from_model_text(TEXT.replace("beta = 1.0", "beta = 0.5"), progress=False,
                                base_dir=MODELS, seed=1)
    with pytest.raises(ConfigError, match="member 1 is not the model of member 0"):
        Ensemble([a, b])
    with pytest.raises(NeurosimError, match="holds no member run directories"):
        Ensemble.resume(tmp_path)


def test_refuses_protocols_not_ready_for_ensembles(monkeypatch):
    from neurosim.protocols import PROTOCOLS
    monkeypatch.setattr(PROTOCOLS.get("ep"), "ensemble_ready", False)
    with pytest.raises(ConfigError, match='protocol "ep" does not run as an ensemble yet'):
        Ensemble.from_model_text(TEXT, [0, 1], progress=False, base_dir=MODELS)


def test_refuses_rules_not_ready_for_ensembles(monkeypatch):
    monkeypatch.setattr(PlasticityRule, "ensemble_ready", False)
    from neurosim.plasticity.ep_contrastive import EPContrastive
    monkeypatch.setattr(EPContrastive, "ensemble_ready", False)
    with pytest.raises(ConfigError, match='rule "ep_contrastive" on ff1 does not run in an '
                                          "ensemble"):
        Ensemble.from_model_text(TEXT, [0, 1], progress=False, base_dir=MODELS)


def test_resume_refuses_members_at_different_epochs(tmp_path):
    ensemble = Ensemble.from_model_text(TEXT, [0, 1], progress=False, base_dir=MODELS,
                                        epochs=1)
    ensemble.fit(tmp_path, log=None)
    straggler = Trainer.resume(member_dir(tmp_path, 1), progress=False, epochs=2)
    straggler.fit(member_dir(tmp_path, 1), log=None)
    with pytest.raises(NeurosimError, match="different epochs"):
        Ensemble.resume(tmp_path, progress=False)


def test_command_line_trains_resumes_and_refuses(tmp_path, capsys):
    from neurosim.cli import main
    out = tmp_path / "ens"
    model = str(MODELS / "corinfomax_digits.toml")
    assert main(["train", model, "--out", str(out), "--seeds", "0,2", "--epochs", "1",
                 "--quiet"]) == 0
    assert sorted(d.name for d in out.iterdir()) == ["seed_0", "seed_2"]
    assert main(["resume", str(out), "--epochs", "2", "--quiet"]) == 0
    assert [Trainer.resume(out / d, progress=False).epoch for d in ("seed_0", "seed_2")] == [2, 2]
    capsys.readouterr()
    assert main(["table", str(out)]) == 0
    assert "| 2 | " in capsys.readouterr().out            # one configuration of two seeds
    assert main(["inspect", str(out)]) == 0
    assert "an ensemble of 2 members (seed_0, seed_2)" in capsys.readouterr().out
    assert main(["plot", str(out)]) == 0 and (out / "training.png").stat().st_size > 1000
    capsys.readouterr()
    for argv, message in [
        (["--seeds", "0,2"], "already holds a run; continue the ensemble with `neurosim resume"),
        (["--seeds", "4-2"], "seeds are whole numbers >= 0"),
        (["--seeds", "1,1"], "repeats a seed"),
        (["--seeds", "5", "--seed", "3"], "does not combine with --seed"),
    ]:
        assert main(["train", model, "--out", str(out), "--quiet", *argv]) == 2
        assert message in capsys.readouterr().err
    adaptive = tmp_path / "adaptive.toml"
    adaptive.write_text(TEXT.replace('solver = "gs-euler"', 'solver = "dopri5"'))
    assert main(["train", str(adaptive), "--out", str(tmp_path / "p"), "--seeds", "0,1"]) == 2
    assert 'solver "dopri5" adapts its steps to each network' in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("model, options", [
    ("copi_fa_digits.toml", ""),                  # fixed random feedback per member's seed
    ("copi_bp_digits.toml", ", norm_gain = true"),     # per-member gains
])
def test_copi_members_equal_separate_runs(model, options):
    """COPI (feed-forward passes, decorrelation and forward rules, FA feedback matrices
    stacked from each member's own protocol) in an ensemble: each member is its own run."""
    text = (MODELS / model).read_text().replace("warmup = { epochs = 5,", "warmup = { epochs = 1,")
    text = text.replace('form = "left"', f'form = "left"{options}')
    kwargs = dict(progress=False, base_dir=MODELS, epochs=2, dtype="float64")
    ensemble = Ensemble.from_model_text(text, [0, 1], **kwargs)
    for _ in range(2):
        ensemble.train_epoch()
    for seed, member in zip([0, 1], ensemble.members):
        trainer = Trainer.from_model_text(text, seed=seed, **kwargs)
        for _ in range(2):
            trainer.train_epoch()
        _compare(trainer, member)
        for name, matrix in trainer.protocol.feedback.items():
            assert torch.equal(member.protocol.feedback[name], matrix)
    if "fa" in model:
        a, b = (m.protocol.feedback for m in ensemble.members)
        assert not torch.equal(a[next(iter(a))], b[next(iter(b))])


def test_auto_group_size_keeps_a_group_within_half_the_cache(monkeypatch):
    from neurosim.training import ensemble as module
    members = [Trainer.from_model_text(TEXT, progress=False, base_dir=MODELS, seed=s).net
               for s in range(5)]
    per_member = sum(t.numel() * t.element_size() for table in (members[0].weights,
                                                                 members[0].biases)
                     for t in table.values())
    monkeypatch.setattr(module, "cache_bytes", lambda: 2 * (2 * per_member + 1))
    assert module.auto_group_size(members) == 2      # 2 per group at most: 3 groups -> 2
    monkeypatch.setattr(module, "cache_bytes", lambda: 64 * per_member)
    assert module.auto_group_size(members) == 5
    monkeypatch.setattr(module, "cache_bytes", lambda: 1)
    assert module.auto_group_size(members) == 1


def test_pepita_members_equal_separate_runs_and_resume_exactly(tmp_path):
    """PEPITA (two passes, dropout masks from each member's generator, F from each member's
    seed, the rule's momentum velocity stacked and handed back to each member's rule)."""
    text = (MODELS / "pepita_digits.toml").read_text()
    ensemble, separate = _ensemble_and_separate(text, [0, 1], 2, tmp_path / "whole")
    for trainer, member in zip(separate, ensemble.members):
        _compare(trainer, member)
        assert torch.equal(member.protocol.F, trainer.protocol.F)
        mine, theirs = member.protocol.rules.state_dict(), trainer.protocol.rules.state_dict()
        assert mine.keys() == theirs.keys() and mine
        for key in mine:
            assert torch.allclose(mine[key]["velocity"], theirs[key]["velocity"], rtol=0,
                                  atol=1e-10)
    _check_resume_is_exact(text, ensemble, tmp_path / "part")


@pytest.mark.parametrize("masks", ["fresh", "shared"])
def test_pepita_time_local_members_equal_separate_runs(tmp_path, masks):
    """The time-local variant: two rule passes per step, the modulated pass with fresh masks
    from each member's generator (or the standard pass's)."""
    text = (MODELS / "pepita_digits.toml").read_text()
    text = text.replace("[protocol]", f'[protocol]\ntime_local = true\ntime_local_masks = '
                                      f'"{masks}"', 1)
    text = text.replace("momentum = 0.9 }", "momentum = 0.9, hebbian = true }")
    assert text.count("hebbian = true") == 2
    ensemble, separate = _ensemble_and_separate(text, [0, 1], 2, tmp_path / "whole")
    for trainer, member in zip(separate, ensemble.members):
        _compare(trainer, member)
    _check_resume_is_exact(text, ensemble, tmp_path / "part")


def test_pepita_mirror_members_equal_separate_runs_and_resume_exactly(tmp_path):
    """Weight mirroring: each member mirrors its own B_l with noise and masks from its own
    generator (a pre-mirroring epoch, then learning and mirroring), F rescaled per member."""
    text = (MODELS / "pepita_mirror_digits.toml").read_text().replace("mirror_pre = 2 ",
                                                                      "mirror_pre = 1 ")
    assert "mirror_pre = 1 " in text               # epoch 2 learns and mirrors
    ensemble, separate = _ensemble_and_separate(text, [0, 1], 2, tmp_path / "whole")
    for trainer, member in zip(separate, ensemble.members):
        _compare(trainer, member)
        for mine, theirs in zip(member.protocol.B, trainer.protocol.B):
            torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-12)
        torch.testing.assert_close(member.protocol.F, trainer.protocol.F, rtol=0, atol=1e-12)
    assert not torch.equal(ensemble.members[0].protocol.F, ensemble.members[1].protocol.F)
    _check_resume_is_exact(text, ensemble, tmp_path / "part")


#: feedback alignment through two convolutions: k2's error goes back through the fixed
#: random kernel (the grouped transposed convolution), then a 2x2 max-pooling
FA_TWO_CONVS = (MODELS / "fa_conv_digits.toml").read_text().replace('''[[population]]
name = "pool"
type = "pyramidal"
size = 144                  # 16 x 3 x 3''', '''[[population]]
name = "conv2"
type = "pyramidal"
size = 64                   # 4 x 4 x 4
leak = 0.0
basal = 1.0
apical = 0.0
activation = "relu"

[[population]]
name = "pool"
type = "pyramidal"
size = 16                   # 4 x 2 x 2''').replace('''[[projection]]
name = "pool1"
type = "maxpool2d"
source = "conv"
target = "pool"
compartment = "basal"
in_shape = [16, 6, 6]''', '''[[projection]]
name = "k2"
type = "conv2d"
source = "conv"
target = "conv2"
compartment = "basal"
in_shape = [16, 6, 6]
channels = 4
kernel = 3
init = "he_uniform"

[[projection]]
name = "pool1"
type = "maxpool2d"
source = "conv2"
target = "pool"
compartment = "basal"
in_shape = [4, 4, 4]''').replace("lr = 0.1", "lr = 0.02")


@pytest.mark.parametrize("model", ["pepita_conv_digits.toml", "bp_conv_digits.toml",
                                   "fa_two_convs"])
def test_convolutional_members_equal_separate_runs_and_resume_exactly(tmp_path, model):
    """Spatial projections in ensembles: every member's convolution, max-pooling, patch-wise
    outer product (PEPITA) and transposed convolution through its own fixed random kernel
    (feedback alignment) as one grouped call; members equal their separate runs."""
    text = FA_TWO_CONVS if model == "fa_two_convs" else (MODELS / model).read_text()
    assert "k2" in text or model != "fa_two_convs"
    ensemble, separate = _ensemble_and_separate(text, [0, 1], 2, tmp_path / "whole")
    for trainer, member in zip(separate, ensemble.members):
        _compare(trainer, member)
        initial = Trainer.from_model_text(text, seed=member.config.seed, progress=False,
                                          base_dir=MODELS, dtype="float64")
        for name, weight in member.net.weights.items():      # every kernel learned
            assert float((weight - initial.net.weights[name]).abs().max()) > 1e-4, name
        assert 0.2 < member.history.columns["test_accuracy"][-1] <= 1
    _check_resume_is_exact(text, ensemble, tmp_path / "part")


def test_members_may_differ_in_run_only_settings_and_a_diverging_member_saves_nothing(
        tmp_path):
    from neurosim.cli import main
    out = tmp_path / "ens"
    model = str(MODELS / "corinfomax_digits.toml")
    assert main(["train", model, "--out", str(out), "--seeds", "0-1", "--epochs", "1",
                 "--quiet"]) == 0
    # one member resumed alone with other run-only settings, then the whole ensemble
    assert main(["resume", str(out / "seed_1"), "--epochs", "2", "--threads", "1",
                 "--quiet"]) == 0
    assert main(["resume", str(out / "seed_0"), "--epochs", "2", "--quiet"]) == 0
    ensemble = Ensemble.resume(out, progress=False, epochs=3)
    assert ensemble.epoch == 2
    ensemble.members[1].net.weights["ff1"][0, 0] = float("nan")
    with pytest.raises(NeurosimError, match=r"seeds \[1\] became non-finite after epoch 2"):
        ensemble._check_finite()                  # what fit checks before saving any member
    with pytest.raises(NeurosimError, match="ensemble member 1"):
        ensemble.fit(out, log=None)               # here the dynamics notice it first
    assert [Trainer.resume(out / d, progress=False).epoch for d in ("seed_0", "seed_1")] == [2, 2]


@pytest.mark.parametrize("model", ["bp_digits.toml", "fa_digits.toml", "bp_adam_digits.toml"])
def test_backprop_members_equal_separate_runs_and_resume_exactly(tmp_path, model):
    """Backprop and feedback alignment: autograd through the stacked weights (each member's
    loss its own), SGD momentum / Adam buffers stacked, the step count shared; FA's fixed
    feedback matrices from each member's seed."""
    text = (MODELS / model).read_text()
    ensemble, separate = _ensemble_and_separate(text, [0, 1], 2, tmp_path / "whole")
    for trainer, member in zip(separate, ensemble.members):
        _compare(trainer, member)
        assert member.protocol._steps == trainer.protocol._steps
        for buffer, tensors in trainer.protocol._state.items():
            for key, value in tensors.items():
                assert torch.allclose(member.protocol._state[buffer][key], value, rtol=0,
                                      atol=1e-12)
    _check_resume_is_exact(text, ensemble, tmp_path / "part")


def test_relax_with_a_user_rule_members_equal_separate_runs(tmp_path):
    """The unsupervised protocol with the example Oja rule (examples/oja.py, written for a
    member axis): members equal their separate runs; steady_tol is refused."""
    import shutil
    import numpy as np
    shutil.copy(MODELS.parent / "examples" / "oja.py", tmp_path / "oja.py")
    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(6, 6))
    np.savez(tmp_path / "gauss.npz", train_x=rng.normal(size=(400, 6)) @ mixing,
             test_x=rng.normal(size=(100, 6)) @ mixing)
    text = """
[[population]]
name = "x"
type = "input"
size = 6

[[population]]
name = "y"
type = "interneuron"
size = 2
leak = 1.0
activation = "linear"

[[projection]]
name = "w"
source = "x"
target = "y"
init = "normal"
scale = 0.3
rules = [{ type = "oja:Oja", lr = 0.01 }]

[data]
path = "gauss.npz"

[protocol]
type = "relax"
T = 3
step = 1.0

[training]
epochs = 2
batch_size = 20
output = "y"
metrics = [{ type = "principal_alignment", projection = "w" }]
"""
    kwargs = dict(progress=False, base_dir=tmp_path, dtype="float64")
    ensemble = Ensemble.from_model_text(text, [0, 1, 2], epochs=2, **kwargs)
    for _ in range(2):
        ensemble.train_epoch()
    for seed, member in zip([0, 1, 2], ensemble.members):
        trainer = Trainer.from_model_text(text, seed=seed, epochs=2, **kwargs)
        for _ in range(2):
            trainer.train_epoch()
        _compare(trainer, member)
    with pytest.raises(ConfigError, match="steady_tol stops each run"):
        Ensemble.from_model_text(text.replace("step = 1.0", "step = 1.0\nsteady_tol = 1e-6"),
                                 [0, 1], **kwargs)
    # an ODE phase draws random activities from one generator: refused in ensembles
    noisy = text.replace('activation = "linear"', 'activation = "stochastic_sign"')
    with pytest.raises(ConfigError, match=r"populations with random activities \(y\)"):
        Ensemble.from_model_text(noisy, [0, 1], **kwargs)


INFOMORPHIC = (MODELS / "infomorphic_digits.toml").read_text()
#: the deep model's structure on the digits: sparse lateral partners (a mask drawn from each
#: member's seed) and the output's samples of the previous sweep as context of h
INFOMORPHIC_FEEDBACK = INFOMORPHIC.replace('mask = "no_self"', "mask = { partners = 20 }") + """
[[projection]]
name = "w_feedback"
source = "out"
target = "h"
compartment = "context"
init = "fan_in_uniform"
"""


@pytest.mark.parametrize("text", [INFOMORPHIC, INFOMORPHIC_FEEDBACK],
                         ids=["lateral", "feedback_and_partners"])
def test_infomorphic_members_equal_separate_runs_and_resume_exactly(tmp_path, text):
    """Infomorphic neurons: +-1 samples in training from each member's generator, in
    evaluation from each member's own evaluation generator; the PID goals of all members'
    neurons estimated at once; Adam's moments stacked and handed back to each member."""
    ensemble, separate = _ensemble_and_separate(text, [0, 1, 2], 2, tmp_path / "whole")
    for trainer, member in zip(separate, ensemble.members):
        _compare(trainer, member)
        assert torch.equal(member.protocol.eval_generator.get_state(),
                           trainer.protocol.eval_generator.get_state())
        mine, theirs = member.protocol.rules.state_dict(), trainer.protocol.rules.state_dict()
        assert mine.keys() == theirs.keys() == {"h.0", "out.0"}
        for key in mine:
            assert mine[key]["steps"] == theirs[key]["steps"] > 0
            for name, moments in theirs[key]["moments"].items():
                for part in ("m", "v"):
                    torch.testing.assert_close(mine[key]["moments"][name][part],
                                               moments[part], rtol=1e-9, atol=1e-14)
    history = list(ensemble.members[0].history.rows())[-1]
    assert "train_h_pi_F_C" in history and "train_out_goal" in history
    _check_resume_is_exact(text, ensemble, tmp_path / "part")


def test_infomorphic_backprop_baseline_members_equal_separate_runs(tmp_path):
    """The same architecture trained end to end (objective "backprop"): straight-through
    samples from each member's generator, one Adam per member (stacked in the protocol)."""
    text = (MODELS / "infomorphic_backprop_digits.toml").read_text()
    ensemble, separate = _ensemble_and_separate(text, [0, 1], 2, tmp_path / "whole")
    for trainer, member in zip(separate, ensemble.members):
        _compare(trainer, member)
        mine, theirs = member.protocol.state_dict()["adam"], trainer.protocol.state_dict()["adam"]
        assert mine["steps"] == theirs["steps"] > 0 and mine["moments"].keys() == \
            theirs["moments"].keys()
    _check_resume_is_exact(text, ensemble, tmp_path / "part")


def test_large_evaluation_batches_run_member_by_member_exactly(monkeypatch):
    """A phase whose per-member state is large (an evaluation batch) is stepped member by
    member, each member's part being exactly its separate run's phase (bit for bit), and
    the step count is one member's."""
    from neurosim.dynamics import PhaseDynamics
    ensemble = Ensemble.from_model_text(TEXT, [0, 1], progress=False, base_dir=MODELS,
                                        dtype="float64")
    protocol = ensemble.groups[0][1]
    calls = []
    original = PhaseDynamics.members_apart

    def spy(self, state):
        found = original(self, state)
        calls.append(found is not None)
        return found
    monkeypatch.setattr(PhaseDynamics, "members_apart", spy)
    from neurosim.dynamics import fused
    x = torch.rand(400, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    with fused.mode("off"):       # eager (the loop, where it applies, is member by member too)
        state = protocol.infer(x)                    # 400 x 310 potentials per member
        assert calls and all(calls)
        for m, member in enumerate(ensemble.members):
            alone = member.protocol.infer(x)
            assert torch.equal(state.u[m], alone.u) and torch.equal(state.r[m], alone.r)
        calls.clear()
        protocol.infer(x[:20])    # a training-sized batch: batched
        assert not any(calls)
    if fused.library() is not None:
        state = protocol.infer(x)                    # the loop, member by member
        for m, member in enumerate(ensemble.members):
            alone = member.protocol.infer(x)
            assert torch.equal(state.u[m], alone.u) and torch.equal(state.r[m], alone.r)


def test_training_phases_of_an_ensemble_run_on_the_loop():
    """EP's nudged half of the (members, 2 batch, n) buffer is contiguous within each member,
    which is all the member-by-member loop needs: a training step takes the loop (and equals
    the eager step to rounding)."""
    from neurosim.dynamics import fused
    if fused.library() is None:
        pytest.skip(f"the fused loop could not be built here: {fused.build_error()}")
    results = {}
    for mode in ("require", "off"):
        ensemble = Ensemble.from_model_text(TEXT, [0, 1], progress=False, base_dir=MODELS,
                                            dtype="float64")
        protocol = ensemble.groups[0][1]
        x = torch.stack([m.train_x[:20] for m in ensemble.members])
        target = ensemble.members[0]._one_hot(torch.stack([m.train_y[:20]
                                                           for m in ensemble.members]))
        with fused.mode(mode), torch.inference_mode():
            protocol.train_step(x, target, [m.generator for m in ensemble.members])
        results[mode] = {k: w.clone() for k, w in protocol.net.weights.items()}
    for name, weight in results["off"].items():
        torch.testing.assert_close(results["require"][name], weight, rtol=0, atol=1e-12)


def test_spatial_and_dense_operators_take_a_member_axis():
    """The pieces convolutional ensembles are built from, member by member against the
    ordinary calls (float64): a strided, padded convolution with stacked or shared inputs,
    its patch-wise outer product, the feedback-alignment backward pass (also for an input
    shared by the members), max-pooling and the dense outer product; draws need the members
    on their first axis."""
    from neurosim.draws import uniform
    from neurosim.graph.projections import Conv2dProjection, MaxPool2dProjection, Projection
    from neurosim.protocols.backprop import _FeedbackConv
    q = Conv2dProjection(name="k", source="a", target="b", in_shape=(2, 5, 5), channels=3,
                         kernel=[3, 2], stride=2, padding=1)
    pool = MaxPool2dProjection(name="p", source="a", target="b", in_shape=(2, 5, 5), kernel=2)
    members, batch = 3, 4
    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.rand(*shape, generator=g, dtype=torch.float64)
    h, shared = rand(members, batch, 50), rand(batch, 50)
    kernel, feedback = rand(members, 3, 2, 3, 2), rand(members, 3, 2, 3, 2)
    for source in (h, shared):
        out = q.drive(source, kernel)
        for m in range(members):
            own = source[m] if source.dim() == 3 else source
            assert torch.allclose(out[m], q.drive(own, kernel[m]), rtol=0, atol=1e-13)
    post = rand(members, batch, out.shape[-1])
    outer = q.outer(post, h)
    pooled = pool.drive(h, None)
    for m in range(members):
        assert torch.allclose(outer[m], q.outer(post[m], h[m]), rtol=0, atol=1e-13)
        assert torch.equal(pooled[m], pool.drive(h[m], None))
    for source in (h, shared):
        leaf = source.clone().requires_grad_(True)
        weights = kernel.clone().requires_grad_(True)
        grad = rand(members, batch, out.shape[-1])
        _FeedbackConv.apply(leaf, weights, feedback, q).backward(grad)
        for m in range(members):
            own = (source[m] if source.dim() == 3 else source).clone().requires_grad_(True)
            weight = kernel[m].clone().requires_grad_(True)
            _FeedbackConv.apply(own, weight, feedback[m], q).backward(grad[m])
            assert torch.allclose(weights.grad[m], weight.grad, rtol=0, atol=1e-12)
            if source.dim() == 3:
                assert torch.allclose(leaf.grad[m], own.grad, rtol=0, atol=1e-12)
        if source.dim() == 2:                 # every member's error reaches the shared input
            assert leaf.grad.shape == shared.shape and float(leaf.grad.abs().sum()) > 0
    dense = Projection(name="w", source="a", target="b")
    pre, post = rand(members, batch, 5), rand(members, batch, 4)
    outer = dense.outer(post, pre)
    for m in range(members):
        assert torch.allclose(outer[m], dense.outer(post[m], pre[m]), rtol=0, atol=1e-14)
    with pytest.raises(ConfigError, match="needs the members on its first axis"):
        uniform((2, 4), [torch.Generator()] * 3, dtype=torch.float64, device="cpu")


def test_evaluation_larger_than_the_cache_runs_each_members_own(monkeypatch):
    """When the members' stacked evaluation states would exceed the last-level cache, each
    member evaluates on its own (its protocol reads views of the stacked weights): the rows
    are exactly those of the members' separate evaluations."""
    from neurosim.training import ensemble as module
    original = Trainer.evaluate
    ensemble = Ensemble.from_model_text(TEXT, [0, 1], progress=False, base_dir=MODELS,
                                        dtype="float64")
    x, y = ensemble.members[0].dataset.test_x[:300], ensemble.members[0].dataset.test_y[:300]
    batched = ensemble.evaluate([x, x], [y, y], "test")
    monkeypatch.setattr(module, "cache_bytes", lambda: 1)
    calls = []
    monkeypatch.setattr(Trainer, "evaluate", lambda self, *a, **k: calls.append(self) or
                        original(self, *a, **k))
    own = ensemble.evaluate([x, x], [y, y], "test")
    assert calls == ensemble.members
    for member, row, other in zip(ensemble.members, own, batched):
        assert row == original(member, x, y, "test")
        assert row.keys() == other.keys()
        for key in row:
            assert row[key] == pytest.approx(other[key], rel=1e-12, abs=1e-12)

