"""Locating, verifying, decoding and preprocessing datasets; the [data] table entry point."""
from __future__ import annotations

import os
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from neurosim.errors import ConfigError
from neurosim.graph import check_keys

from . import cifar, digits
from .arrays import SUFFIXES, load_array_file
from .dataset import DataError, Dataset, check_dtype
from .files import find_file, read_verified
from .idx import decode_idx
from .registry import DATASETS, DatasetInfo, get_info, search_dirs

NORMALIZATIONS = ("default", "unit", "zscore")
""""default": the paper's preprocessing (digits /16, MNIST-like and CIFAR-100 /255, CIFAR-10
per-channel (x - mean) / (3 std)); "unit": pixels scaled to [0, 1] for every dataset;
"zscore": pixels in [0, 1], then (x - m) / s with one global mean m and standard deviation s
of the training images (all pixels together, before any validation split, as the infomorphic
networks' code does; the test images use the training m and s)."""

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def locate(info: DatasetInfo, root: str | os.PathLike | None = None) -> Path:
    """The first searched directory holding all of ``info``'s files, else a DataError."""
    dirs = search_dirs(info, root)
    partial = []
    for d in dirs:
        missing = [s.name for s in info.files if find_file(d, s.name) is None]
        if not missing:
            return d
        if len(missing) < len(info.files):
            partial.append(f"{d} lacks {', '.join(missing)}")
    note = f" ({'; '.join(partial)})" if partial else ""
    raise DataError(f"{info.title} not found in {', '.join(map(str, dirs))}{note}. "
                    f"{info.fetch_hint}")


def read_arrays(info: DatasetInfo, directory: Path) -> Arrays:
    """Verify and decode the files in ``directory``: (train_x, train_y, test_x, test_y), uint8
    images (N, C, H, W) and int64 labels."""
    raw = read_verified(info, directory)
    if info.kind == "cifar":
        train = [cifar.read_batch(raw[s.name], str(directory / s.name), info)
                 for s in info.files[:-1]]
        test_x, test_y = cifar.read_batch(raw[info.files[-1].name],
                                          str(directory / info.files[-1].name), info)
        return (np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]),
                test_x, test_y)
    out = []
    for images, labels in ((0, 1), (2, 3)):
        x = decode_idx(raw[info.files[images].name], str(directory / info.files[images].name))
        y = decode_idx(raw[info.files[labels].name], str(directory / info.files[labels].name))
        if x.shape[1:] != info.input_shape[1:] or y.ndim != 1 or len(x) != len(y):
            raise DataError(f"{directory}: {info.files[images].name} {x.shape} and "
                            f"{info.files[labels].name} {y.shape} do not form an image/label "
                            f"pair. Delete {directory} and run `neurosim data fetch {info.name}`.")
        out += [x[:, None], y.astype(np.int64)]
    return tuple(out)


def _inputs(images: np.ndarray, info: DatasetInfo, normalization: str,
            dtype: torch.dtype) -> torch.Tensor:
    """uint8 (N, C, H, W) -> preprocessed (N, C*H*W) tensor of ``dtype``."""
    x = torch.from_numpy(images).reshape(len(images), -1).to(dtype)
    if info.standardize and normalization == "default":
        return cifar.standardize_(x)
    return x.div_(info.pixel_max)


def _zscore_(train_x: torch.Tensor, test_x: torch.Tensor) -> None:
    """In place: (x - m) / s for both sets, m and s over every training pixel (float64)."""
    flat = train_x.reshape(-1).to(torch.float64)
    mean, std = float(flat.mean()), float(flat.std())
    if not std > 0:
        raise DataError("normalization \"zscore\": every training pixel has the same value, "
                        "so there is no standard deviation to divide by; use \"unit\".")
    for x in (train_x, test_x):
        x.sub_(mean).div_(std)


def load_dataset(name: str, root: str | os.PathLike | None = None,
                 dtype: torch.dtype = torch.float32, normalization: str = "default") -> Dataset:
    """Load a verified, preprocessed dataset ("digits", "mnist", "fashion-mnist", "cifar10",
    "cifar100" with its 100 fine labels, or "cifar100-coarse" with its 20 superclasses).

    Files are searched in ``root`` (or $NEUROSIM_DATA), then known system locations, then the
    default cache; nothing is downloaded. ``normalization`` is one of :data:`NORMALIZATIONS`.
    """
    info = get_info(name)
    if normalization not in NORMALIZATIONS:
        raise DataError(f'Unknown normalization "{normalization}" for {info.title}; choose one '
                        f"of {', '.join(NORMALIZATIONS)}.")
    check_dtype(dtype)
    if info.kind == "embedded":
        train_x, train_y, test_x, test_y = digits.load_split()
    else:
        train_x, train_y, test_x, test_y = read_arrays(info, locate(info, root))
    scaling = "unit" if normalization == "zscore" else normalization
    train_inputs = _inputs(train_x, info, scaling, dtype)
    test_inputs = _inputs(test_x, info, scaling, dtype)
    if normalization == "zscore":
        _zscore_(train_inputs, test_inputs)
    return Dataset(name=info.name,
                   train_x=train_inputs,
                   train_y=torch.from_numpy(train_y),
                   test_x=test_inputs,
                   test_y=torch.from_numpy(test_y),
                   n_classes=info.n_classes, input_shape=info.input_shape,
                   normalization=normalization)


SPEC_KEYS = ("dataset", "path", "root", "normalization", "validation")
"""Keys of a [data] table; ``validation`` is the caller's (see :func:`validation_split`)."""


def dataset_from_spec(spec: Mapping, *, where: str, base_dir: Path | None = None,
                      dtype: torch.dtype = torch.float32) -> Dataset:
    """The dataset a parsed [data] table describes, labelled ``where`` in messages.

    Exactly one of ``dataset = "<name>"`` (a named dataset, with optional ``root`` and
    ``normalization``) or ``path = "<file>"`` (a .npz/.h5/.hdf5 file, see
    :func:`load_array_file`; a relative path is looked up in ``base_dir``, then the current
    directory). ``validation`` is accepted and not used here.
    """
    table = dict(spec) if isinstance(spec, Mapping) else spec
    check_keys(table, SPEC_KEYS, where)
    if ("dataset" in table) == ("path" in table):
        state = "both are given" if "dataset" in table else "neither is given"
        names = ", ".join(f'"{n}"' for n in DATASETS)
        raise ConfigError(f'{where}: give exactly one of dataset = "<name>" (one of {names}) or '
                          f'path = "<file>" ({", ".join(SUFFIXES)}); {state}.')
    if "path" in table:
        extra = [k for k in ("root", "normalization") if k in table]
        if extra:
            verb = "applies" if len(extra) == 1 else "apply"
            raise ConfigError(f"{where}: {' and '.join(extra)} only {verb} to named datasets "
                              f"(dataset = ...); the arrays of path = ... are used as stored, "
                              f"so remove {' and '.join(extra)}.")
        path = _resolve(_string(table, "path", where), where, base_dir)
        return load_array_file(path, dtype=dtype, where=where)
    kwargs = {k: _string(table, k, where) for k in ("root", "normalization") if k in table}
    try:
        return load_dataset(_string(table, "dataset", where), dtype=dtype, **kwargs)
    except DataError as exc:
        raise DataError(f"{where}: {exc}") from None


def _string(table: dict, key: str, where: str) -> str:
    """``table[key]``, which must be a non-empty string."""
    value = table[key]
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f'{where}: {key} must be a non-empty string, got '
                          f'{type(value).__name__} {value!r}; e.g. {key} = "...".')
    return value


def _resolve(raw: str, where: str, base_dir: Path | None) -> Path:
    """``raw`` as given if absolute, else the first existing of base_dir/raw and ./raw."""
    path = Path(raw).expanduser()
    if path.is_absolute():
        return path
    candidates = [Path(base_dir) / path] if base_dir is not None else []
    candidates = list(dict.fromkeys(candidates + [Path.cwd() / path]))
    for candidate in candidates:
        if candidate.exists():
            return candidate
    raise DataError(f'{where}: path = "{raw}" not found (looked for '
                    f"{' and '.join(map(str, candidates))}). A relative path is resolved "
                    f"against the model file's directory, then the current directory; fix "
                    f"the path.")


def available_datasets(root: str | os.PathLike | None = None) -> list[dict]:
    """One dict per dataset: name, present (verified), location, detail."""
    rows = []
    for info in DATASETS.values():
        if info.kind == "embedded":
            try:
                version = metadata.version("scikit-learn")
            except metadata.PackageNotFoundError:
                rows.append(dict(name=info.name, present=False, location="-",
                                 detail="scikit-learn is not installed (pip install scikit-learn)"))
            else:
                rows.append(dict(name=info.name, present=True,
                                 location=f"scikit-learn {version} (embedded)",
                                 detail=f"{info.n_train} train / {info.n_test} test, fixed split"))
            continue
        try:
            directory = locate(info, root)
        except DataError:
            rows.append(dict(name=info.name, present=False, location="-",
                             detail=f"run `neurosim data fetch {info.name}"
                                    + (" --from PATH`" if info.kind == "cifar" else "`")))
            continue
        try:
            read_verified(info, directory)
        except DataError as exc:
            rows.append(dict(name=info.name, present=False, location=str(directory),
                             detail=str(exc)))
            continue
        rows.append(dict(name=info.name, present=True, location=str(directory),
                         detail=f"{info.n_train} train / {info.n_test} test, "
                                f"{info.files[0].algorithm} verified"))
    return rows
