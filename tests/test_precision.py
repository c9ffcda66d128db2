"""Projection precision (neurosim.graph.projections ``precision``): a linear cell's bfloat16
projections get their own operator, its identity autapses an elementwise term, and the
result differs from full precision by about the float32 rounding of the potentials when the
term is as small as CorInfoMax's lateral ``2 gamma B r``."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from neurosim.dynamics import CompiledNetwork, Diagonal, LowPrecision, fused, ops
from neurosim.errors import ConfigError
from neurosim.graph import InputPopulation, Network, Projection, network_from_dict
from neurosim.models.corinfomax import corinfomax_graph
from neurosim.solvers import ConstantStep, external, get_solver, solve

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from examples.nonlinear_cell import GatedCell  # noqa: E402

SIZES = [64, 200, 10]


def corinfomax(precision: str, *, lateral_gain=None, dtype=torch.float32, seed=3):
    graph = corinfomax_graph(SIZES, lateral_precision=precision)
    if lateral_gain is not None:
        for table in graph["projection"]:
            if table["name"].startswith("lat"):
                table["gain"] = lateral_gain
    return CompiledNetwork(network_from_dict(graph), dtype=dtype, seed=seed)


def inputs(batch=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(batch, SIZES[0], generator=g) > 0.6).float()
    y = torch.nn.functional.one_hot(torch.arange(batch) % SIZES[-1], SIZES[-1]).float()
    return x, y


def relax(net, x, y=None, *, solver="gs-euler", free=30, nudged=10):
    """Free phase from rest, then (with y) a nudged phase with beta = 1; returns u after
    each."""
    ops_ = net.build_operators()
    state = net.zero_state(x.shape[0])
    net.clamp_inputs(state, {"x": x})
    run = dict(solver=get_solver(solver), schedule=ConstantStep(0.05))
    solve(net.phase(ops_, {"x": x}, at_rest=True), state, n_steps=free, **run)
    after_free = state.u.clone()
    if y is None:
        return after_free, None
    solve(net.phase(ops_, {"x": x}, nudges={"out": (y, 1.0)}), state, n_steps=nudged, **run)
    return after_free, state.u.clone()


def test_bfloat16_operators_and_layout():
    net = corinfomax("bfloat16")
    assert net.low_precision == {"lat1", "lat2"}
    h1, out = net.slots["h1"], net.slots["out"]
    # h1: full precision keeps only the feedback block from out; B is bfloat16; g I elementwise
    assert (h1.source_cols, h1.low_cols) == (out.r_cols, h1.r_cols)
    assert h1.self_coupling == pytest.approx(0.15 * 0.5 / 0.15)     # g_A * eps * g
    operators = net.build_operators()
    assert operators[LowPrecision("h1")].dtype == torch.bfloat16
    assert tuple(operators[LowPrecision("h1")].shape) == (200, 200)
    assert tuple(operators["h1"].shape) == (10, 200)
    assert float(operators[Diagonal("h1")]) == pytest.approx(h1.self_coupling)
    coef = net.coupling(net.network.projection("lat1"))
    np.testing.assert_allclose(operators[LowPrecision("h1")].float().numpy(),
                               (coef * net.weights["lat1"].T).bfloat16().float().numpy())
    full = corinfomax("full")
    assert full.low_precision == frozenset()
    assert all(s.low_cols is None for s in full.slots.values())
    assert not any(isinstance(k, (LowPrecision, Diagonal)) for k in full.build_operators())


@pytest.mark.parametrize("solver", ["gs-euler", "euler"])
def test_bfloat16_lateral_is_as_accurate_as_float32(solver):
    """CorInfoMax's lateral term (2 gamma = 2e-5) in bfloat16: against a float64 reference,
    free and nudged phases (the nudge of "out" folds into its elementwise term, its own block
    being bfloat16) are as accurate as full float32, while leaving the term out is not."""
    x, y = inputs()
    reference = relax(corinfomax("full", dtype=torch.float64), x, y, solver=solver)
    runs = {p: relax(corinfomax(p), x, y, solver=solver) for p in ("full", "bfloat16")}
    without = relax(corinfomax("full", lateral_gain=0.0), x, y, solver=solver)
    for phase in (0, 1):
        def error(run):
            return float((run[phase].double() - reference[phase]).abs().max())
        assert error(runs["bfloat16"]) <= 2 * error(runs["full"])
        assert error(without) > 5 * error(runs["bfloat16"])


def test_bfloat16_in_float64_and_a_large_term_is_bfloat16_accurate():
    """Asked for explicitly, bfloat16 is used in a float64 network too; for a term of order
    one its error is bfloat16's (about 3 significant digits), not float32's."""
    x, _ = inputs()
    exact, _ = relax(corinfomax("full", lateral_gain=0.5, dtype=torch.float64), x)
    low, _ = relax(corinfomax("bfloat16", lateral_gain=0.5, dtype=torch.float64), x)
    error = float((exact - low).abs().max())
    assert 1e-6 < error < 1e-2 * float(exact.abs().max())


def test_auto_resolves_by_cpu_dtype_and_size(monkeypatch):
    monkeypatch.setattr(ops, "native_bfloat16", lambda: True)
    assert corinfomax("auto").low_precision == {"lat1"}          # 200 x 200, not 10 x 10
    assert corinfomax("auto", dtype=torch.float64).low_precision == frozenset()
    monkeypatch.setattr(ops, "native_bfloat16", lambda: False)
    assert corinfomax("auto").low_precision == frozenset()


def test_native_bfloat16_reads_the_cpu_flags(monkeypatch):
    monkeypatch.setattr(ops, "cpu_flags", lambda: "flags : fpu avx2 avx512f avx512_bf16")
    assert ops.native_bfloat16()
    monkeypatch.setattr(ops, "cpu_flags", lambda: "flags : fpu avx2 amx_bf16 amx_tile")
    assert ops.native_bfloat16()
    monkeypatch.setattr(ops, "cpu_flags", lambda: "flags : fpu avx2 avx512f")
    assert not ops.native_bfloat16()


def test_ensemble_members_match_their_own_bfloat16_runs():
    x, y = inputs(batch=4)
    members = [corinfomax("bfloat16", seed=s) for s in (1, 2)]
    alone = [relax(net, x, y) for net in members]
    ensemble = CompiledNetwork.stacked([corinfomax("bfloat16", seed=s) for s in (1, 2)])
    ops_ = ensemble.build_operators()
    assert tuple(ops_[LowPrecision("h1")].shape) == (2, 200, 200)
    state = ensemble.zero_state(4)
    ensemble.clamp_inputs(state, {"x": x})
    run = dict(solver=get_solver("gs-euler"), schedule=ConstantStep(0.05))
    solve(ensemble.phase(ops_, {"x": x}, at_rest=True), state, n_steps=30, **run)
    free = state.u.clone()
    beta = torch.tensor([1.0, -1.0])             # one nudge per member: a M x 1 x 1 diagonal
    solve(ensemble.phase(ops_, {"x": x}, nudges={"out": (y, beta)}), state, n_steps=10, **run)
    flipped = relax(corinfomax("bfloat16", seed=2), x, y)   # member 1 with beta = -1
    net = corinfomax("bfloat16", seed=2)
    o = net.build_operators()
    s = net.zero_state(4)
    net.clamp_inputs(s, {"x": x})
    solve(net.phase(o, {"x": x}, at_rest=True), s, n_steps=30, **run)
    solve(net.phase(o, {"x": x}, nudges={"out": (y, -1.0)}), s, n_steps=10, **run)
    for m in range(2):
        torch.testing.assert_close(free[m], alone[m][0], rtol=0, atol=2e-6)
    torch.testing.assert_close(state.u[0], alone[0][1], rtol=0, atol=2e-6)
    torch.testing.assert_close(state.u[1], s.u, rtol=0, atol=2e-6)
    assert float((flipped[1] - s.u).abs().max()) > 1e-3     # the sign mattered


def test_the_fused_path_says_why_it_is_not_taken():
    x, _ = inputs(batch=2)
    net = corinfomax("bfloat16", dtype=torch.float64)
    state = net.zero_state(2)
    net.clamp_inputs(state, {"x": x})
    stats = solve(net.phase(net.build_operators(), {"x": x}), state, solver=get_solver("euler"),
                  schedule=ConstantStep(0.05), n_steps=5)
    assert stats.path == ('eager: population "h1" has a bfloat16 projection in a '
                          "torch.float64 network (the loop multiplies bfloat16 in float32 "
                          "networks)")
    lib = fused.library()
    if lib is not None and not lib.neurosim_bfloat16():
        net = corinfomax("bfloat16")
        state = net.zero_state(2)
        net.clamp_inputs(state, {"x": x})
        stats = solve(net.phase(net.build_operators(), {"x": x}), state,
                      solver=get_solver("euler"), schedule=ConstantStep(0.05), n_steps=5)
        assert stats.path == ("eager: a bfloat16 projection, and this CPU has no bfloat16 "
                              "instructions (AVX512-BF16) for the loop")


def _fused_bfloat16():
    lib = fused.library()
    return lib is not None and bool(lib.neurosim_bfloat16())


needs_fused_bfloat16 = pytest.mark.skipif(not _fused_bfloat16(),
                                          reason="the fused loop has no bfloat16 here "
                                                 "(a CPU without AVX512-BF16)")


@needs_fused_bfloat16
@pytest.mark.parametrize("batch", [4, 20])
def test_ensemble_members_on_the_loop_use_their_packed_operators_exactly(batch):
    """Each member of an ensemble gets its own bfloat16 operator packed once per build, and
    its phase on the loop is its separate run's, bit for bit."""
    x, y = inputs(batch=batch)
    run = dict(solver=get_solver("gs-euler"), schedule=ConstantStep(0.05), n_steps=30)
    ensemble = CompiledNetwork.stacked([corinfomax("bfloat16", seed=s) for s in (1, 2)])
    ops_ = ensemble.build_operators()
    state = ensemble.zero_state(batch)
    ensemble.clamp_inputs(state, {"x": x})
    dynamics = ensemble.phase(ops_, {"x": x}, at_rest=True)
    with fused.mode("require"):
        solve(dynamics, state, **run)
        stepper = fused.stepper(dynamics, state, run["solver"])[0]
    packed = [member.packed[0] for member in stepper.members]
    assert all(p is not None for p in packed) and packed[0] is not packed[1]
    for m, seed in enumerate((1, 2)):
        net = corinfomax("bfloat16", seed=seed)
        alone = net.zero_state(batch)
        net.clamp_inputs(alone, {"x": x})
        with fused.mode("require"):
            solve(net.phase(net.build_operators(), {"x": x}, at_rest=True), alone, **run)
        assert torch.equal(state.u[m], alone.u)


@needs_fused_bfloat16
@pytest.mark.parametrize("n, sources", [(37, 37), (40, 33), (16, 32), (500, 500)])
def test_packed_pairs_interleave_the_sources_of_each_neuron(n, sources):
    """neurosim_pack_bf16 (16 x 16 tiles transposed in registers, the edges one by one):
    row i holds, per neuron j, the pair (W[j, 2i], W[j, 2i + 1]) (0 past the last source),
    neurons padded to 16 with zeros."""
    lib = fused.library()
    g = torch.Generator().manual_seed(n + sources)
    rows = torch.randn(n, sources, generator=g).bfloat16()
    width = (n + 15) // 16 * 16
    packed = torch.full(((sources + 1) // 2, width), -1, dtype=torch.int32)
    assert lib.neurosim_pack_bf16(rows.data_ptr(), sources, n, packed.data_ptr(), 2)
    even = torch.nn.functional.pad(rows, (0, sources % 2)).view(torch.int16).to(torch.int32)
    expected = torch.zeros_like(packed)
    expected[:, :n] = ((even[:, 0::2] & 0xFFFF) | (even[:, 1::2] << 16)).T
    assert torch.equal(packed, expected)


def small_network(batch_seed=0):
    """x (5) -> h (37, sigmoid: a bfloat16 recurrent projection and an identity autapse,
    applied elementwise) <- top (10, full precision, row-major blocks)."""
    network = network_from_dict({
        "population": [{"name": "x", "type": "input", "size": 5},
                       {"name": "h", "type": "pyramidal", "size": 37, "activation": "sigmoid",
                        "leak": 0.3, "bias": 0.1},
                       {"name": "top", "type": "pyramidal", "size": 10, "activation": "tanh"}],
        "projection": [{"name": "x_h", "source": "x", "target": "h", "compartment": "basal"},
                       {"name": "h_h", "source": "h", "target": "h", "compartment": "apical",
                        "init": "normal", "scale": 0.5, "precision": "bfloat16"},
                       {"name": "h_aut", "source": "h", "target": "h", "init": "identity",
                        "gain": 0.3},
                       {"name": "top_h", "source": "top", "target": "h",
                        "compartment": "apical"},
                       {"name": "h_top", "source": "h", "target": "top", "compartment": "basal"}]})
    return CompiledNetwork(network, seed=5)


@needs_fused_bfloat16
@pytest.mark.parametrize("batch", [3, 20, 23])
@pytest.mark.parametrize("solver", ["euler", "gs-euler"])
def test_fused_bfloat16_step_is_exact_on_rounded_operands(batch, solver):
    """One fused step: h moves by h (r_top KT + bf16(r_h) bf16(KT_low) + c r_h + I), the
    bfloat16 products exact and summed in float32 (checked against float64 on the rounded
    operands), with the full-precision part summed over sources (batch 3) or in blocks."""
    net = small_network()
    g = torch.Generator().manual_seed(batch)
    x = torch.rand(batch, 5, generator=g) * 2 - 1
    operators = net.build_operators()
    dynamics = net.phase(operators, {"x": x})
    state = net.zero_state(batch)
    net.clamp_inputs(state, {"x": x})
    state.u.copy_(torch.randn(state.u.shape, generator=g))
    net.sync_activity(state)
    before = state.clone()
    with fused.mode("require"):
        stats = solve(dynamics, state, solver=get_solver(solver), schedule=ConstantStep(0.05),
                      n_steps=1)
    assert stats.path == "fused"
    slot = net.slots["h"]
    r = before.r.double()
    low = operators[LowPrecision("h")].double()
    drive = (r[:, slot.source_cols] @ operators["h"].double()
             + r[:, slot.low_cols].bfloat16().double() @ low
             + float(operators[Diagonal("h")]) * r[:, slot.r_cols]
             + dynamics.currents["h"].double())
    h = 0.05
    expected = (1 - h * slot.decay) * before.u[:, slot.u_cols].double() + h * drive
    torch.testing.assert_close(state.u[:, slot.u_cols].double(), expected, rtol=0, atol=2e-6)


@needs_fused_bfloat16
@pytest.mark.parametrize("batch", [20, 47])
@pytest.mark.parametrize("solver", ["euler", "gs-euler"])
@pytest.mark.parametrize("threads", [1, 2])
def test_fused_bfloat16_threads_sharing_samples_or_neurons_agree_bit_for_bit(
        monkeypatch, batch, solver, threads):
    """The bfloat16 product sums each neuron's pairs in the same order whether the threads
    share the samples (one packing of the operator read by all) or the neurons (each packs
    its own columns)."""
    net = small_network()
    g = torch.Generator().manual_seed(batch)
    x = torch.rand(batch, 5, generator=g) * 2 - 1
    operators = net.build_operators()
    finals = {}
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for split, share in (("samples", fused.SAMPLE_SPLIT_CACHE), ("neurons", 0.0)):
            monkeypatch.setattr(fused, "SAMPLE_SPLIT_CACHE", share)
            dynamics = net.phase(operators, {"x": x})
            state = net.zero_state(batch)
            net.clamp_inputs(state, {"x": x})
            with fused.mode("require"):
                solve(dynamics, state, solver=get_solver(solver), schedule=ConstantStep(0.05),
                      n_steps=40)
            assert fused.stepper(dynamics, state, get_solver(solver))[0].by_samples == \
                (split == "samples")
            finals[split] = state.u.clone()
    finally:
        torch.set_num_threads(before)
    assert torch.equal(finals["samples"], finals["neurons"])
    assert float(finals["samples"].abs().max()) > 0.05


@needs_fused_bfloat16
@pytest.mark.parametrize("batch", [3, 20])
def test_fused_bfloat16_operator_is_packed_once_per_build(batch):
    """The loop packs a bfloat16 operator that build_operators wrote once, for every phase
    of that build (the same buffer, the same numbers as packing at each call), and again
    after the next build: new weights are seen."""
    net = small_network()
    g = torch.Generator().manual_seed(batch)
    x = torch.rand(batch, 5, generator=g) * 2 - 1
    solver = get_solver("gs-euler")

    def relax(operators, mode):
        state = net.zero_state(batch)
        net.clamp_inputs(state, {"x": x})
        dynamics = net.phase(operators, {"x": x})
        with fused.mode(mode):
            solve(dynamics, state, solver=solver, schedule=ConstantStep(0.05), n_steps=30)
        return dynamics, state.u.clone()

    operators = net.build_operators()
    first, u_first = relax(operators, "require")
    packed = fused.stepper(first, net.zero_state(batch), solver)[0].packed[0]
    assert packed is not None
    again, u_again = relax(operators, "require")
    assert fused.stepper(again, net.zero_state(batch), solver)[0].packed[0] is packed
    assert torch.equal(u_first, u_again)
    low = operators[LowPrecision("h")]
    # a copy of the operator (not written by build_operators): packed at each call, same sums
    copied = {**operators, LowPrecision("h"): low.mT.clone().mT}
    loose, u_loose = relax(copied, "require")
    assert fused.stepper(loose, net.zero_state(batch), solver)[0].packed[0] is None
    assert torch.equal(u_loose, u_first)
    net.weights["h_h"].mul_(-1.5)                   # new weights, rebuilt in the same buffers
    rebuilt = net.build_operators(operators)
    assert rebuilt[LowPrecision("h")] is low
    fresh, u_new = relax(rebuilt, "require")
    assert fused.stepper(fresh, net.zero_state(batch), solver)[0].packed[0] is packed  # reused
    _, u_unpacked = relax({**rebuilt, LowPrecision("h"): low.mT.clone().mT}, "require")
    assert not torch.equal(u_new, u_first)
    assert torch.equal(u_new, u_unpacked)


@needs_fused_bfloat16
@pytest.mark.parametrize("batch", [2, 20])
def test_fused_bfloat16_corinfomax_phases_match_eager(batch):
    """Free and nudged phases of CorInfoMax with bfloat16 laterals on both paths: within the
    eager product's bfloat16 rounding of its result, scaled by 2 gamma."""
    x, y = inputs(batch=batch)
    results = {}
    for mode in ("off", "require"):
        with fused.mode(mode):
            results[mode] = relax(corinfomax("bfloat16"), x, y)
    for eager, fast in zip(results["off"], results["require"]):
        torch.testing.assert_close(fast, eager, rtol=0, atol=4e-7)


def test_implicit_solvers_jacobian_includes_the_bfloat16_operator():
    x, _ = inputs(batch=2)
    blocks = {}
    for precision in ("full", "bfloat16"):
        net = corinfomax(precision, lateral_gain=0.5, dtype=torch.float64)
        dynamics = net.phase(net.build_operators(), {"x": x})
        u = torch.full((2, net.n_dyn), 0.4, dtype=torch.float64)
        blocks[precision] = np.stack(list(external._linear_blocks(dynamics)(u)))
    error = np.abs(blocks["full"] - blocks["bfloat16"]).max()
    assert 0 < error < 1e-2 * np.abs(blocks["full"]).max()


def test_training_step_with_a_bfloat16_lateral_runs_and_stays_close():
    from neurosim.training import Trainer
    text = """
[model]
template = "corinfomax"
sizes = [64, 200, 10]
lateral_precision = "{p}"
[data]
dataset = "digits"
[protocol]
type = "ep"
T_free = 20
T_nudged = 4
solver = "gs-euler"
step = 0.05
[training]
epochs = 1
batch_size = 8
"""
    x, y = inputs(batch=8)
    weights = {}
    for precision in ("full", "bfloat16"):
        trainer = Trainer.from_model_text(text.replace("{p}", precision), progress=False)
        with torch.inference_mode():
            trainer.protocol.train_step(x, y, torch.Generator().manual_seed(0))
        weights[precision] = {k: v.clone() for k, v in trainer.net.weights.items()}
    for name, w in weights["full"].items():
        torch.testing.assert_close(weights["bfloat16"][name], w, rtol=0, atol=1e-5)


@pytest.mark.parametrize("table, message", [
    ({"precision": "bf16"}, 'precision must be one of full, bfloat16, auto, got \'bf16\'. '
                            'Did you mean "bfloat16"?'),
    ({"precision": "bfloat16", "init": "identity", "source": "h", "target": "h"},
     'precision "bfloat16" applies to the product of a dense weight matrix'),
])
def test_precision_errors_in_the_graph(table, message):
    projection = {"name": "p", "source": "x", "target": "h", **table}
    with pytest.raises(ConfigError, match=None) as info:
        network_from_dict({"population": [{"name": "x", "type": "input", "size": 3},
                                          {"name": "h", "type": "pyramidal", "size": 3}],
                           "projection": [projection]})
    assert message in str(info.value)
    assert 'projection "p"' in str(info.value)


def test_precision_errors_when_compiled():
    from_input = network_from_dict({
        "population": [{"name": "x", "type": "input", "size": 3},
                       {"name": "h", "type": "pyramidal", "size": 3}],
        "projection": [{"name": "x_h", "source": "x", "target": "h",
                        "precision": "bfloat16"}]})
    with pytest.raises(ConfigError, match='projection "x_h": precision "bfloat16" applies to '
                                          "products recomputed every step.*its source is an "
                                          "input"):
        CompiledNetwork(from_input)
    general = Network([InputPopulation("x", 3), GatedCell("h", 4)],
                      [Projection("x_h", "x", "h", "basal"),
                       Projection("h_h", "h", "h", "lateral", precision="bfloat16")])
    with pytest.raises(ConfigError, match='its target "h" is a general cell'):
        CompiledNetwork(general)
    auto = Network([InputPopulation("x", 3), GatedCell("h", 4)],
                   [Projection("x_h", "x", "h", "basal", precision="auto"),
                    Projection("h_h", "h", "h", "lateral", precision="auto")])
    assert CompiledNetwork(auto).low_precision == frozenset()     # "auto" falls back quietly


@needs_fused_bfloat16
@pytest.mark.parametrize("batch", [20, 47])
def test_bfloat16_ensemble_members_stepped_in_one_call_equal_their_own_calls(monkeypatch,
                                                                             batch):
    """An ensemble with a bfloat16 operator, nudged through the elementwise self-coupling
    (each member its own beta, so its own parameters) and each member's operator packed on
    its own: one call for all members steps each as its own call does, bit for bit."""
    nets = [small_network() for _ in range(3)]
    for seed, net in enumerate(nets):
        g = torch.Generator().manual_seed(seed)
        for weight in net.weights.values():
            weight.add_(torch.randn(weight.shape, generator=g, dtype=weight.dtype) * 0.1)
    ensemble = CompiledNetwork.stacked(nets)
    g = torch.Generator().manual_seed(batch)
    x = torch.rand(3, batch, 5, generator=g) * 2 - 1
    target = torch.rand(3, batch, 37, generator=g)
    beta = torch.tensor([0.5, -1.0, 2.0])
    together = []
    real = fused.EnsembleStepper._advance_together
    monkeypatch.setattr(fused.EnsembleStepper, "_advance_together",
                        lambda self, *args: together.append(1) or real(self, *args))
    finals = {}
    for joint in (True, False):
        if not joint:
            monkeypatch.setattr(fused.EnsembleStepper, "_together", lambda self: False)
        operators = ensemble.build_operators()
        state = ensemble.zero_state(batch)
        ensemble.clamp_inputs(state, {"x": x})
        with fused.mode("require"), torch.inference_mode():
            for nudges in (None, {"h": (target, beta)}):
                solve(ensemble.phase(operators, {"x": x}, nudges=nudges), state,
                      solver=get_solver("gs-euler"), schedule=ConstantStep(0.05), n_steps=25,
                      check_finite_every=0)
        finals[joint] = state.u.clone()
    assert len(together) == 2
    assert torch.equal(finals[True], finals[False])
    assert float((finals[True][0] - finals[True][1]).abs().max()) > 1e-3
