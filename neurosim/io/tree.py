"""Nested dicts <-> HDF5 groups, exactly (bit for bit, same types).

Layout: every dict is a group (created with ``track_order=True`` so key order survives), every
leaf is one dataset whose attribute ``neurosim_type`` says how to rebuild it:

===============  ==========================================================================
neurosim_type    stored as
===============  ==========================================================================
``torch``        the tensor's values (detached, on CPU); attr ``torch_dtype`` (e.g. "int64").
                 Dtypes numpy lacks (bfloat16, float8, complex32) are stored bit-for-bit as
                 same-width integers, with attr ``torch_view = True``. Read back on CPU.
``numpy``        numeric/bool arrays natively; other dtypes (bytes, unicode, structured,
                 datetime) as raw uint8 bytes with attrs ``numpy_dtype`` (numpy descr as a
                 Python literal) and ``shape``.
                 Attr ``numpy_scalar = True`` marks a numpy scalar (e.g. ``np.float32(1)``).
``json``         a scalar string dataset holding JSON text: Python int/float/bool/str/None and
                 lists of those (attr ``container = "tuple"`` for tuples). Python's JSON keeps
                 NaN, inf, -0.0 and big ints exact; a dataset (not an attribute) has no size
                 limit and shows up in ``describe_h5``.
``bytes``        a uint8 array.
===============  ==========================================================================

Every leaf also carries attr ``crc32``, the CRC-32 of the bytes stored (for ``json``, of the
UTF-8 text); :func:`read_leaf` checks it and raises :class:`ChecksumError` on a mismatch, so
bytes damaged inside a dataset are found, not loaded (files without the attr load unchecked).

Keys must be non-empty ``str`` without ``/`` and other than ``.``. Lost on purpose:
``requires_grad``, the device, and tensor subclasses (``nn.Parameter`` comes back a tensor).
"""
from __future__ import annotations

import ast
import json
import zlib
from typing import Any, Mapping

import h5py
import numpy as np
import torch

from neurosim.io.errors import ChecksumError, TreeError

TYPE_ATTR = "neurosim_type"
CRC_ATTR = "crc32"
_SCALARS = (bool, int, float, str, type(None))
_VIEW_DTYPES = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_STRING = h5py.string_dtype("utf-8")


def write_tree(group: h5py.Group, tree: Mapping[str, Any], *, where: str = "") -> None:
    """Write ``tree`` into ``group``: dicts become subgroups, leaves become datasets.

    ``where`` prefixes key paths in error messages (e.g. "payload").
    """
    if not isinstance(tree, Mapping):
        raise TreeError(f"{where or 'tree'}: expected a dict, got {type(tree).__name__}.")
    for key, value in tree.items():
        path = f"{where}/{key}" if where else str(key)
        _check_key(key, where)
        if key in group:
            raise TreeError(f'{path}: "{key}" already exists in HDF5 group {group.name}.')
        if isinstance(value, Mapping):
            write_tree(group.create_group(key, track_order=True), value, where=path)
        else:
            _write_leaf(group, key, value, path)


def read_tree(group: h5py.Group, *, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """Read a group written by :func:`write_tree` back into a nested dict.

    Datasets without a ``neurosim_type`` attribute (written by other tools) come back as numpy.
    Top-level names in ``exclude`` are skipped.
    """
    out: dict[str, Any] = {}
    for key in group:
        if key in exclude:
            continue
        obj = group.get(key)
        if isinstance(obj, h5py.Group):
            out[key] = read_tree(obj)
        elif isinstance(obj, h5py.Dataset):
            out[key] = read_leaf(obj)
    return out


def _check_key(key: Any, where: str) -> None:
    at = f"{where}: " if where else ""
    if not isinstance(key, str):
        raise TreeError(f"{at}key {key!r} is a {type(key).__name__}; HDF5 names must be str "
                        f"(convert it, e.g. str({key!r})).")
    if not key or key == "." or "/" in key:
        raise TreeError(f'{at}key "{key}" is not a valid HDF5 name: names must be non-empty, '
                        f'not ".", and must not contain "/" (it separates groups). Rename it, '
                        f'e.g. "{key.replace("/", "_") or "_"}".')


def _crc(data) -> int:
    """CRC-32 of an array's bytes (C order) or of a str's UTF-8 text."""
    if isinstance(data, str):
        return zlib.crc32(data.encode("utf-8"))
    data = np.ascontiguousarray(data)
    return zlib.crc32(data.reshape(-1).view(np.uint8)) if data.size else 0


def _seal(ds: h5py.Dataset, data) -> None:
    ds.attrs[CRC_ATTR] = np.uint32(_crc(data))


def _write_leaf(group: h5py.Group, key: str, value: Any, path: str) -> None:
    try:
        if isinstance(value, torch.Tensor):
            _write_tensor(group, key, value, path)
        elif isinstance(value, (np.ndarray, np.generic)):
            _write_numpy(group, key, value, path)
        elif isinstance(value, bytes):
            data = np.frombuffer(value, dtype=np.uint8)
            ds = group.create_dataset(key, data=data)
            ds.attrs[TYPE_ATTR] = "bytes"
            _seal(ds, data)
        elif isinstance(value, _SCALARS):
            _write_json(group, key, value)
        elif isinstance(value, (list, tuple)):
            bad = [v for v in value if not isinstance(v, _SCALARS)]
            if bad:
                raise TreeError(f"{path}: lists and tuples may hold only int/float/bool/str/None, "
                                f"found {type(bad[0]).__name__} {bad[0]!r:.60}; store arrays "
                                f"as numpy arrays or tensors and nested data as dicts.")
            _write_json(group, key, value)
        else:
            raise TreeError(f"{path}: cannot store a {type(value).__name__}; supported leaves are "
                            f"torch tensors, numpy arrays, int, float, bool, str, None, bytes, and "
                            f"lists/tuples of scalars (use a dict for nested data).")
    except TreeError:
        raise
    except (TypeError, ValueError, RuntimeError) as e:
        raise TreeError(f"{path}: cannot store {type(value).__name__} ({e}).") from e


def _write_json(group: h5py.Group, key: str, value: Any) -> None:
    text = json.dumps(list(value) if isinstance(value, tuple) else value)
    ds = group.create_dataset(key, data=text, dtype=_STRING)
    ds.attrs[TYPE_ATTR] = "json"
    _seal(ds, text)
    if isinstance(value, tuple):
        ds.attrs["container"] = "tuple"


def _write_tensor(group: h5py.Group, key: str, value: torch.Tensor, path: str) -> None:
    if value.layout != torch.strided or value.is_quantized:
        raise TreeError(f"{path}: cannot store a {value.layout} / quantized tensor; convert it "
                        f"with .to_dense() / .dequantize() first.")
    t = value.detach().cpu().resolve_conj().resolve_neg().contiguous()
    view = False
    try:
        arr = t.numpy()
    except TypeError:  # dtype numpy lacks: keep the bits in an integer of the same width
        arr = t.view(_VIEW_DTYPES[t.element_size()]).numpy()
        view = True
    ds = group.create_dataset(key, data=arr)
    _seal(ds, arr)
    ds.attrs[TYPE_ATTR] = "torch"
    ds.attrs["torch_dtype"] = str(t.dtype).removeprefix("torch.")
    if view:
        ds.attrs["torch_view"] = True


def _write_numpy(group: h5py.Group, key: str, value: np.ndarray | np.generic, path: str) -> None:
    arr = np.asarray(value)
    if arr.dtype.hasobject:
        raise TreeError(f"{path}: numpy arrays of dtype object cannot be stored; use a numeric "
                        f"dtype, or a list of str.")
    if arr.dtype.kind in "biufc":
        ds = group.create_dataset(key, data=arr)
        _seal(ds, arr)
    else:  # keep exotic dtypes bit-exact as raw bytes (HDF5 would strip NULs from b"..." etc.)
        raw = np.frombuffer(arr.tobytes(), dtype=np.uint8)
        ds = group.create_dataset(key, data=raw)
        _seal(ds, raw)
        ds.attrs["numpy_dtype"] = repr(np.lib.format.dtype_to_descr(arr.dtype))
        ds.attrs["shape"] = np.asarray(arr.shape, dtype=np.int64)
    ds.attrs[TYPE_ATTR] = "numpy"
    if isinstance(value, np.generic):
        ds.attrs["numpy_scalar"] = True


def _stored(ds: h5py.Dataset, text: bool = False):
    """A dataset's stored value (a str for json), checked against its CRC-32 when it has one."""
    data = ds.asstr()[()] if text else np.array(ds[()])  # own, writable copy
    expected = ds.attrs.get(CRC_ATTR)
    if expected is not None and _crc(data) != int(expected):
        raise ChecksumError(f"{ds.file.filename}:{ds.name}: the stored bytes do not match their "
                            "checksum (CRC-32); the file is damaged.")
    return data


def read_leaf(ds: h5py.Dataset) -> Any:
    """Rebuild one leaf written by :func:`write_tree`, checking its CRC-32."""
    kind = ds.attrs.get(TYPE_ATTR)
    if kind is None:
        return np.asarray(ds[()])
    if kind == "json":
        value = json.loads(_stored(ds, text=True))
        return tuple(value) if ds.attrs.get("container") == "tuple" else value
    if kind == "bytes":
        return _stored(ds).tobytes()
    if kind == "torch":
        arr = _stored(ds)  # own, writable copy (torch.from_numpy shares memory)
        t = torch.from_numpy(arr)
        dtype = getattr(torch, str(ds.attrs["torch_dtype"]))
        return t.view(dtype) if bool(ds.attrs.get("torch_view", False)) else t
    if kind == "numpy":
        if "numpy_dtype" in ds.attrs:
            dtype = np.lib.format.descr_to_dtype(ast.literal_eval(str(ds.attrs["numpy_dtype"])))
            shape = tuple(int(n) for n in ds.attrs["shape"])
            arr = np.frombuffer(_stored(ds).tobytes(), dtype=dtype).reshape(shape).copy()
        else:
            arr = _stored(ds)
        return arr[()] if bool(ds.attrs.get("numpy_scalar", False)) else arr
    raise TreeError(f'{ds.file.filename}:{ds.name}: unknown neurosim_type "{kind}"; the file was '
                    f"probably written by a newer neurosim. Upgrade neurosim to read it.")

