"""Uniform draws from one generator, or from each ensemble member's own.

An ensemble (neurosim.training.ensemble) passes one generator per member; member m's slice of
a draw of shape (M, ...) then comes from generator m with shape (...), exactly as its
separate run draws it, so every member's random stream stays its own.
"""
from __future__ import annotations

import torch

from .errors import ConfigError


def uniform(shape, generator, *, dtype: torch.dtype, device) -> torch.Tensor:
    """U[0, 1) of ``shape`` from ``generator``, or, given a list of M generators, a stack of
    M draws of ``shape[1:]`` (member m's from generator m)."""
    if isinstance(generator, (list, tuple)):
        if len(shape) == 0 or shape[0] != len(generator):
            raise ConfigError(f"a random draw of shape {tuple(shape)} for {len(generator)} "
                              "ensemble members (one generator each) needs the members on its "
                              "first axis; give one generator, or a shape (members, ...).")
        return torch.stack([torch.rand(tuple(shape[1:]), generator=g, dtype=dtype,
                                       device=device) for g in generator])
    return torch.rand(tuple(shape), generator=generator, dtype=dtype, device=device)


__all__ = ["uniform"]
