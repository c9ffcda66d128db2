"""A user's own arrays as a :class:`Dataset`: ``train_x`` and optionally ``train_y``, ``test_x``,
``test_y`` in a .npz archive (numpy.savez) or an HDF5 file (.h5/.hdf5, datasets at the root).

Inputs are (samples, features) or more dims, flattened per sample; labels are 1-D integer class
indices 0..C-1, one per row. Labels come for both splits or for neither (unlabeled). Nothing is
unpickled: object arrays are refused.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import torch

from .dataset import DataError, Dataset, check_dtype

ARRAY_NAMES = ("train_x", "train_y", "test_x", "test_y")
SUFFIXES = (".npz", ".h5", ".hdf5")
_SAVE_HINT = "e.g. numpy.savez(path, train_x=x, train_y=y)"
_NUMPY_FLOAT = {torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64}


def load_array_file(path: str | os.PathLike, *, dtype: torch.dtype = torch.float32,
                    where: str = "[data]") -> Dataset:
    """Read and check the arrays in ``path``; inputs as ``dtype``, labels int64.

    The dataset is named after the file, its ``input_shape`` is train_x's per-sample shape and
    its ``normalization`` is "none" (values are used as stored). ``where`` prefixes messages.
    """
    check_dtype(dtype)
    path = Path(path).expanduser()
    label = f"{where}: {path}"
    if not path.exists():
        raise DataError(f"{label}: no such file; check the path.")
    if not path.is_file():
        raise DataError(f"{label}: not a file; give the .npz, .h5 or .hdf5 file itself.")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(f'{label}: unsupported file type "{path.suffix}"; save the arrays as '
                        f".npz ({_SAVE_HINT}) or as HDF5 (.h5, .hdf5).")
    reader = _read_npz if suffix == ".npz" else _read_hdf5
    arrays, held = reader(path, label)
    return _build(arrays, held, path, label, dtype)


def _read_npz(path: Path, label: str) -> tuple[dict[str, np.ndarray], list[str]]:
    """The known arrays of a .npz archive, and the names of all arrays it holds."""
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as exc:  # anything a damaged or foreign file can raise
        raise DataError(f"{label}: not a readable .npz archive ({exc}); the file is damaged or "
                        f"of another kind. Save the arrays with {_SAVE_HINT}.") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"{label}: holds a single unnamed array (.npy format), not named "
                        f"arrays; save them with {_SAVE_HINT}.")
    with archive:
        held = list(archive.files)
        arrays = {}
        for name in ARRAY_NAMES:
            if name not in held:
                continue
            try:
                arrays[name] = archive[name]
            except ValueError as exc:
                if "pickle" in str(exc).lower():
                    raise DataError(f"{label}: array {name} holds Python objects (dtype "
                                    f"object), which are not loaded because unpickling can run "
                                    f"code; store it as a numeric array, e.g. "
                                    f"numpy.asarray({name}, dtype=numpy.float32).") from None
                raise _damaged(label, name, exc) from None
            except Exception as exc:  # corrupt member: zlib, zipfile, EOF errors
                raise _damaged(label, name, exc) from None
    return arrays, held


def _read_hdf5(path: Path, label: str) -> tuple[dict[str, np.ndarray], list[str]]:
    """The known datasets at the root of an HDF5 file, and the names of all root members."""
    import h5py  # lazy: only HDF5 users pay for the import

    try:
        f = h5py.File(path, "r")
    except Exception as exc:  # h5py raises OSError, but also others for odd files
        raise DataError(f"{label}: not a readable HDF5 file ({exc}); the file is damaged or of "
                        f"another kind. Write the arrays as datasets at the file's root, e.g. "
                        f"f.create_dataset('train_x', data=x).") from None
    with f:
        try:
            held = [f"{k}/" if isinstance(f[k], h5py.Group) else k for k in f]
        except Exception as exc:  # a damaged root group
            raise _damaged(label, "the list of arrays", exc) from None
        arrays = {}
        for name in ARRAY_NAMES:
            if f"{name}/" in held:
                raise DataError(f"{label}: {name} is a group, not an array; store the array "
                                f"itself at the file's root under the name {name}.")
            if name in held:
                try:
                    arrays[name] = np.asarray(f[name][()])
                except Exception as exc:  # corrupt data blocks, unsupported types
                    raise _damaged(label, name, exc) from None
    return arrays, held


def _damaged(label: str, name: str, exc: Exception) -> DataError:
    return DataError(f"{label}: cannot read {name} ({exc}); the file is damaged. Write it "
                     f"again.")


def _build(arrays: dict[str, np.ndarray], held: list[str], path: Path, label: str,
           dtype: torch.dtype) -> Dataset:
    """Check the arrays' presence and consistency, then convert them."""
    missing = [n for n in ARRAY_NAMES if n not in arrays]
    for name in held:
        key = re.sub(r"[^a-z0-9]", "", name.lower())
        for meant in missing:
            split, kind = meant.split("_")
            if key in (split + kind, kind + split):
                raise DataError(f'{label}: array "{name}" looks like {meant} but is not named '
                                f"so; rename it to {meant} (the arrays read are "
                                f"{', '.join(ARRAY_NAMES)}; others are ignored).")
    if "train_x" not in arrays:
        listed = ", ".join(held) if held else "no arrays"
        raise DataError(f"{label}: no array named train_x (the file holds {listed}). Store the "
                        f"training inputs as train_x and optionally train_y, test_x, test_y, "
                        f"{_SAVE_HINT}.")
    if "test_y" in arrays and "test_x" not in arrays:
        raise DataError(f"{label}: test_y is given without test_x; add the test inputs as "
                        f"test_x or remove test_y.")
    if "test_y" in arrays and "train_y" not in arrays:
        raise DataError(f"{label}: test_y is given without train_y; add the training labels "
                        f"as train_y, or remove test_y for an unlabeled dataset.")
    if "train_y" in arrays and "test_x" in arrays and "test_y" not in arrays:
        raise DataError(f"{label}: train_y is given but test_y is not; add the test labels "
                        f"as test_y (or remove test_x for a dataset without a test set).")
    train_x = _inputs(arrays["train_x"], "train_x", label, dtype)
    test_x = None
    if "test_x" in arrays:
        test_x = _inputs(arrays["test_x"], "test_x", label, dtype)
        if test_x.shape[1] != train_x.shape[1]:
            raise DataError(f"{label}: test_x has {test_x.shape[1]} features per row (shape "
                            f"{arrays['test_x'].shape}) but train_x has {train_x.shape[1]} "
                            f"(shape {arrays['train_x'].shape}); both must hold the same "
                            f"kind of inputs.")
    train_y = test_y = n_classes = None
    if "train_y" in arrays:
        train_y = _labels(arrays["train_y"], "train_y", "train_x", len(train_x), label)
        n_classes = int(train_y.max()) + 1
        if "test_y" in arrays:
            test_y = _labels(arrays["test_y"], "test_y", "test_x", len(test_x), label)
            n_classes = max(n_classes, int(test_y.max()) + 1)
    return Dataset(name=str(path), train_x=train_x, train_y=train_y, test_x=test_x,
                   test_y=test_y, n_classes=n_classes,
                   input_shape=tuple(arrays["train_x"].shape[1:]), normalization="none")


def _inputs(a: np.ndarray, name: str, label: str, dtype: torch.dtype) -> torch.Tensor:
    """A checked input array as a (samples, features) tensor of ``dtype``."""
    if a.dtype.kind not in "biuf":
        raise DataError(f"{label}: {name} has dtype {a.dtype}; inputs must be numbers (bool, "
                        f"integer or float), e.g. {name}.astype(numpy.float32).")
    if a.ndim < 2:
        raise DataError(f"{label}: {name} has shape {a.shape}; inputs must be (samples, "
                        f"features) or have more dims (flattened per sample). For one feature "
                        f"per sample use {name}.reshape(-1, 1).")
    if a.size == 0:
        raise DataError(f"{label}: {name} is empty (shape {a.shape}); it needs at least one "
                        f"sample and one feature.")
    if a.dtype.kind == "f":
        bad = ~np.isfinite(a.reshape(len(a), -1))
        if bad.any():
            raise DataError(f"{label}: {name} holds {int(bad.sum())} non-finite values (NaN or "
                            f"infinity), the first in row {int(bad.any(1).argmax())}; remove "
                            f"or replace them.")
    with np.errstate(over="ignore"):
        flat = a.reshape(len(a), -1).astype(_NUMPY_FLOAT.get(dtype, np.float32), copy=False)
    x = torch.from_numpy(flat).to(dtype)
    if not torch.isfinite(x).all():
        raise DataError(f"{label}: {name} has values too large for {dtype} (largest magnitude "
                        f"{float(np.abs(a).max()):.4g}); rescale the inputs or use a wider "
                        f"dtype.")
    return x


def _labels(a: np.ndarray, name: str, x_name: str, n_rows: int, label: str) -> torch.Tensor:
    """A checked label array as an int64 tensor."""
    if a.dtype.kind not in "iu":
        raise DataError(f"{label}: {name} has dtype {a.dtype}; labels must be integer class "
                        f"indices 0..C-1, e.g. {name}.astype(numpy.int64) if they are whole "
                        f"numbers.")
    if a.ndim != 1:
        raise DataError(f"{label}: {name} has shape {a.shape}; labels must be 1-D, one class "
                        f"index per row of {x_name} (one-hot labels: {name}.argmax(1); a column: "
                        f"{name}.reshape(-1)).")
    if len(a) != n_rows:
        raise DataError(f"{label}: {name} has {len(a)} labels but {x_name} has {n_rows} rows; "
                        f"they must match one to one.")
    low, high = int(a.min()), int(a.max())
    bad = low if low < 0 else high if high > np.iinfo(np.int64).max else None
    if bad is not None:
        raise DataError(f"{label}: {name} holds label {bad} (row {int(np.argmax(a == bad))}); "
                        f"labels must be class indices 0..C-1 (non-negative int64), e.g. "
                        f"shift them with {name} - {name}.min().")
    return torch.from_numpy(a.astype(np.int64))
