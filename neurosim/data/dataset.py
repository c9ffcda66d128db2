"""The :class:`Dataset` container and :class:`DataError`."""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from neurosim.errors import NeurosimError


class DataError(NeurosimError):
    """A dataset is missing, corrupt or cannot be fetched; the message says how to fix it."""


@dataclass(frozen=True, repr=False)
class Dataset:
    """A preprocessed train/test split: inputs flattened to (N, D), labels int64 in [0, n_classes).

    ``input_shape`` is the (channels, height, width) shape one row unflattens to (C-order), and
    ``normalization`` names the preprocessing that produced the inputs.
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    n_classes: int
    input_shape: tuple[int, ...]
    normalization: str = "default"

    def to(self, dtype: torch.dtype | None = None,
           device: torch.device | str | None = None) -> "Dataset":
        """Return a copy with the inputs cast to ``dtype`` and all tensors on ``device``."""
        return replace(self,
                       train_x=self.train_x.to(device=device, dtype=dtype),
                       train_y=self.train_y.to(device=device),
                       test_x=self.test_x.to(device=device, dtype=dtype),
                       test_y=self.test_y.to(device=device))

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, train={tuple(self.train_x.shape)}, "
                f"test={tuple(self.test_x.shape)}, n_classes={self.n_classes}, "
                f"input_shape={self.input_shape}, normalization={self.normalization!r}, "
                f"dtype={self.train_x.dtype}, device={self.train_x.device})")
