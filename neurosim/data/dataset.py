"""The :class:`Dataset` container and :class:`DataError`."""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from neurosim.errors import NeurosimError


class DataError(NeurosimError):
    """A dataset is missing, corrupt or cannot be fetched; the message says how to fix it."""


def check_dtype(dtype: torch.dtype) -> None:
    """Raise DataError unless ``dtype`` is a floating torch dtype."""
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise DataError(f"dtype must be a floating torch dtype (e.g. torch.float32), "
                        f"got {dtype!r}.")


def _move(t: torch.Tensor | None, **kwargs) -> torch.Tensor | None:
    return None if t is None else t.to(**kwargs)


@dataclass(frozen=True, repr=False)
class Dataset:
    """Preprocessed inputs flattened to (N, D) and labels int64 in [0, n_classes).

    An unlabeled dataset has ``train_y``, ``test_y`` and ``n_classes`` None; one without a test
    set has ``test_x`` and ``test_y`` None. ``input_shape`` is the shape one row unflattens to
    (C-order; (channels, height, width) for the named image datasets), and ``normalization``
    names the preprocessing that produced the inputs ("none" for a user's arrays).
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor | None
    test_x: torch.Tensor | None
    test_y: torch.Tensor | None
    n_classes: int | None
    input_shape: tuple[int, ...]
    normalization: str = "default"

    def to(self, dtype: torch.dtype | None = None,
           device: torch.device | str | None = None) -> "Dataset":
        """Return a copy with the inputs cast to ``dtype`` and all tensors on ``device``."""
        return replace(self,
                       train_x=_move(self.train_x, device=device, dtype=dtype),
                       train_y=_move(self.train_y, device=device),
                       test_x=_move(self.test_x, device=device, dtype=dtype),
                       test_y=_move(self.test_y, device=device))

    def __repr__(self) -> str:
        test = None if self.test_x is None else tuple(self.test_x.shape)
        return (f"Dataset({self.name!r}, train={tuple(self.train_x.shape)}, test={test}, "
                f"n_classes={self.n_classes}, input_shape={self.input_shape}, "
                f"normalization={self.normalization!r}, dtype={self.train_x.dtype}, "
                f"device={self.train_x.device})")
