"""A seeded split of sample indices into training and validation sets."""
from __future__ import annotations

import numbers

import numpy as np
import torch

from neurosim.errors import ConfigError


def validation_count(n: int, size: int | float, where: str | None = None) -> int:
    """The number of validation samples ``size`` asks for out of ``n``: a fraction in (0, 1)
    (rounded to the nearest integer) or a count in [1, n-1]. ``where`` prefixes messages."""
    at = f"{where}: " if where else ""
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, numbers.Integral):
        raise ConfigError(f"{at}the number of samples must be an integer, got "
                          f"{type(n).__name__} {n!r}.")
    if n < 2:
        raise ConfigError(f"{at}{n} sample(s) cannot be split into training and "
                          f"validation sets; a split needs at least 2 samples.")
    if isinstance(size, (bool, np.bool_)) or not isinstance(size, numbers.Real):
        raise ConfigError(f"{at}the validation size must be a fraction in (0, 1) or a "
                          f"sample count, got {type(size).__name__} {size!r}; e.g. "
                          f"validation = 0.1.")
    if isinstance(size, numbers.Integral):
        if not 1 <= size <= n - 1:
            raise ConfigError(f"{at}a validation count must be in 1..{n - 1} for {n} "
                              f"samples, got {size}; for a fraction use a number in (0, 1), "
                              f"e.g. 0.1.")
        return int(size)
    if not 0 < size < 1:
        raise ConfigError(f"{at}a validation fraction must lie strictly between 0 and 1, "
                          f"got {size!r}; for a count of samples use an integer in 1..{n - 1}.")
    count = round(size * n)
    if not 1 <= count <= n - 1:
        raise ConfigError(f"{at}a fraction of {size!r} of {n} samples leaves "
                          f"{count} for validation and {n - count} for training; each needs "
                          f"at least one, so use a count in 1..{n - 1} or another fraction.")
    return count


def validation_split(n: int, size: int | float, seed: int, *,
                     where: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``range(n)`` into (train, validation) int64 index tensors, each sorted ascending.

    ``size``: see :func:`validation_count`. The permutation is drawn from a private
    ``torch.Generator`` seeded with ``seed``, so no other random stream is touched and the split
    is the same in every process (for a given torch version). ``where`` prefixes messages.
    """
    count = validation_count(n, size, where)
    at = f"{where}: " if where else ""
    if (isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral)
            or not 0 <= seed < 2**64):
        raise ConfigError(f"{at}the seed must be an integer in 0..2**64-1, got "
                          f"{type(seed).__name__} {seed!r}.")
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    order = torch.randperm(n, generator=generator)
    return order[count:].sort().values, order[:count].sort().values
