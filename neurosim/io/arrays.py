"""Arrays named in a model file: ``{ file = "W.npy" }`` or ``{ file = "weights.h5",
dataset = "W1" }``.

A relative path is relative to the model file's directory (``base_dir``; the working
directory when a model is built from text without one). A .npy file is opened memory-mapped,
an HDF5 dataset read on demand, so a model file that names a 4,000 x 4,000 weight matrix
stays a few lines long, parses in microseconds and is stored as such in recordings and
checkpoints (the values themselves are in the checkpoint's weights).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import ConfigError

HDF5_SUFFIXES = (".h5", ".hdf5")
KEYS = ("file", "dataset")


@dataclass(frozen=True)
class ArrayFile:
    """An array stored in a file: ``path`` (absolute) and, for HDF5, the ``dataset``."""

    path: str
    dataset: str | None = None

    @classmethod
    def from_table(cls, table: Mapping, where: str, base_dir=None,
                   allowed: tuple = KEYS) -> "ArrayFile":
        """Check ``{file = ..., dataset = ...}`` (ConfigError naming ``where``) and resolve the
        path against ``base_dir``; the file must exist."""
        unknown = sorted(set(table) - set(allowed))
        if unknown or not isinstance(table.get("file"), str):
            raise ConfigError(f'{where}: name an array file as {{ file = "W.npy" }} or '
                              f'{{ file = "weights.h5", dataset = "W" }}; got {dict(table)!r}.')
        path = Path(table["file"]).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = Path(base_dir) / path
        dataset = table.get("dataset")
        if not path.is_file():
            raise ConfigError(f"{where}: file {str(path)!r} does not exist (relative paths are "
                              "relative to the model file's directory, or to the working "
                              "directory for model text without one).")
        if path.suffix in HDF5_SUFFIXES:
            if not isinstance(dataset, str) or not dataset:
                raise ConfigError(f'{where}: name the HDF5 dataset of {path.name}, e.g. '
                                  'dataset = "W".')
        elif path.suffix == ".npy":
            if dataset is not None:
                raise ConfigError(f"{where}: dataset applies to HDF5 files (.h5, .hdf5) only; "
                                  f"{path.name} is a .npy file.")
        else:
            raise ConfigError(f"{where}: {path.name} is neither a .npy nor an HDF5 (.h5, "
                              ".hdf5) file.")
        return cls(str(path.resolve()), dataset)

    def _open(self, where: str):
        if self.dataset is None:
            try:
                return np.load(self.path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as err:
                raise ConfigError(f"{where}: cannot read {self.path} as .npy ({err}).") from None
        import h5py
        try:
            handle = h5py.File(self.path, "r")
        except OSError as err:
            raise ConfigError(f"{where}: cannot read {self.path} as HDF5 ({err}).") from None
        if self.dataset not in handle or not isinstance(handle[self.dataset], h5py.Dataset):
            names = []
            handle.visititems(lambda name, obj: names.append(name)
                              if isinstance(obj, h5py.Dataset) else None)
            handle.close()
            raise ConfigError(f"{where}: {self.path} has no dataset {self.dataset!r} (it has: "
                              f"{', '.join(names[:10]) or 'none'}).")
        return handle

    def shape(self, where: str) -> tuple[int, ...]:
        """The array's shape, read from the file's header."""
        opened = self._open(where)
        if self.dataset is None:
            return tuple(opened.shape)
        with opened:
            return tuple(opened[self.dataset].shape)

    def load(self, where: str) -> np.ndarray:
        """The array's values (a numeric array; ConfigError otherwise)."""
        opened = self._open(where)
        if self.dataset is None:
            values = np.array(opened)          # a writable copy of the mapped file
        else:
            with opened:
                values = opened[self.dataset][()]
        values = np.asarray(values)
        if not np.issubdtype(values.dtype, np.number) or \
                np.issubdtype(values.dtype, np.complexfloating):
            raise ConfigError(f"{where}: {self.path} holds {values.dtype} values, not real "
                              "numbers.")
        if not values.dtype.isnative:                # e.g. big-endian files: torch reads native
            values = values.astype(values.dtype.newbyteorder("="))
        return values

    def __str__(self) -> str:
        return self.path if self.dataset is None else f"{self.path}:{self.dataset}"


def is_array_file(value: Any) -> bool:
    """Whether a model-file value names an array file (a table with ``file``)."""
    return isinstance(value, Mapping) and "file" in value
