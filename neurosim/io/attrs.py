"""HDF5 attribute values <-> Python values.

Attributes hold small metadata. Stored natively (readable by any HDF5 tool): ``str``, ``bool``,
``int`` (within int64), ``float``, numpy scalars and numeric/bool arrays; torch tensors are stored
as numpy arrays. Everything else JSON can express (``None``, lists, tuples, dicts, big ints) is
stored as the string ``"json:<json text>"`` and decoded back on read (tuples come back as lists).
A ``str`` that itself starts with ``"json:"`` is JSON-encoded too, so every string round-trips.
"""
from __future__ import annotations

import json
from typing import Any, Mapping

import h5py
import numpy as np
import torch

from neurosim.io.errors import TreeError

JSON_PREFIX = "json:"

#: Attributes HDF5 itself uses for dimension scales; hidden from :func:`read_attrs`.
HDF5_INTERNAL_ATTRS = frozenset({"CLASS", "NAME", "REFERENCE_LIST", "DIMENSION_LIST",
                                 "DIMENSION_LABELS"})

_INT64 = np.iinfo(np.int64)


def encode_attr(name: str, value: Any) -> Any:
    """Return ``value`` in a form h5py can store as attribute ``name``."""
    if isinstance(value, (bool, np.bool_)):
        return np.bool_(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return np.int64(value) if _INT64.min <= value <= _INT64.max else _json(name, value)
    if isinstance(value, float):
        return np.float64(value)
    if isinstance(value, str):
        return _json(name, value) if value.startswith(JSON_PREFIX) else value
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, (np.ndarray, np.generic)):
        if value.dtype.kind not in "biufc":
            raise TreeError(f'attribute "{name}": numpy dtype {value.dtype} is not supported '
                            f"in attributes; use a numeric array or a list of str.")
        return value
    if value is None or isinstance(value, (list, tuple, dict)):
        return _json(name, value)
    raise TreeError(f'attribute "{name}": cannot store {type(value).__name__} values; use str, '
                    f"int, float, bool, None, a numpy array, or a list/dict of those.")


def _json(name: str, value: Any) -> str:
    try:
        return JSON_PREFIX + json.dumps(value)
    except (TypeError, ValueError) as e:
        raise TreeError(f'attribute "{name}": {value!r} is not JSON-serialisable ({e}); use '
                        f"plain str/int/float/bool/None inside lists and dicts.") from None


def decode_attr(value: Any) -> Any:
    """Inverse of :func:`encode_attr` (numpy scalars become Python scalars)."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, str):
        return json.loads(value[len(JSON_PREFIX):]) if value.startswith(JSON_PREFIX) else value
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_attrs(obj: h5py.HLObject, attrs: Mapping[str, Any] | None) -> None:
    """Set every ``attrs`` item on ``obj`` (a file, group or dataset)."""
    for name, value in (attrs or {}).items():
        if not isinstance(name, str) or not name:
            raise TreeError(f"attribute names must be non-empty str; got {name!r}.")
        obj.attrs[name] = encode_attr(name, value)


def read_attrs(obj: h5py.HLObject) -> dict[str, Any]:
    """All attributes of ``obj`` decoded, without HDF5's internal dimension-scale ones."""
    return {name: decode_attr(obj.attrs[name]) for name in obj.attrs
            if name not in HDF5_INTERNAL_ATTRS}
