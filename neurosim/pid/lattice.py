"""The redundancy lattice of partial information decomposition (PID) for two or three sources.

An antichain alpha = {a_1, ..., a_m} is a set of non-empty subsets a_j of the sources, none
contained in another. Antichains are ordered by

    beta <= alpha   iff   every a in alpha contains some b in beta

(Williams & Beer 2010). A redundancy measure assigns I_cap(Y : alpha) to every antichain and
the partial information atoms Pi follow by Moebius inversion of

    I_cap(alpha) = sum_{beta <= alpha} Pi(beta),   i.e.  I = Z Pi,  Pi = M I,  M = Z^-1

with Z[alpha, beta] = 1 iff beta <= alpha (Gutknecht, Wibral, Makkeh, Proc. R. Soc. A 477:
20210110, 2021). For two and three sources M has entries -1, 0 and +1 only.

Atom order (the order of goal vectors): three sources F, C, L (= 1, 2, 3)

    [0] {F}{C}{L} [1] {F}{C} [2] {F}{L} [3] {C}{L} [4] {F}{CL} [5] {C}{FL} [6] {L}{FC}
    [7] {F} [8] {C} [9] {L} [10] {FC}{FL}{CL} [11] {FC}{FL} [12] {FC}{CL} [13] {FL}{CL}
    [14] {FC} [15] {FL} [16] {CL} [17] {FCL}

and two sources 1, 2: [0] {1} [1] {2} [2] {1}{2} [3] {12} (Schneider et al., ICLR 2025).
In code an antichain is a tuple of tuples of 0-based source indices, e.g. {F}{CL} = ((0,),
(1, 2)).
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from ..errors import ConfigError, did_you_mean

__all__ = ["Lattice", "get_lattice", "leq", "union_coefficients"]

Antichain = tuple[tuple[int, ...], ...]

# The order of the atoms (and of goal vectors), written with the digits 1..n.
_ORDER = {
    2: ["{1}", "{2}", "{1}{2}", "{12}"],
    3: ["{1}{2}{3}", "{1}{2}", "{1}{3}", "{2}{3}", "{1}{23}", "{2}{13}", "{3}{12}",
        "{1}", "{2}", "{3}", "{12}{13}{23}", "{12}{13}", "{12}{23}", "{13}{23}",
        "{12}", "{13}", "{23}", "{123}"],
}
_SYMBOLS = {2: "12", 3: "FCL"}


def leq(beta: Antichain, alpha: Antichain) -> bool:
    """The lattice order: beta <= alpha iff for every a in alpha some b in beta has b <= a
    (b a subset of a)."""
    return all(any(set(b) <= set(a) for b in beta) for a in alpha)


def union_coefficients(alpha: Antichain) -> dict[tuple[int, ...], int]:
    """Inclusion-exclusion of the union of the events E_a = {S_a = s_a}, a in alpha:

        P(union_a E_a) = sum_{J non-empty subset of alpha} (-1)^(|J|-1) P(S_{U J} = s_{U J})

    (an intersection of the E_a is the joint event on the union U J of their index sets).
    Returns {index set U J: summed coefficient}, terms with coefficient 0 dropped."""
    coefficients: dict[tuple[int, ...], int] = {}
    for k in range(1, len(alpha) + 1):
        for group in itertools.combinations(alpha, k):
            joint = tuple(sorted(set().union(*group)))
            coefficients[joint] = coefficients.get(joint, 0) + (-1) ** (k - 1)
    return {joint: c for joint, c in coefficients.items() if c != 0}


def _antichains(n: int) -> list[Antichain]:
    """Every antichain of non-empty subsets of {0..n-1} (in no particular order)."""
    subsets = [tuple(c) for r in range(1, n + 1) for c in itertools.combinations(range(n), r)]
    found = []
    for m in range(1, len(subsets) + 1):
        for group in itertools.combinations(subsets, m):
            if all(not set(a) <= set(b) for a, b in itertools.permutations(group, 2)):
                found.append(tuple(sorted(group, key=lambda a: (len(a), a))))
    return found


def _parse(name: str, symbols: str) -> Antichain | None:
    """"{F}{CL}" (or "{1}{23}") -> ((0,), (1, 2)); None if it is not a valid antichain name."""
    text = name.replace(" ", "")
    parts = re.findall(r"\{([^{}]*)\}", text)
    if not parts or "".join("{" + p + "}" for p in parts) != text:
        return None
    digits = "".join(str(i + 1) for i in range(len(symbols)))
    alpha = []
    for part in parts:
        if not part:
            return None
        index = []
        for ch in part:
            if ch in symbols:
                index.append(symbols.index(ch))
            elif ch in digits:
                index.append(digits.index(ch))
            else:
                return None
        if len(set(index)) != len(index):
            return None
        alpha.append(tuple(sorted(index)))
    return tuple(sorted(alpha, key=lambda a: (len(a), a)))


@dataclass(frozen=True)
class Lattice:
    """The PID lattice of ``n_sources`` (2 or 3) sources: ``antichains`` in the atom order,
    their ``names`` ("{F}{CL}"; "{1}{2}" for two sources), the 0/1 ``order_matrix``
    Z[i, j] = 1 iff antichain j <= antichain i, and ``moebius`` M = Z^-1 (Pi = M I)."""

    n_sources: int
    antichains: tuple = field(init=False)
    names: tuple = field(init=False)
    order_matrix: np.ndarray = field(init=False, repr=False)
    moebius: np.ndarray = field(init=False, repr=False)

    def __post_init__(self):
        if self.n_sources not in _ORDER:
            raise ConfigError(f"pid lattice: {self.n_sources} sources; only 2 (bivariate) and "
                              "3 (trivariate) are supported.")
        n = self.n_sources
        symbols = _SYMBOLS[n]
        antichains = tuple(_parse(name, "123"[:n]) for name in _ORDER[n])
        assert set(antichains) == set(_antichains(n)), "atom order misses antichains"
        names = tuple("".join("{" + "".join(symbols[i] for i in a) + "}" for a in alpha)
                      for alpha in antichains)
        order = np.array([[int(leq(beta, alpha)) for beta in antichains] for alpha in antichains],
                         dtype=np.int64)
        inverse = np.linalg.inv(order.astype(np.float64))
        moebius = np.rint(inverse).astype(np.int64)
        assert np.abs(inverse - moebius).max() < 1e-9 and (moebius @ order == np.eye(len(order))
                                                          ).all()
        order.setflags(write=False)
        moebius.setflags(write=False)
        object.__setattr__(self, "antichains", antichains)
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "order_matrix", order)
        object.__setattr__(self, "moebius", moebius)

    @property
    def n_atoms(self) -> int:
        """Number of antichains (= atoms): 4 for two sources, 18 for three."""
        return len(self.antichains)

    @property
    def symbols(self) -> str:
        """The one-letter source names: "FCL" for three sources, "12" for two."""
        return _SYMBOLS[self.n_sources]

    @property
    def top(self) -> int:
        """Index of the top antichain {FCL} ({12}), whose I_sx is I(Y; all sources)."""
        return self.n_atoms - 1

    def index(self, alpha) -> int:
        """Position of an antichain given as a name ("{F}{CL}", "{1}{23}", "{CL}{F}") or as a
        tuple of 0-based index tuples; ConfigError (with a suggestion) if there is none."""
        if isinstance(alpha, str):
            parsed = _parse(alpha, self.symbols)
        else:
            try:
                parsed = tuple(sorted((tuple(sorted(int(i) for i in a)) for a in alpha),
                                      key=lambda a: (len(a), a)))
            except TypeError:
                parsed = None
        if parsed in self.antichains:
            return self.antichains.index(parsed)
        raise ConfigError(f"pid lattice ({self.n_sources} sources): {alpha!r} is not an "
                          f"antichain.{did_you_mean(str(alpha), self.names)} Antichains: "
                          + ", ".join(self.names) + ".")


@lru_cache(maxsize=None)
def get_lattice(n_sources: int) -> Lattice:
    """The (cached) :class:`Lattice` of ``n_sources`` = 2 or 3 sources."""
    return Lattice(int(n_sources))
