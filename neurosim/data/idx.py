"""Reading and writing IDX files (the MNIST format).

Layout: bytes 0-1 are zero, byte 2 is the element type (only 0x08 = uint8 is supported),
byte 3 the number of dimensions, then one big-endian uint32 size per dimension, then the
elements in C order.
"""
from __future__ import annotations

import math
import struct

import numpy as np

from .dataset import DataError

UINT8 = 0x08


def decode_idx(data: bytes | bytearray, where: str) -> np.ndarray:
    """Parse an IDX file's bytes into a uint8 array (a view on ``data``).

    ``where`` names the file in error messages.
    """
    fix = "Delete it and fetch the dataset again (`neurosim data fetch NAME`)."
    if len(data) < 4:
        raise DataError(f"{where}: not an IDX file (only {len(data)} bytes). {fix}")
    zero0, zero1, dtype, ndim = data[0], data[1], data[2], data[3]
    if zero0 != 0 or zero1 != 0:
        raise DataError(f"{where}: not an IDX file (magic bytes {bytes(data[:4]).hex()}, "
                        f"expected 0000 then the type and rank). {fix}")
    if dtype != UINT8:
        raise DataError(f"{where}: IDX element type 0x{dtype:02x} is not supported "
                        f"(only 0x08 = uint8, as in MNIST). {fix}")
    if ndim == 0:
        raise DataError(f"{where}: IDX header declares 0 dimensions. {fix}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{where}: truncated IDX header ({len(data)} bytes, the {ndim} sizes "
                        f"need {header}). {fix}")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + math.prod(shape)
    if len(data) != expected:
        state = "truncated" if len(data) < expected else "has trailing bytes"
        raise DataError(f"{where}: IDX file {state}: shape {shape} needs {expected} bytes, "
                        f"the file has {len(data)}. {fix}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def encode_idx(array: np.ndarray) -> bytes:
    """Serialise a uint8 array (at least 1-D) as an IDX file."""
    array = np.ascontiguousarray(array)
    if array.dtype != np.uint8 or array.ndim == 0:
        raise ValueError(f"encode_idx needs a uint8 array with ndim >= 1, "
                         f"got {array.dtype} with ndim {array.ndim}")
    header = bytes((0, 0, UINT8, array.ndim)) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()
