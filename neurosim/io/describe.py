"""Human-readable listing of any HDF5 file (used by ``neurosim inspect``).

One line per group (``name/``) and dataset (``name  dtype shape``), indented by depth, in
creation order; attributes follow as ``@name=value`` with long values abbreviated. Leaves
written by :mod:`.tree` show what they load as (``tensor float32 (5, 3)``, ``ndarray ...``,
``bytes``) and JSON leaves show their value (``step  = 1234``). HDF5's dimension-scale and
:mod:`.tree`'s bookkeeping attributes are hidden.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from neurosim.io.attrs import read_attrs
from neurosim.io.errors import NeurosimIOError
from neurosim.io.files import open_readonly, truncated_message
from neurosim.io.tree import CRC_ATTR, TYPE_ATTR

#: Attributes :mod:`.tree` uses to rebuild and check leaves; folded into the type label.
_TREE_ATTRS = frozenset({TYPE_ATTR, "torch_dtype", "torch_view", "numpy_dtype", "numpy_scalar",
                         "shape", "container", CRC_ATTR})


def describe_h5(path: str | os.PathLike, *, max_children: int = 50, width: int = 60) -> str:
    """Return a tree listing of ``path``: groups, datasets (dtype, shape) and attributes.

    At most ``max_children`` members are listed per group; values are cut to ``width`` chars.
    """
    path = Path(path)
    with open_readonly(path, "file") as f:
        try:
            lines = [f"{path}{_attrs(f, width)}"]
            _walk(f, 1, lines, max_children, width)
        except (OSError, KeyError, RuntimeError) as e:
            raise NeurosimIOError(truncated_message(path, e)) from e
    return "\n".join(lines)


def _walk(group: h5py.Group, depth: int, lines: list[str], max_children: int, width: int) -> None:
    pad = "  " * depth
    names = list(group)
    for name in names[:max_children]:
        obj = group.get(name)
        if isinstance(obj, h5py.Group):
            lines.append(f"{pad}{name}/{_attrs(obj, width)}")
            _walk(obj, depth + 1, lines, max_children, width)
        elif isinstance(obj, h5py.Dataset):
            lines.append(f"{pad}{name}  {_dataset(obj, width)}{_attrs(obj, width)}")
        else:
            lines.append(f"{pad}{name}  (link)")
    if len(names) > max_children:
        lines.append(f"{pad}... ({len(names) - max_children} more)")


def _dataset(ds: h5py.Dataset, width: int) -> str:
    kind = ds.attrs.get(TYPE_ATTR)
    if kind == "json":
        return f"= {_cut(ds.asstr()[()], width)}"
    if kind == "torch":
        return f"tensor {ds.attrs.get('torch_dtype')} {ds.shape}"
    if kind == "numpy" and "numpy_dtype" in ds.attrs:
        shape = tuple(int(n) for n in ds.attrs["shape"])
        return f"ndarray {ds.attrs['numpy_dtype']} {shape}"
    if kind == "numpy":
        return f"ndarray {ds.dtype} {ds.shape}"
    if kind == "bytes":
        return f"bytes ({ds.shape[0]} bytes)"
    if h5py.check_string_dtype(ds.dtype) is not None:
        return f"str {_short(ds.asstr()[()], width)}" if ds.shape == () else f"str {ds.shape}"
    return f"{ds.dtype} {ds.shape}"


def _attrs(obj: h5py.HLObject, width: int) -> str:
    hide = _TREE_ATTRS if TYPE_ATTR in obj.attrs else ()
    return "".join(f"  @{k}={_short(v, width)}" for k, v in read_attrs(obj).items()
                   if k not in hide)


def _short(value: Any, width: int) -> str:
    if isinstance(value, np.ndarray) and value.size > 8:
        return f"<{value.dtype} array {value.shape}>"
    return _cut(repr(value.tolist() if isinstance(value, np.ndarray) else value), width)


def _cut(text: str, width: int) -> str:
    text = " ".join(text.split())  # one line
    return text if len(text) <= width else text[: width - 3] + "..."
