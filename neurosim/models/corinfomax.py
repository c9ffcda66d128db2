"""CorInfoMax networks (Bozkurt, Pehlevan & Erdogan, NeurIPS 2023) as neurosim graphs.

Layers k = 1..P are pyramidal populations ``h1 .. h{P-1}, out`` fed by the input ``x``.
Hidden layer k (g_B = g_A = 1/eps)::

    v_B = W_ff r_{k-1}
    v_A = W_fb r_{k+1} + eps (2 gamma B + g I) r_k   [- eps lambda_k for A1]
    du  = -g u + (1/eps)(v_B - u) + (1/eps)(v_A - u)

Output layer P (g_B = 1/eps, g_A = 1)::

    v_A = (gamma B + g I) r_P - beta (r_P - y)        [- lambda_P for A1]
    du  = -g u + (1/eps)(v_B - u) + (v_A - u)

with r = clip(u, 0, 1) (A-inf) or relu(u) (A1), gamma = (1 - lam)/lam. In the graph: W_ff and
W_fb are plastic basal/apical projections with the ``ep_contrastive`` rule, B is a plastic
lateral apical projection (``gram_xavier`` init, ``corinfomax_lateral`` rule) whose diagonal
acts as autapses and off-diagonal as lateral inhibition, and ``g I`` is a structural identity
autapse. The output nudge ``beta (y - r_P)`` is the protocol's. CorInfoMax-A1 adds one
inhibitory interneuron per layer (population ``i<k>``, state l, output lambda = relu(l))::

    l <- l + eta_lam ( -l + (1^T r_k - 1) + lambda )

updated right after its layer with its own constant step ``eta_lam`` (``fixed_step``).
"""
from __future__ import annotations

from typing import Sequence

from ..errors import ConfigError
from ..graph import Network, network_from_dict

VARIANTS = {"A-inf": "clip", "A1": "relu"}


def _as_list(value, n: int, name: str) -> list[float]:
    if isinstance(value, (int, float)):
        return [float(value)] * n
    value = list(value)
    if len(value) != n:
        raise ConfigError(f"corinfomax: {name} needs {n} values (one per layer), got {len(value)}.")
    return [float(v) for v in value]


def corinfomax_graph(sizes: Sequence[int], *, variant: str = "A-inf", eps: float = 0.15,
                     leak: float = 0.5, lam: float = 0.99999, mu_ff=1.0, mu_fb=0.15,
                     eta_lam=(1e-6, 1e-2), ff_rule=None, fb_rule=None, lateral_rule=None,
                     lateral_precision: str = "full", lateral_refresh_every: int = 1,
                     name: str | None = None) -> dict:
    """The graph tables (as a model file would write them) of a CorInfoMax network with layer
    sizes ``sizes = [n_0, ..., n_P]``; ``mu_ff`` has P entries, ``mu_fb`` P - 1, ``eta_lam``
    (A1) is [hidden, output]. ``ff_rule``, ``fb_rule`` and ``lateral_rule`` replace the
    built-in rules by a rule table such as ``{ type = "my_rule", momentum = 0.9 }``; its ``lr``
    (``lam`` for the lateral rule) is filled in from mu_ff / mu_fb / lam when the rule takes one
    and the table does not set it. ``lateral_precision`` is the ``precision`` of the lateral
    projections B in the dynamics: "full", "bfloat16" or "auto" (bfloat16 for the large ones
    where the CPU has native bfloat16 arithmetic); the term is scaled by 2 gamma ~ 2e-5, so
    bfloat16 changes the potentials by about their float32 rounding (see
    neurosim.graph.projections). ``lateral_refresh_every`` is their ``refresh_every``: the
    lateral product recomputed every that many steps of a phase and held in between (with
    Euler steps; 4 changes the potentials by at most about 4e-8, 1/30 of their float32
    rounding: runs/README.md)."""
    if variant not in VARIANTS:
        raise ConfigError(f'corinfomax: unknown variant "{variant}"; use "A-inf" or "A1".')
    sizes = [int(s) for s in sizes]
    n_layers = len(sizes) - 1
    if n_layers < 1:
        raise ConfigError("corinfomax: sizes needs at least an input and an output size.")
    if not 0 < lam < 1:
        raise ConfigError(f"corinfomax: lam must be in (0, 1), got {lam}.")
    mu_ff = _as_list(mu_ff, n_layers, "mu_ff")
    mu_fb = _as_list(mu_fb, n_layers - 1, "mu_fb") if n_layers > 1 else []
    eta_hidden, eta_out = _as_list(eta_lam, 2, "eta_lam")
    gamma = (1.0 - lam) / lam
    sparse = variant == "A1"
    ff_rules = [_rule(ff_rule, "ep_contrastive", "lr", mu) for mu in mu_ff]
    fb_rules = [_rule(fb_rule, "ep_contrastive", "lr", mu) for mu in mu_fb]
    lateral = _rule(lateral_rule, "corinfomax_lateral", "lam", lam)
    names = [f"h{k}" for k in range(1, n_layers)] + ["out"]
    populations = [{"name": "x", "type": "input", "size": sizes[0]}]
    projections = []
    for k, layer in enumerate(names, start=1):
        hidden = k < n_layers
        populations.append({"name": layer, "type": "pyramidal", "size": sizes[k], "leak": leak,
                            "basal": 1.0 / eps, "apical": 1.0 / eps if hidden else 1.0,
                            "activation": VARIANTS[variant]})
        apical_scale = eps if hidden else 1.0      # v_A terms are written times eps in hidden
        below = "x" if k == 1 else names[k - 2]
        projections.append({"name": f"ff{k}", "source": below, "target": layer,
                            "compartment": "basal", "init": "xavier_uniform",
                            "rules": [ff_rules[k - 1]]})
        if hidden:
            projections.append({"name": f"fb{k}", "source": names[k], "target": layer,
                                "compartment": "apical", "init": "xavier_uniform",
                                "rules": [fb_rules[k - 1]]})
        projections.append({"name": f"lat{k}", "source": layer, "target": layer,
                            "compartment": "apical", "init": "gram_xavier",
                            "gain": apical_scale * (2 * gamma if hidden else gamma),
                            "precision": lateral_precision,
                            "refresh_every": lateral_refresh_every, "rules": [lateral]})
        projections.append({"name": f"aut{k}", "source": layer, "target": layer,
                            "compartment": "apical", "init": "identity",
                            "gain": apical_scale * leak})
        if sparse:
            inter = f"i{k}"
            populations.append({"name": inter, "type": "interneuron", "size": 1, "leak": 1.0,
                                "bias": -1.0, "activation": "relu",
                                "fixed_step": eta_hidden if hidden else eta_out})
            projections += [
                {"name": f"sum{k}", "source": layer, "target": inter, "init": "ones",
                 "plastic": False},
                {"name": f"self{k}", "source": inter, "target": inter, "init": "identity"},
                {"name": f"inh{k}", "source": inter, "target": layer, "compartment": "apical",
                 "init": "ones", "gain": -apical_scale, "plastic": False},
            ]
    title = name or f"corinfomax_{variant}_{'-'.join(map(str, sizes))}"
    return {"network": {"name": title}, "population": populations, "projection": projections}


def _rule(table, default: str, key: str, value: float) -> dict:
    """A rule table: the built-in one, or the user's with ``key`` filled in when it takes it."""
    from ..plasticity.base import rule_class
    from ..registry import parameters
    if table is None:
        return {"type": default, key: value}
    if not isinstance(table, dict) or "type" not in table:
        raise ConfigError(f'corinfomax: a rule override is a table with a "type", e.g. '
                          f'{{ type = "{default}" }}; got {table!r}.')
    table = dict(table)
    if key not in table and key in parameters(rule_class(table["type"], "corinfomax")):
        table[key] = value
    return table


def corinfomax_network(sizes: Sequence[int], **params) -> Network:
    """A validated :class:`Network` of a CorInfoMax model (see :func:`corinfomax_graph`)."""
    return network_from_dict(corinfomax_graph(sizes, **params), where="corinfomax")
