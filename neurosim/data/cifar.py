"""CIFAR-10/100 python batches: a restricted unpickler and the paper's normalisation.

A batch is a pickled dict with "data" (uint8 array (N, 3072), each row the 32x32 red, green
then blue planes) and its labels, a list of ints: "labels" (CIFAR-10), or "fine_labels"
(0..99) and "coarse_labels" (0..19) in CIFAR-100's train and test files. Unpickling runs code
named in the file, so only the three callables a numpy array needs are allowed (the same for
both datasets); anything else is refused.
"""
from __future__ import annotations

import io
import pickle

import numpy as np
import torch

from .dataset import DataError
from .registry import DATASETS, DatasetInfo

try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2023, 0.1994, 0.2010)

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _Refused(pickle.UnpicklingError):
    """The pickle names a global outside ``_ALLOWED``."""


class _BatchUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals in ``_ALLOWED``."""

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise _Refused(f"refusing to load {module}.{name}") from None


def read_batch(data: bytes | bytearray, where: str,
               info: DatasetInfo | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Unpickle one batch of ``info`` (default CIFAR-10): images uint8 (N, 3, 32, 32) and
    labels int64 (N,), taken from the batch's ``info.label_key`` and each in
    [0, ``info.n_classes``)."""
    info = DATASETS["cifar10"] if info is None else info
    title, archive, key = info.title.split(" (")[0], info.archive.name, info.label_key
    try:
        batch = _BatchUnpickler(io.BytesIO(data), encoding="latin1").load()
    except _Refused as exc:
        raise DataError(f"{where}: {exc}. A {title} batch holds only numpy arrays, lists and "
                        f"strings, so this file is not an official batch (it may be malicious). "
                        f"Use the official {archive}.") from None
    except Exception as exc:  # anything a malformed pickle can raise
        raise DataError(f"{where}: not a valid {title} batch ({exc}); the file is damaged. "
                        f"Use the official {archive}.") from None
    if isinstance(batch, dict):
        batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    images = batch.get("data") if isinstance(batch, dict) else None
    labels = batch.get(key) if isinstance(batch, dict) else None
    if (not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 2
            or images.shape[1] != 3072 or not isinstance(labels, list)
            or len(labels) != len(images)
            or not all(type(v) is int for v in labels)):   # bools and floats are refused
        raise DataError(f"{where}: not a {title} batch (expected a dict with 'data', a uint8 "
                        f"array (N, 3072), and '{key}', a list of N ints). Use the official "
                        f"{archive}.")
    y = np.asarray(labels, dtype=np.int64)
    if len(y) and (y.min() < 0 or y.max() >= info.n_classes):
        bad = int(y.min()) if y.min() < 0 else int(y.max())
        raise DataError(f"{where}: label {bad} in '{key}' is outside 0..{info.n_classes - 1}, "
                        f"so this is not an official {title} batch. Use the official "
                        f"{archive}.")
    return images.reshape(-1, 3, 32, 32), y


def standardize_(x: torch.Tensor) -> torch.Tensor:
    """In place: flattened CHW pixels in [0, 255] -> (x/255 - mean_c) / (3 std_c) per channel."""
    planes = x.view(len(x), 3, -1)
    mean = torch.tensor(MEAN, dtype=x.dtype, device=x.device)[:, None]
    scale = torch.tensor([3 * s for s in STD], dtype=x.dtype, device=x.device)[:, None]
    return planes.div_(255).sub_(mean).div_(scale).view_as(x)
