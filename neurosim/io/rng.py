"""Capture and restore every random number generator a run uses.

:func:`capture_rng_state` returns a dict of tree-serialisable leaves (see :mod:`.tree`)::

    {"torch": uint8 tensor,                        # torch's global CPU generator
     "cuda": {"0": uint8 tensor, ...},             # one per CUDA device (only if CUDA is available)
     "numpy": {"bit_generator": "MT19937", "keys": uint32 array, "pos": int,
               "has_gauss": int, "cached_gaussian": float},   # np.random legacy global state
     "python": {"version": int, "internal": int64 array, "gauss_next": float | None},
     "generators": {"<name>": uint8 tensor, ...}}  # the named torch.Generator objects
"""
from __future__ import annotations

import random
import warnings
from typing import Any, Mapping

import numpy as np
import torch

from neurosim.io.errors import CheckpointError


def capture_rng_state(generators: Mapping[str, torch.Generator] | None = None) -> dict[str, Any]:
    """Snapshot torch (CPU and every CUDA device), numpy, Python and the named generators."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = {str(i): s for i, s in enumerate(torch.cuda.get_rng_state_all())}
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state["numpy"] = {"bit_generator": str(name), "keys": np.array(keys, dtype=np.uint32),
                      "pos": int(pos), "has_gauss": int(has_gauss),
                      "cached_gaussian": float(cached)}
    version, internal, gauss_next = random.getstate()
    state["python"] = {"version": int(version), "internal": np.array(internal, dtype=np.int64),
                       "gauss_next": gauss_next}
    state["generators"] = {str(k): g.get_state() for k, g in (generators or {}).items()}
    return state


def restore_rng_state(state: Mapping[str, Any],
                      generators: Mapping[str, torch.Generator] | None = None, *,
                      global_state: bool = True) -> None:
    """Restore a :func:`capture_rng_state` snapshot, including the named generators (with
    ``global_state=False`` only those: torch's, numpy's and Python's global states are left
    as they are).

    Saved CUDA states are restored to the devices that exist; if CUDA is unavailable (or has
    fewer devices) the rest is restored and a warning says which states were skipped.
    """
    missing = [k for k in ("torch", "numpy", "python") if k not in state]
    if missing:
        raise CheckpointError(f"RNG state lacks {', '.join(missing)} (has: {', '.join(state)}); "
                              f"pass a dict made by capture_rng_state().")
    if global_state:
        torch.set_rng_state(_cpu_bytes(state["torch"]))
        _restore_cuda(state.get("cuda") or {})
        n = state["numpy"]
        np.random.set_state((str(n["bit_generator"]), np.asarray(n["keys"], dtype=np.uint32),
                             int(n["pos"]), int(n["has_gauss"]), float(n["cached_gaussian"])))
        p = state["python"]
        random.setstate((int(p["version"]), tuple(int(x) for x in np.asarray(p["internal"])),
                         p["gauss_next"]))
    saved = state.get("generators") or {}
    for name, gen in (generators or {}).items():
        if name not in saved:
            listed = ", ".join(f'"{k}"' for k in saved) or "(none)"
            raise CheckpointError(f'RNG state has no generator "{name}" to restore; saved '
                                  f"generators: {listed}. Pass the generators by the names they "
                                  f"had when the state was captured.")
        gen.set_state(_cpu_bytes(saved[name]))


def _restore_cuda(cuda: Mapping[str, Any]) -> None:
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    skipped = [k for k in cuda if int(k) >= available]
    for k, s in cuda.items():
        if int(k) < available:
            torch.cuda.set_rng_state(_cpu_bytes(s), device=int(k))
    if skipped:
        warnings.warn(f"RNG state holds CUDA generator states for devices {', '.join(skipped)}, "
                      f"but this machine has {available} CUDA device(s); those states were not "
                      f"restored, so GPU random numbers will differ from the original run.",
                      RuntimeWarning, stacklevel=3)


def _cpu_bytes(value: Any) -> torch.Tensor:
    """A generator state as the uint8 CPU tensor torch expects."""
    return torch.as_tensor(np.asarray(value) if not isinstance(value, torch.Tensor) else value,
                           dtype=torch.uint8).cpu()
