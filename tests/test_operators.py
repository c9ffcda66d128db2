"""Compiled operators and the fast paths of the Gauss-Seidel step.

- ``KT_p`` equals a dense matrix assembled independently from the projection list (weighted
  and identity projections on one source block, an input declared between dynamic
  populations, a dynamic population in the source range that does not project);
- narrow populations get a column-major ``KT_p``, and stepping with it agrees with the
  row-major layout;
- a phase started at rest skips the products of silent sources with bit-identical results;
- the cheap finiteness check neither misses non-finite values nor flags large finite ones.
"""
from __future__ import annotations

import pytest
import torch

import neurosim.dynamics.compiled as compiled
from neurosim.dynamics import CompiledNetwork, ops
from neurosim.errors import ConfigError, SimulationError
from neurosim.graph import InputPopulation, Network, Projection, PyramidalPopulation


def layered_network(activation: str = "relu") -> Network:
    """wide -> narrow with feedback, an identity autapse on a weighted lateral block, a second
    input ("context") declared between the dynamic populations, and "side", a dynamic
    population inside narrow's source range that does not project to it."""
    kw = dict(leak=0.5, basal=1.0, apical=0.7, activation=activation)
    return Network([
        InputPopulation("x", 7),
        PyramidalPopulation("wide", 40, **kw),
        InputPopulation("context", 3),
        PyramidalPopulation("side", 5, **kw),
        PyramidalPopulation("narrow", 4, **kw),
    ], [
        Projection("x_wide", "x", "wide", "basal", init="he_uniform"),
        Projection("context_wide", "context", "wide", "basal", init="uniform", scale=0.5),
        Projection("wide_wide", "wide", "wide", "apical", init="normal", scale=0.2),
        Projection("wide_auto", "wide", "wide", "apical", init="identity", gain=0.5),
        Projection("narrow_wide", "narrow", "wide", "apical", init="xavier_uniform"),
        Projection("wide_side", "wide", "side", "basal", init="uniform", scale=0.3),
        Projection("wide_narrow", "wide", "narrow", "basal", init="xavier_uniform"),
        Projection("narrow_narrow", "narrow", "narrow", "apical", init="normal", scale=0.1),
        Projection("narrow_auto", "narrow", "narrow", "apical", init="identity", gain=0.3),
    ], name="layered")


def dense_reference(net: CompiledNetwork, target: str) -> torch.Tensor:
    """KT_target assembled entry by entry from the projection list (source rows over the
    population's source column range, zero elsewhere)."""
    slot = net.slots[target]
    lo, hi = slot.source_cols.start, slot.source_cols.stop
    kt = torch.zeros(hi - lo, slot.size, dtype=torch.float64)
    for q in net.network.incoming(target):
        src = net.slots[q.source]
        if src.u_cols is None:
            continue
        weight = (net.weights[q.name].to(torch.float64) if q.name in net.weights
                  else torch.eye(src.size, dtype=torch.float64))
        kt[src.r_cols.start - lo:src.r_cols.stop - lo] += net.coupling(q) * weight.T
    return kt


def inputs(batch: int = 3):
    g = torch.Generator().manual_seed(1)
    return {"x": torch.rand(batch, 7, generator=g, dtype=torch.float64),
            "context": torch.rand(batch, 3, generator=g, dtype=torch.float64)}


def test_operators_match_an_independent_dense_assembly():
    net = CompiledNetwork(layered_network(), dtype=torch.float64, seed=2)
    ops = net.build_operators()
    assert set(ops) == {"wide", "side", "narrow"}
    # narrow's source range spans wide, context (input), side (no projection) and narrow
    assert net.slots["narrow"].source_cols == slice(7, 7 + 40 + 3 + 5 + 4)
    for name, kt in ops.items():
        assert torch.equal(kt, dense_reference(net, name)), name
    # rebuilding into the same buffers after the weights change gives the new operators
    net.weights["wide_wide"].mul_(-2.0)
    net.weights["wide_narrow"].add_(1.0)
    again = net.build_operators(ops)
    assert all(again[name] is ops[name] for name in ops)
    for name, kt in again.items():
        assert torch.equal(kt, dense_reference(net, name)), name


def test_narrow_populations_get_column_major_operators(monkeypatch):
    net = CompiledNetwork(layered_network(), dtype=torch.float64, seed=2)
    ops = net.build_operators()
    for name in ("narrow", "side"):          # 4 and 5 neurons fed by >= 40 columns
        assert ops[name].T.is_contiguous() and not ops[name].is_contiguous(), name
    assert ops["wide"].is_contiguous()
    monkeypatch.setattr(compiled, "NARROW_SIZE", 0)
    assert CompiledNetwork(layered_network(), seed=2).build_operators()["narrow"].is_contiguous()


def run_free_phase(net, at_rest: bool, steps: int = 25, dt: float = 0.1):
    x = inputs()
    state = net.zero_state(3)
    net.clamp_inputs(state, x)
    dynamics = net.phase(net.build_operators(), x, at_rest=at_rest)
    for _ in range(steps):
        dynamics.gauss_seidel_step_(state, dt)
    return state


def test_column_major_and_row_major_steps_agree(monkeypatch):
    column = run_free_phase(CompiledNetwork(layered_network(), dtype=torch.float64, seed=2), False)
    monkeypatch.setattr(compiled, "NARROW_SIZE", 0)
    row = run_free_phase(CompiledNetwork(layered_network(), dtype=torch.float64, seed=2), False)
    assert float(column.u.abs().max()) > 0.1
    assert torch.allclose(column.u, row.u, rtol=0, atol=1e-12)


@pytest.mark.parametrize("activation", ["relu", "clip", "sigmoid"])
def test_starting_at_rest_skips_silent_products_bit_identically(activation):
    net = CompiledNetwork(layered_network(activation), seed=2)
    expected_silent = set() if activation == "sigmoid" else {"wide", "side", "narrow"}
    assert net.silent_at_rest == expected_silent
    calls = []
    original = ops.addmm_

    def counting(target, *args, **kwargs):
        calls.append(target.shape)
        return original(target, *args, **kwargs)

    plain = run_free_phase(net, at_rest=False, steps=1)
    ops.addmm_ = counting
    try:
        skipped = run_free_phase(net, at_rest=True, steps=1)
    finally:
        ops.addmm_ = original
    # step 1 from rest: wide's sources (wide, narrow) are silent; side and narrow read the
    # freshly updated wide, so only wide's product is skipped
    assert len(calls) == (3 if activation == "sigmoid" else 2)
    assert torch.equal(plain.u, skipped.u) and torch.equal(plain.r, skipped.r)
    full_plain, full_skipped = run_free_phase(net, False), run_free_phase(net, True)
    assert torch.equal(full_plain.u, full_skipped.u)


def test_finiteness_check_flags_non_finite_values_only():
    net = CompiledNetwork(layered_network(), seed=2)
    state = net.zero_state(2)
    dynamics = net.phase(net.build_operators(), inputs(2))
    state.u.fill_(3e38)                     # finite, but their sum overflows to inf
    dynamics.check_finite(state, 7)
    state.u[1, net.slots["narrow"].u_cols.start + 2] = float("nan")
    with pytest.raises(SimulationError, match=r'population "narrow".* step 7 \(sample 1, '
                                              r"neuron 2\)"):
        dynamics.check_finite(state, 7)


def test_input_currents_accept_other_dtypes_and_vectors_and_reject_bad_shapes():
    net = CompiledNetwork(layered_network(), seed=2)
    ops = net.build_operators()
    x = inputs(1)
    batched = net.phase(ops, x).currents["wide"]
    assert batched.dtype == torch.float32
    vector = net.phase(ops, {name: v[0] for name, v in x.items()}).currents["wide"]
    assert torch.equal(batched, vector)
    with pytest.raises(ConfigError, match=r'input "x": got shape \(2, 6\), expected '
                                          r"\(batch, 7\) or \(7,\)"):
        net.phase(ops, {"x": torch.rand(2, 6), "context": torch.rand(2, 3)})


@pytest.mark.parametrize("rows", [1, 2, 3, 6, 10, 20])
@pytest.mark.parametrize("members", [None, 3])
@pytest.mark.parametrize("transposed", [False, True])
def test_in_place_products_of_a_few_rows_are_as_accurate_as_plain_ones(rows, members,
                                                                       transposed):
    """ops.addmm_ (every Euler step's product) in float32 against float64: within a few
    times the error of the plain product, also for 1-10 rows, where MKL's fused
    beta/alpha form lost 10-20x (5.8e-6 against 2.5e-7 at one row here); and for the
    transposed form of a narrow population's product (target u_p.mT, column-major)."""
    g = torch.Generator().manual_seed(0)
    lead = () if members is None else (members,)
    r = torch.rand(*lead, rows, 1010, generator=g)
    kt = torch.randn(1010, 1000, generator=g) / 30
    u = torch.randn(*lead, rows, 1000, generator=g)
    beta, alpha = 0.85, 0.05
    exact = beta * u.double() + alpha * (r.double() @ kt.double())
    plain = beta * u + alpha * (r @ kt)
    if transposed:
        fused = u.clone()
        ops.addmm_(fused.mT, kt.mT, r.mT, beta=beta, alpha=alpha)
    else:
        fused = ops.addmm_(u.clone(), r, kt, beta=beta, alpha=alpha)
    error = float((fused.double() - exact).abs().max())
    assert error <= 4 * max(float((plain.double() - exact).abs().max()), 1e-7)
